"""The operator registry: one record per operator (ops/spec.py says what a record holds),
split by family. Importing this package registers every family."""
from . import concat, elementwise, layers, normalization, reshape, spatial  # noqa: F401  (they register)
from .spec import REGISTRY, STRUCTURAL, UNBOUNDED, Layer, Lipschitz, OpSpec


def spec_of(node) -> OpSpec | None:
    """The record of a node's operator; None for other domains and unknown operators."""
    return REGISTRY.get(node.op_type) if node.domain in ("", "ai.onnx") else None


def layer_of(node) -> Layer | None:
    spec = spec_of(node)
    return None if spec is None else spec.layer


__all__ = ["REGISTRY", "STRUCTURAL", "UNBOUNDED", "Layer", "Lipschitz", "OpSpec", "spec_of", "layer_of"]
