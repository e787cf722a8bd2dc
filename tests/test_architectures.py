"""Architecture coverage: channel shuffle (ShuffleNetV2), channels-last MLPs behind
LayerNormalization (ConvNeXt), encoder-decoders and detection necks with several graph
outputs (U-Net, YOLO-style), attention (ViT), and a model with no value_info at all.

Each architecture is pruned at 0.3 and 0.5 with the masking oracle on (`prune_and_check`:
checker, onnxruntime, oracle <= 1e-4, fewer parameters); what must stay frozen is asserted
with its precise reason. Small hand-built graphs pin down the rules (rules.py: Reshape split
/ merge / shuffle, MatMul of two activations, LayerNormalization, Slice bounds computed from
static shapes); the torch models in models/zoo_extra.py check them on real exports, with the
legacy exporter (dynamo=False) and, for part of them, the dynamo exporter.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import (GraphBuilder, check_prune, exported, group_of, groups, keep, op_names, param, prunable,
                     prune_and_check, reasons)
from helpers import tensor as init
from onnxprune.api import analyze_model
from onnxprune.load import load

torch = pytest.importorskip("torch")

RATIOS = [0.3, 0.5]
LN_REASON = "LayerNormalization normalises over the channel axis"


# =================================================================================================
# 1. Channel shuffle
# =================================================================================================
def _shuffle_block(groups_=2, width=4, target_minus_one=False):
    """conv c1 (3 -> g*width) -> Split into g parts; part 0 passes through, the others go through
    a conv each; Concat; shuffle Reshape [1,g,C/g,8,8] -> Transpose -> Reshape [1,C,8,8]; head."""
    b = GraphBuilder()
    c = groups_ * width
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, c)])
    c1 = b.nodes[-2].name
    parts = b.op("Split", [h, b.ints([width] * groups_)], n_outputs=groups_, axis=1)
    split = b.last()
    branches = [parts[0]]
    convs = []
    for p in parts[1:]:
        branches.append(b.op("Relu", [b.conv(p, width, width, k=1)]))
        convs.append(b.nodes[-2].name)
    h = b.op("Concat", branches, axis=1)
    h = b.op("Reshape", [h, b.ints([1, groups_, -1 if target_minus_one else width, 8, 8])])
    r1 = b.last()
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.ints([1, -1, 8, 8] if target_minus_one else [1, c, 8, 8])])
    r2 = b.last()
    y = b.conv(h, c, 4)
    head = b.last()
    return b.model([y]), dict(c1=c1, split=split, convs=convs, r1=r1, r2=r2, head=head)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("target_minus_one", [False, True])
def test_channel_shuffle_branches_are_prunable(ratio, target_minus_one):
    proto, n = _shuffle_block(2, 4, target_minus_one)
    gs = groups(proto)
    assert reasons(gs) == ["graph input", "graph output"]
    # the passed-through half of c1 and the branch conv are coupled position by position
    shuffled = group_of(gs, [n["c1"], n["convs"][0]])
    assert shuffled.width == 4 and shuffled.feed_out == [n["head"]]
    inner = group_of(gs, n["c1"])
    assert inner.width == 4 and inner.feed_out == n["convs"]
    slim, report = check_prune(proto, ratio)
    k = keep(4, ratio)
    removed_c1 = np.asarray(report.plan.removed.get(n["c1"], []))
    removed_branch = np.asarray(report.plan.removed.get(n["convs"][0], []))
    # each shuffle group loses the same positions
    assert sorted(removed_c1[removed_c1 < 4].tolist()) == sorted(removed_branch.tolist())
    assert len(removed_branch) == 4 - k
    if not target_minus_one:
        assert param(slim, n["r1"], 1).tolist() == [1, 2, k, 8, 8]
        assert param(slim, n["r2"], 1).tolist() == [1, 2 * k, 8, 8]
    assert param(slim, n["head"], 1).shape[1] == 2 * k


@pytest.mark.parametrize("ratio", RATIOS)
def test_channel_shuffle_three_groups(ratio):
    proto, n = _shuffle_block(3, 4)
    gs = groups(proto)
    g = group_of(gs, [n["c1"]] + n["convs"])
    assert g.width == 4 and g.frozen is None
    slim, _ = check_prune(proto, ratio)
    k = keep(4, ratio)
    assert param(slim, n["r1"], 1).tolist() == [1, 3, k, 8, 8]
    assert param(slim, n["head"], 1).shape[1] == 3 * k


@pytest.mark.parametrize("ratio", RATIOS)
def test_reshape_inserting_a_unit_axis_moves_the_channels(ratio):
    """[1,C,H,W] -> [1,1,C,H,W] -> ReduceMean over the unit axis: g = 1, nothing coupled."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    c1 = b.nodes[-2].name
    h = b.op("Reshape", [h, b.ints([1, 1, 8, 8, 8])])
    rs = b.last()
    h = b.op("ReduceMean", [h], axes=[1], keepdims=0)
    y = b.conv(h, 8, 4)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.width == 8
    slim, _ = check_prune(proto, ratio)
    assert param(slim, rs, 1).tolist() == [1, 1, keep(8, ratio), 8, 8]


