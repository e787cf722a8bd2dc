"""Transformers as torchvision exports them: models/zoo_transformers.py's torchvision_vit
(class token concatenated on the token axis, nn.MultiheadAttention with a packed in_proj and
the heads merged with the batch axis, head on x[:, 0]), with the legacy and dynamo exporters.
What is prunable, what stays frozen and why, pruned with the masking oracle on."""
import pytest

from helpers import exported, op_names

torch = pytest.importorskip("torch")

NAME = "torchvision_vit"
DIM, HEADS, MLP = 48, 4, 192


def _attr(proto, node_name, key):
    from onnxprune.graph import attr
    (n,) = [n for n in proto.graph.node if n.name == node_name]
    return attr(n, key)


def test_torchvision_vit_export_has_torchvision_topology():
    """The legacy export (checked against torch by `export`) has the pieces that set it apart
    from the HF/timm ViTs: class token Concat on the token axis, the packed in_proj MatMul,
    out_proj as a Gemm on (T*B, E), and the head reading token 0."""
    proto = exported(NAME)
    (cat,) = [c for c in op_names(proto, "Concat") if "layers" not in c]
    assert _attr(proto, cat, "axis") == 1
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    assert sum(1 for s in inits.values() if s == (DIM, 3 * DIM)) == 2          # in_proj, one per block
    assert len(op_names(proto, "Gemm", "self_attention")) == 2                  # out_proj
    (head_gather,) = [g for g in op_names(proto, "Gather") if "layers" not in g]
    assert _attr(proto, head_gather, "axis") == 1
