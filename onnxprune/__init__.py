"""onnxprune: a structured-pruning compiler for ONNX."""
from .api import analyze_model, prune, rewrite
from .errors import OnnxPruneError
from .plan import Plan

__all__ = ["prune", "analyze_model", "rewrite", "Plan", "OnnxPruneError"]
__version__ = "0.2.0"