@pytest.mark.parametrize("ratio", RATIOS)
def test_group_norm_pattern_prunes_whole_groups(ratio):
    """GroupNorm as exported: Reshape [1,g,C/g*H*W] -> InstanceNormalization(g) -> Reshape back
    -> per-channel Mul/Add. A Reshape that splits the channel axis into blocks removes a block
    whole: one class per group of C/g channels."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 4, 4])
    h = b.conv(x, 3, 8)
    c1 = b.last()
    h = b.op("Reshape", [h, b.ints([1, 4, 32])])
    r1 = b.last()
    h = b.op("InstanceNormalization", [h, b.floats(np.linspace(0.5, 1.5, 4)),
                                       b.floats(np.linspace(-0.2, 0.2, 4))], epsilon=1e-5)
    h = b.op("Reshape", [h, b.ints([1, 8, 4, 4])])
    r2 = b.last()
    h = b.op("Add", [b.op("Mul", [h, b.weight((8, 1, 1))]), b.weight((8, 1, 1))])
    y = b.conv(b.op("Relu", [h]), 8, 4)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.width == 4     # 4 classes of 2 channels
    slim, _ = check_prune(proto, ratio)
    k = keep(4, ratio)
    assert param(slim, r1, 1).tolist() == [1, k, 32]
    assert param(slim, r2, 1).tolist() == [1, 2 * k, 4, 4]
    assert param(slim, c1, 1).shape[0] == 2 * k


def test_reshape_mixing_channels_with_another_axis_is_frozen():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 4, 4])
    h = b.conv(x, 3, 6)
    c1 = b.last()
    h = b.op("Reshape", [h, b.ints([1, 4, 6, 4])])   # 6 channels x 4 rows -> 4 x 6: no block structure
    y = b.conv(h, 4, 2)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen and "Reshape regroups channels with other axes" in g.frozen


@pytest.mark.parametrize("ratio", RATIOS)
def test_chunk_slice_bounds_computed_from_the_shape(ratio):
    """torch's legacy export of x.chunk(2, 1): Shape -> Gather(1) -> Add -> Div -> Mul -> Slice.
    The bounds are evaluated from the static shapes and written back as constants."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    c1 = b.nodes[-2].name
    count = b.op("Gather", [b.op("Shape", [h]), b.ints([1])], axis=0)
    half = b.op("Div", [b.op("Add", [count, b.ints([1])]), b.ints([2])])
    end = b.op("Mul", [half, b.ints([2])])
    a1 = b.op("Slice", [h, b.ints([0]), half, b.ints([1])])
    s1 = b.last()
    a2 = b.op("Slice", [h, half, end, b.ints([1])])
    s2 = b.last()
    y = b.op("Add", [b.conv(a1, 4, 4), b.conv(a2, 4, 4)])
    proto = b.model([y])
    halves = [g for g in groups(proto) if g.feed_in == [c1]]
    assert [(g.width, g.frozen) for g in halves] == [(4, None), (4, None)]
    slim, report = check_prune(proto, ratio)
    removed = np.asarray(report.plan.removed[c1])
    k1, k2 = 4 - int((removed < 4).sum()), 4 - int((removed >= 4).sum())
    assert param(slim, s1, 1).tolist() == [0] and param(slim, s1, 2).tolist() == [k1]
    assert param(slim, s2, 1).tolist() == [k1] and param(slim, s2, 2).tolist() == [k1 + k2]
    assert not op_names(slim, "Shape")   # the stale channel arithmetic is gone


