"""onnxprune: a structured-pruning compiler for ONNX."""
from .api import analyze_model, apply_plan, plan, prune, rewrite
from .errors import InternalError, OnnxPruneError
from .latency_model import TimingOptions
from .plan import Plan
from .report import PlanInfo, Report
from .reconfigure import reconfigure
from .shrink import shrink

__all__ = ["prune", "shrink", "reconfigure", "plan", "apply_plan", "analyze_model", "rewrite", "Plan",
           "PlanInfo", "Report", "TimingOptions", "OnnxPruneError", "InternalError"]
__version__ = "0.2.0"
