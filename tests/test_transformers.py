"""Transformers as torchvision exports them: models/zoo_transformers.py's torchvision_vit
(class token concatenated on the token axis, nn.MultiheadAttention with a packed in_proj and
the heads merged with the batch axis, head on x[:, 0]), with the legacy and dynamo exporters.
What is prunable, what stays frozen and why, pruned with the masking oracle on."""
import pytest

from helpers import check_prune, exported, groups, keep, op_names, param

torch = pytest.importorskip("torch")

NAME = "torchvision_vit"
DIM, HEADS, MLP = 48, 4, 192
RATIOS = [0.3, 0.5]
LN_REASON = "LayerNormalization normalises over the channel axis"


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


def _live(gs):
    return [g for g in gs if g.frozen is None and g.width > 1]


@pytest.mark.parametrize("ratio", RATIOS)
def test_torchvision_vit_mlp_hidden_neurons_prune_exactly(ratio):
    """The class token Concat cuts the constant with the stream's channels and the stream is
    followed on the last axis through every Transpose and Gather, so each block's MLP
    (Linear -> GELU -> Linear) is a group of its own; the stream stays frozen by ln_1."""
    proto = exported(NAME)
    gs = groups(proto)
    mlp = [g for g in _live(gs) if g.width == MLP]
    assert sorted(g.feed_in[0] for g in mlp) == [f"/layers/layers.{i}/mlp/mlp.0/MatMul" for i in range(2)]
    assert all(g.feed_out == [g.feed_in[0].replace("mlp.0", "mlp.3")] for g in mlp)
    (stream,) = [g for g in gs if g.width == DIM and "/conv_proj/Conv" in g.feed_in]
    assert stream.frozen == f"LayerNormalization /layers/layers.0/ln_1/LayerNormalization: {LN_REASON}"
    slim, report = check_prune(proto, ratio)
    for i in range(2):
        assert param(slim, f"/layers/layers.{i}/mlp/mlp.0/MatMul", 1).shape == (DIM, keep(MLP, ratio))
        assert param(slim, f"/layers/layers.{i}/mlp/mlp.3/MatMul", 1).shape == (keep(MLP, ratio), DIM)
    cat = [c for c in op_names(proto, "Concat") if "layers" not in c][0]
    assert param(slim, cat, 0).shape == (1, 1, DIM)         # the class token keeps the frozen stream


def test_torchvision_vit_bgsc():
    """The data-free bound graph through the class token Concat, the transposed attention and
    the x[:, 0] Gather."""
    _, report = check_prune(exported(NAME), None, criterion="bgsc", target_macs=0.8)
    assert report.after["macs"] <= 0.8 * report.before["macs"]