def test_channel_count_read_for_a_slice_of_another_tensor_is_frozen():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)
    c1 = b.last()
    h2 = b.conv(x, 3, 8)
    c2 = b.last()
    half = b.op("Div", [b.op("Gather", [b.op("Shape", [h]), b.ints([1])], axis=0), b.ints([2])])
    a = b.op("Slice", [h2, b.ints([0]), half, b.ints([1])])   # cuts h2 with h's count
    y = b.op("Add", [b.conv(a, 4, 4), b.conv(h, 8, 4)])
    proto = b.model([y])
    gs = groups(proto)
    assert "channel count is read at run time" in group_of(gs, c1).frozen
    # h2's Slice bounds are evaluated from static shapes: its channels stay prunable
    assert [g.frozen for g in gs if g.feed_in == [c2]] == [None, None]


# -- ShuffleNetV2 from torch -----------------------------------------------------------------------
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_shufflenet_v2(ratio, dynamo):
    proto = exported("shufflenet_v2", dynamo)
    # legacy: chunk -> Slice with bounds from Shape; dynamo: Split. BN kept by legacy only.
    ops = {n.op_type for n in proto.graph.node}
    assert ("Slice" in ops and "BatchNormalization" in ops) if not dynamo else "Split" in ops
    gs = groups(proto)
    assert reasons(gs) == ["graph input", "graph output"]
    shuffled = [g for g in gs if len(g.feed_in) > 1]      # coupled through the shuffles
    assert shuffled and all(g.frozen is None for g in shuffled)
    slim, report = check_prune(proto, ratio)
    assert all(n.input[i] in {t.name for t in slim.graph.initializer}
               for n in slim.graph.node if n.op_type == "Slice" for i in (1, 2))
    for n in slim.graph.node:   # every shuffle still splits its channels into 2 equal groups
        if n.op_type == "Reshape":
            target = init(slim, n.input[1]).tolist()
            if len(target) == 5:
                assert target[1] == 2 and target[2] > 0


# =================================================================================================
# 2. ConvNeXt: depthwise 7x7, NHWC LayerNorm, Linear 4x, GELU, Linear, layer scale, residual
# =================================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_layer_norm_over_channels_last_freezes_the_stream_not_the_mlp(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 6, 6])
    s = b.conv(x, 3, 8)
    c1 = b.last()
    h = b.op("Transpose", [s], perm=[0, 2, 3, 1])
    h = b.op("LayerNormalization", [h, b.floats(np.ones(8)), b.floats(np.zeros(8))], axis=-1)
    ln = b.last()
    h = b.op("Relu", [b.op("MatMul", [h, b.weight((8, 16))])])
    m1 = b.nodes[-2].name
    h = b.op("MatMul", [h, b.weight((16, 8))])
    m2 = b.last()
    h = b.op("Add", [s, b.op("Transpose", [h], perm=[0, 3, 1, 2])])
    y = b.conv(h, 8, 4)
    proto = b.model([y])
    gs = groups(proto)
    assert group_of(gs, [c1, m2]).frozen == f"LayerNormalization {ln}: {LN_REASON}"
    hidden = group_of(gs, m1)
    assert hidden.frozen is None and hidden.width == 16 and hidden.feed_out == [m2]
    slim, _ = check_prune(proto, ratio)
    assert param(slim, m1, 1).shape == (8, keep(16, ratio))
    assert param(slim, m2, 1).shape == (keep(16, ratio), 8)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_convnext(ratio, dynamo):
    proto = exported("convnext", dynamo)
    gs = groups(proto)
    mlp = [g for g in gs if g.frozen is None and g.width > 1]
    # exactly the MLP hidden neurons: fed by the first Linear, read by the second, 4x wide
    assert len(mlp) == 3 and sorted(g.width for g in mlp) == [64, 64, 128]
    matmuls = set(op_names(proto, "MatMul"))
    assert all(len(g.feed_in) == 1 and g.feed_in[0] in matmuls and len(g.feed_out) == 1
               and g.feed_out[0] in matmuls for g in mlp)
    # the residual stream of each stage (stem/downsample conv, every second Linear) is frozen
    streams = [g for g in gs if g.frozen and "graph" not in g.frozen]
    assert sorted(g.width for g in streams) == [16, 32]
    for g in streams:
        assert g.frozen.startswith("LayerNormalization ") and g.frozen.endswith(LN_REASON), g.frozen
        assert any(n in op_names(proto, "Conv") for n in g.feed_in)
    _, report = check_prune(proto, ratio)
    rows = [r for r in report.groups if r["frozen"] is None and r["channels_before"] > 1]
    assert all(r["channels_after"] == keep(r["channels_before"], ratio) for r in rows)


# =================================================================================================
# 3. U-Net and a YOLO-style neck: prunable inside, heads' outputs frozen
# =================================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.zoo)],
                         ids=["legacy", "dynamo"])
def test_unet(ratio, dynamo):
    proto = exported("unet", dynamo)
    ops = {n.op_type for n in proto.graph.node}
    assert {"MaxPool", "ConvTranspose", "Resize", "Concat"} <= ops and len(proto.graph.output) == 2
    gs = groups(proto)
    frozen = [g for g in gs if g.frozen]
    assert sorted(g.frozen for g in frozen) == ["graph input", "graph output", "graph output"]
    outs = [g for g in frozen if g.frozen == "graph output"]
    assert all(g.width == 2 for g in outs)            # seg and aux heads: 2 classes each
    assert len([g for g in gs if g.frozen is None]) == 12
    slim, _ = check_prune(proto, ratio)
    assert [tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in slim.graph.output] in (
        [(1, 2, 32, 32), (1, 2, 8, 8)], [(), ()])


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.zoo)],
                         ids=["legacy", "dynamo"])
def test_yolo_neck(ratio, dynamo):
    proto = exported("yolo_neck", dynamo)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Split", "Resize", "Concat", "MaxPool"} <= ops and len(proto.graph.output) == 3
    gs = groups(proto)
    outs = [g for g in gs if g.frozen == "graph output"]
    assert len(outs) == 3 and all(g.width == 8 for g in outs)
    assert reasons(gs) == ["graph input", "graph output"]
    slim, report = check_prune(proto, ratio)
    for n in slim.graph.node:   # the Split sizes followed the cut
        if n.op_type == "Split":
            sizes = init(slim, n.input[1]).tolist()
            assert len(sizes) == 2 and min(sizes) > 0


# =================================================================================================
# 4. Attention
# =================================================================================================
def _attention(fused=False, gather=False, heads_first=False, einsum=False, tokens=6, dim=16, heads=4):
    b = GraphBuilder()
    hd = dim // heads
    x = b.input("x", [1, tokens, dim])
    if fused:
        qkv = b.op("Add", [b.op("MatMul", [x, b.weight((dim, 3 * dim))]), b.weight((3 * dim,), "b")])
        proj_in = [b.nodes[-2].name]
        t = b.op("Reshape", [qkv, b.ints([1, tokens, 3, heads, hd])])
        reshapes = [b.last()]
        t = b.op("Transpose", [t], perm=[2, 0, 3, 1, 4])            # [3, 1, h, T, hd]
        if gather:
            q, k, v = (b.op("Gather", [t, b.const(np.array(i, np.int64))], axis=0) for i in range(3))
        else:
            q, k, v = (b.op("Squeeze", [p, b.ints([0])])
                       for p in b.op("Split", [t, b.ints([1, 1, 1])], n_outputs=3, axis=0))
        k = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    else:
        proj_in, reshapes, parts = [], [], []
        perms = ([2, 0, 1, 3], [2, 0, 3, 1], [2, 0, 1, 3]) if heads_first else \
            ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3])
        for perm in perms:
            h = b.op("Add", [b.op("MatMul", [x, b.weight((dim, dim))]), b.weight((dim,), "b")])
            proj_in.append(b.nodes[-2].name)
            h = b.op("Reshape", [h, b.ints([1, tokens, heads, hd])])
            reshapes.append(b.last())
            parts.append(b.op("Transpose", [h], perm=perm))
        q, k, v = parts
    if einsum:   # torchvision's MaxVit writes both products as Einsum
        s = b.op("Einsum", [q, k], equation="B H I D, B H D J -> B H I J")
        s = b.op("Softmax", [b.op("Mul", [s, b.floats(hd ** -0.5)])], axis=-1)
        o = b.op("Einsum", [s, v], equation="bhij,bhjd->bhid")
    else:
        s = b.op("Softmax", [b.op("Mul", [b.op("MatMul", [q, k]), b.floats(hd ** -0.5)])], axis=-1)
        o = b.op("MatMul", [s, v])
    o = b.op("Transpose", [o], perm=[1, 2, 0, 3] if heads_first else [0, 2, 1, 3])
    o = b.op("Reshape", [o, b.ints([1, tokens, dim])])
    merge = b.last()
    y = b.op("MatMul", [o, b.weight((dim, dim))])
    proj = b.last()
    return b.model([y]), dict(proj_in=proj_in, reshapes=reshapes, merge=merge, proj=proj)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("form", ["separate", "heads_first", "fused_split", "fused_gather", "einsum"])
def test_attention_heads_are_pruned_whole(ratio, form):
    """Reshape [1,T,D] -> [1,T,h,hd] splits the features into heads, removed whole; Q.K^T and
    scores.V pair head j of both operands; Reshape back merges them. heads_first: the heads
    are moved in front of the batch ([h,1,T,hd]). fused: one qkv projection, Reshape
    [1,T,3,h,hd], Transpose [3,1,h,T,hd], taken apart on axis 0 (Split+Squeeze or Gather):
    head j of q, k and v is one class. einsum: both products as Einsum (the heads index is
    in both operands and the output), with and without spaces in the equation."""
    proto, n = _attention(fused=form.startswith("fused"), gather=form == "fused_gather",
                          heads_first=form == "heads_first", einsum=form == "einsum")
    gs = groups(proto)
    heads = group_of(gs, n["proj_in"])
    assert heads.frozen is None and heads.width == 4 and heads.feed_out == [n["proj"]]
    slim, report = check_prune(proto, ratio)
    k = keep(4, ratio)
    assert param(slim, n["proj"], 1).shape == (4 * k, 16)
    assert param(slim, n["merge"], 1).tolist() == [1, 6, 4 * k]
    if not form.startswith("fused"):
        for mm, rs in zip(n["proj_in"], n["reshapes"]):
            assert param(slim, mm, 1).shape == (16, 4 * k)
            assert param(slim, rs, 1).tolist() == [1, 6, k, 4]
    else:
        assert param(slim, n["proj_in"][0], 1).shape == (16, 3 * 4 * k)
        assert param(slim, n["reshapes"][0], 1).tolist() == [1, 6, 3, k, 4]
    # whole heads: the removed q/k/v features come in blocks of head_dim
    removed = np.asarray(report.plan.removed[n["proj_in"][0]]).reshape(-1, 4)
    assert (removed == removed[:, :1] + np.arange(4)).all()


def test_attention_contracting_over_channels_is_frozen():
    """Q.K^T with the features (not heads) on the contracted axis mixes them: frozen."""
    b = GraphBuilder()
    x = b.input("x", [1, 4, 8])
    q = b.op("MatMul", [x, b.weight((8, 8))])
    k = b.op("MatMul", [x, b.weight((8, 8))])
    att = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])
    proto = b.model([att])
    assert any("MatMul of two activations (attention) with channels on a matrix axis" in r
               for r in reasons(groups(proto)))


@pytest.mark.parametrize("equation,reason", [
    ("btc,bsc->bts", "Einsum with channels on an index that is contracted or not in both operands"),
    ("...c,...c->...", "Einsum other than a product of two operands without ellipsis")])
def test_einsum_mixing_channels_is_frozen(equation, reason):
    """Einsum's features on the contracted index (or an equation the rule does not read):
    frozen, with the reason."""
    b = GraphBuilder()
    x = b.input("x", [1, 4, 8])
    q = b.op("MatMul", [x, b.weight((8, 8))])
    k = b.op("MatMul", [x, b.weight((8, 8))])
    att = b.op("Einsum", [q, k], equation=equation)
    proto = b.model([att])
    assert any(r.endswith(reason) for r in reasons(groups(proto)))


def test_einsum_macs_count_every_index_combination():
    """btc,bsc->bts: b*t*s*c multiply-accumulates, as MatMul's Q.K^T counts out x K."""
    from onnxprune.cost import cost
    b = GraphBuilder()
    x = b.input("x", [2, 4, 8])
    y = b.op("Einsum", [x, b.op("Relu", [x])], equation="btc,bsc->bts")
    model, _ = analyze_model(b.model([y]))
    assert cost(model).macs_by_node == {b.nodes[-1].name: 2 * 4 * 4 * 8}


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name,dynamo", [("vit", False), ("vit_fused_qkv", False),
                                         pytest.param("vit", True, marks=pytest.mark.zoo)])
def test_vit(name, dynamo, ratio):
    proto = exported(name, dynamo)
    gs = groups(proto)
    live = [g for g in gs if g.frozen is None and g.width > 1]
    mlp = [g for g in live if g.width == 128]            # fc1 -> GELU -> fc2, one per block
    heads = [g for g in live if g.width == 4]            # q, k, v (fused or not) -> proj
    assert len(mlp) == 2 and len(heads) == 2 and len(live) == 4
    # the residual stream (patch embedding, every projection back to it) is frozen by norm1
    (stream,) = [g for g in gs if g.frozen and "graph" not in g.frozen]
    assert stream.width == 32
    assert stream.frozen.startswith("LayerNormalization ") and stream.frozen.endswith(LN_REASON)
    assert "norm1" in stream.frozen or "layer_norm" in stream.frozen
    _, report = check_prune(proto, ratio)
    rows = [r for r in report.groups if r["frozen"] is None and r["channels_before"] > 1]
    assert sorted(r["channels_after"] for r in rows) == sorted(
        [keep(128, ratio)] * 2 + [keep(4, ratio)] * 2)


def test_vit_with_flatten2_patch_embedding_legacy_export():
    """timm's x.flatten(2) exports (legacy) as Reshape(x, Concat(Slice(Shape(x), 0, 2), -1)):
    the target reads the channel count of the very tensor it reshapes, and copies it onto the
    channel axis, so it follows the pruned tensor by itself; the stream is frozen by its
    LayerNorm, as in the static export, and the MLPs and heads stay prunable."""
    proto = exported("vit_flatten")
    gs = groups(proto)
    assert reasons(gs) == ["LayerNormalization /blocks/blocks.0/norm1/LayerNormalization: LayerNormalization "
                           "normalises over the channel axis", "graph input", "graph output"]
    assert [g.width for g in gs if g.frozen and g.frozen.startswith("LayerNorm")] == [32]
    assert sorted(g.width for g in gs if g.frozen is None and g.width > 1) == [4, 4, 128, 128]
    check_prune(proto, 0.5)


# =================================================================================================
# 5. A model built with onnx.helper only, without any value_info
# =================================================================================================
def _helper_model(contrib_op=False):
    rng = np.random.default_rng(0)
    inits = []

    def w(name, *shape):
        inits.append(numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name))
        return name

    def ints(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def bn(name, c):
        return [name, w(f"{name}_g", c), w(f"{name}_b", c), w(f"{name}_m", c),
                _positive(inits, f"{name}_v", rng.uniform(0.5, 2, c))]

    nodes = [
        helper.make_node("Conv", ["x", w("w1", 8, 3, 3, 3), w("b1", 8)], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("BatchNormalization", bn("c1", 8), ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Split", ["r1", ints("sp", [4, 4])], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Conv", ["s2", w("w2", 4, 4, 1, 1)], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Concat", ["s1", "r2"], ["cat"], name="cat", axis=1),
        helper.make_node("Reshape", ["cat", ints("t1", [1, 2, 4, 8, 8])], ["u"], name="unflatten"),
        helper.make_node("Transpose", ["u"], ["ut"], name="shuffle", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["ut", ints("t2", [1, -1, 8, 8])], ["sh"], name="flatten_back"),
        helper.make_node("MaxPool", ["sh"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", w("w3", 12, 8, 3, 3), w("b3", 12)], ["c3"], name="conv3", pads=[1] * 4),
    ]
    last = "c3"
    if contrib_op:  # onnx knows no schema for it: its shapes come from onnxruntime
        nodes.append(helper.make_node("Gelu", ["c3"], ["g"], name="ms_gelu", domain="com.microsoft"))
        last = "g"
    nodes += [
        helper.make_node("Conv", [last, w("w4", 12, 12, 1, 1)], ["c4"], name="conv4"),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", ints("t3", [0, -1])], ["f"], name="to_features"),
        helper.make_node("Gemm", ["f", w("wf", 5, 12), w("bf", 5)], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "helper_only",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib_op else [])
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    return proto


def _positive(inits, name, values):
    inits.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
    return name


@pytest.mark.parametrize("ratio", RATIOS)
def test_helper_model_without_value_info(ratio):
    proto = _helper_model()
    assert len(proto.graph.value_info) == 0
    assert all(d.HasField("dim_param") for d in proto.graph.output[0].type.tensor_type.shape.dim)
    onnx.checker.check_model(proto, full_check=True)
    model = load(proto)
    assert all(o in model.shapes for n in model.graph.node for o in n.output)
    assert model.shapes["ut"] == (1, 4, 2, 8, 8) and model.shapes["y"] == (1, 5)
    gs = groups(proto)
    assert reasons(gs) == ["graph input", "graph output"]
    assert sorted(g.width for g in prunable(proto)) == [4, 4, 12, 12]
    check_prune(proto, ratio)


def test_helper_model_shapes_from_onnxruntime_past_an_unknown_op():
    """A com.microsoft op stops onnx shape inference; the library's fallback runs the model in
    onnxruntime for the remaining shapes, so the layers after it are still analysed."""
    proto = _helper_model(contrib_op=True)
    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")}
    assert "c4" not in known                      # onnx alone cannot get past the Gelu
    model, couplings = analyze_model(proto)
    assert model.shapes["c4"] == (1, 12, 4, 4) and model.shapes["f"] == (1, 12)
    gs = couplings.groups
    assert any("unsupported operator Gelu (domain com.microsoft)" in r for r in reasons(gs))
    assert group_of(gs, "conv4").frozen is None
    check_prune(proto, 0.5)


@pytest.mark.parametrize("name", ["shufflenet_v2", "convnext", "unet", "yolo_neck", "vit", "vit_fused_qkv"])
def test_bgsc_mac_target_on_each_architecture(name):
    """The data-free criterion's bound graph on every architecture above (shuffles, channels-
    last LayerNorm, ConvTranspose up-sampling, SiLU written as x*sigmoid(x), attention)."""
    _, report = prune_and_check(exported(name), criterion="bgsc", target_macs=0.6)
    assert report.after["macs"] <= 0.6 * report.before["macs"]
