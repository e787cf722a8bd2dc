"""One test (or a small parametrized set) per operator rule in onnxprune/ops/, plus the
canonicalisation done at load time (onnxprune/model.py).

Every test builds a tiny graph by hand, checks the channel groups the analysis finds, and
where something is prunable prunes it with the masking oracle on (`prune_and_check`) and
checks that the attributes and shape constants of the pruned model followed the cut.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnx import TensorProto, helper

from helpers import (GraphBuilder, frozen_reasons, group_of, groups, keep, node, param, prunable,
                     prune_and_check, tensor)
from onnxprune.errors import OnnxPruneError
from onnxprune.plan import Plan
from onnxprune.ops.elementwise import UNARY as ELEMENTWISE_UNARY

RATIOS = [0.3, 0.5]
INT64_MAX = np.iinfo(np.int64).max
ORT_FAIL = ort.capi.onnxruntime_pybind11_state.Fail


# -- small readers of the pruned model ----------------------------------------------------






def attr(proto, node_name, key, default=None):
    for a in node(proto, node_name).attribute:
        if a.name == key:
            return helper.get_attribute_value(a)
    return default






def row(report, feed_in):
    """The report row of the (single) group fed by `feed_in`."""
    found = [r for r in report.groups if feed_in in r["feed_in"]]
    assert len(found) == 1, (feed_in, report.groups)
    return found[0]


def run(proto, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def head(b, h, c_in, c_out=4):
    """A final Conv, whose output is the (frozen) graph output."""
    y = b.conv(h, c_in, c_out)
    return y, b.last()


def only_group(proto, feed_in, feed_out):
    """The model's one prunable group, checked to run from `feed_in` to `feed_out`."""
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [feed_in] and ps[0].feed_out == [feed_out], ps
    return ps[0]


def stem(b, c=8, shape=(1, 3, 8, 8)):
    """Graph input -> Conv(3 -> c): the channels under test, fed in by one Conv."""
    x = b.input("x", list(shape))
    h = b.conv(x, shape[1], c)
    return h, b.last()


# =========================================================================================
# Conv
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_conv_ordinary(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Relu", [h])
    y, c2 = head(b, h, 8, 6)
    proto = b.model([y])
    gs = groups(proto)
    assert sorted(g.width for g in gs) == [3, 6, 8]
    assert sorted(frozen_reasons(proto)) == ["graph input", "graph output"]
    g = group_of(gs, c1)
    assert g.frozen is None and g.feed_out == [c2] and g.width == 8
    slim, report = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    assert param(slim, c1, 1).shape == (k, 3, 3, 3)
    assert param(slim, c1, 2).shape == (k,)
    assert param(slim, c2, 1).shape == (6, k, 3, 3)
    assert param(slim, c2, 2).shape == (6,)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_conv_depthwise(ratio, multiplier):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.conv(h, 8, 8 * multiplier, group=8)
    dw = b.last()
    h = b.op("Relu", [h])
    y, c3 = head(b, h, 8 * multiplier, 4)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1  # the depthwise conv produces no channels of its own
    g = ps[0]
    assert g.width == 8 and g.feed_in == [c1] and g.feed_out == [c3] and dw in g.channelwise
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    assert param(slim, dw, 1).shape == (k * multiplier, 1, 3, 3)
    assert param(slim, dw, 2).shape == (k * multiplier,)
    assert attr(slim, dw, "group") == k
    assert param(slim, c3, 1).shape == (4, k * multiplier, 3, 3)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("g", [2, 4])
def test_conv_grouped_keeps_equal_counts_per_group(ratio, g):
    b = GraphBuilder()
    h, c1 = stem(b, 16)
    h = b.op("Relu", [h])
    h = b.conv(h, 16, 16, group=g)
    cg = b.last()
    h = b.op("Relu", [h])
    y, c3 = head(b, h, 16, 4)
    proto = b.model([y])
    ps = prunable(proto)
    # channel j of every group is one class: 16 / g classes on each side of the grouped conv
    assert sorted(p.width for p in ps) == [16 // g, 16 // g]
    assert group_of(ps, c1).feed_out == [cg]
    assert group_of(ps, cg).feed_out == [c3]
    slim, report = prune_and_check(proto, ratio)
    per = keep(16 // g, ratio)
    assert param(slim, cg, 1).shape == (per * g, per, 3, 3)
    assert attr(slim, cg, "group") == g
    for producer in (c1, cg):
        removed = np.asarray(report.plan.removed[producer])
        counts = np.bincount(removed // (16 // g), minlength=g)
        assert (counts == counts[0]).all() and counts[0] == 16 // g - per, (producer, removed)
        # and it is the same channel position in every group
        pos = removed % (16 // g)
        assert sorted(pos.tolist()) == sorted(np.repeat(np.unique(pos), g).tolist())


# =========================================================================================
# ConvTranspose
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_conv_transpose_ordinary(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.conv_transpose(b.op("Relu", [h]), 8, 6)
    ct = b.last()
    y, c3 = head(b, b.op("Relu", [h]), 6, 4)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(p.width for p in ps) == [6, 8]
    assert group_of(ps, c1).feed_out == [ct]
    assert group_of(ps, ct).feed_out == [c3]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, ct, 1).shape == (keep(8, ratio), keep(6, ratio), 2, 2)
    assert param(slim, ct, 2).shape == (keep(6, ratio),)
    assert param(slim, c3, 1).shape == (4, keep(6, ratio), 3, 3)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_conv_transpose_depthwise(ratio, multiplier):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.conv_transpose(h, 8, 8 * multiplier, group=8)
    ct = b.last()
    y, c3 = head(b, b.op("Relu", [h]), 8 * multiplier, 4)
    proto = b.model([y])
    assert ct in only_group(proto, c1, c3).channelwise
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    assert attr(slim, ct, "group") == k
    assert param(slim, ct, 1).shape == (k, multiplier, 2, 2)
    assert param(slim, ct, 2).shape == (k * multiplier,)


def test_conv_transpose_grouped_not_depthwise_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.conv_transpose(h, 8, 8, group=2)
    y, _ = head(b, h, 8, 4)
    proto = b.model([y])
    assert any("grouped ConvTranspose" in r for r in frozen_reasons(proto))
    assert group_of(groups(proto), c1).frozen is not None


# =========================================================================================
# Gemm and MatMul
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", ["n", "1n", "scalar"])
def test_gemm(ratio, trans_b, bias_shape):
    b = GraphBuilder()
    x = b.input("x", [1, 16])
    h = b.gemm(x, 16, 12, trans_b=trans_b, bias=False)
    g1 = b.last()
    bias = {"n": (12,), "1n": (1, 12), "scalar": ()}[bias_shape]
    b.nodes[-1].input.append(b.weight(bias, "b"))
    h = b.op("Relu", [h])
    y = b.gemm(h, 12, 5, trans_b=trans_b)
    g2 = b.last()
    proto = b.model([y])
    assert only_group(proto, g1, g2).width == 12
    slim, _ = prune_and_check(proto, ratio)
    k = keep(12, ratio)
    assert param(slim, g1, 1).shape == ((k, 16) if trans_b else (16, k))
    assert param(slim, g2, 1).shape == ((5, k) if trans_b else (k, 5))
    assert param(slim, g1, 2).shape == {"n": (k,), "1n": (1, k), "scalar": ()}[bias_shape]




@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("shape", [
    [1, 16],                                       # rank 2
    "ncl",                                         # rank 3: [1, 16, 5] -> Transpose -> [1, 5, 16]
    [1, 5, 16],
    [2, 3, 16],
])
def test_matmul_constant_weight(ratio, shape):
    b = GraphBuilder()
    if shape == "ncl":
        x = b.op("Transpose", [b.input("x", [1, 16, 5])], perm=[0, 2, 1])
    else:
        x = b.input("x", shape)
    h = b.op("MatMul", [x, b.weight((16, 12))])
    m1 = b.last()
    h = b.op("Add", [h, b.weight((12,), "b")])
    add = b.last()
    h = b.op("Relu", [h])
    y = b.op("MatMul", [h, b.weight((12, 6))])
    m2 = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1
    g = ps[0]
    assert g.width == 12 and g.feed_in == [m1] and g.feed_out == [m2] and add in g.channelwise
    slim, _ = prune_and_check(proto, ratio)
    k = keep(12, ratio)
    assert param(slim, m1, 1).shape == (16, k)
    assert param(slim, add, 1).shape == (k,)
    assert param(slim, m2, 1).shape == (k, 6)


# =========================================================================================
# Normalisations and parametric activations
# =========================================================================================
def _norm_net(kind):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    if kind == "bn":
        h = b.bn(h, 8)
    else:
        h = b.op("InstanceNormalization", [h, b.floats(np.linspace(0.5, 1.5, 8)),
                                            b.floats(np.linspace(-0.2, 0.2, 8))], epsilon=1e-5)
    norm = b.last()
    h = b.op("Relu", [h])
    y, c2 = head(b, h, 8)
    return b.model([y]), c1, norm, c2


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("kind", ["bn", "in"])
def test_normalization_params_are_sliced(ratio, kind):
    proto, c1, norm, c2 = _norm_net(kind)
    g = only_group(proto, c1, c2)
    assert g.channelwise == [norm]
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    n_params = 5 if kind == "bn" else 3
    for i in range(1, n_params):
        assert param(slim, norm, i).shape == (k,)


def test_batchnorm_training_outputs_used_freezes():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    bn = b.op("BatchNormalization", [h, b.floats(np.ones(8)), b.floats(np.zeros(8)),
                                      b.floats(np.zeros(8)), b.floats(np.ones(8))],
              n_outputs=3, training_mode=1)
    y, _ = head(b, bn[0], 8)
    z = b.op("Add", [bn[1], b.floats([1.0])])
    proto = b.model([y, z])
    assert group_of(groups(proto), c1).frozen is not None


@pytest.mark.parametrize("ratio", RATIOS)
def test_prelu_per_channel_slope(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("PRelu", [h, b.floats(np.linspace(0.05, 0.4, 8).reshape(8, 1, 1))])
    pr = b.last()
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].channelwise == [pr] and ps[0].feed_out == [c2]
    slim, report = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    slope = param(slim, pr, 1)
    assert slope.shape == (k, 1, 1)
    kept_idx = sorted(set(range(8)) - set(report.plan.removed[c1]))
    np.testing.assert_array_equal(slope.ravel(), np.linspace(0.05, 0.4, 8).astype(np.float32)[kept_idx])


UNARY_SKIP = {"Identity", "Cast", "Not", "IsNaN", "IsInf"}   # tested on their own below
UNARY_OPSET = {"Gelu": 20, "Mish": 18}
POSITIVE_INPUT = {"Log", "Sqrt", "Reciprocal"}


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("op", [o for o in ELEMENTWISE_UNARY if o not in UNARY_SKIP])
def test_elementwise_unary_passes_channels_through(op, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    if op in POSITIVE_INPUT:
        h = b.op("Exp", [h])
    h = b.op(op, [h])
    y, c2 = head(b, h, 8)
    proto = b.model([y], opset=UNARY_OPSET.get(op, 17))
    try:
        run(proto, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    except Exception as e:  # pragma: no cover - depends on the onnxruntime build
        pytest.skip(f"onnxruntime does not run {op}: {str(e).splitlines()[0]}")
    assert only_group(proto, c1, c2).width == 8
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, c2, 1).shape == (4, keep(8, ratio), 3, 3)


@pytest.mark.parametrize("ratio", RATIOS)
def test_identity_cast_dropout_pass_through(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Identity", [h])
    h = b.op("Cast", [h], to=TensorProto.DOUBLE)
    h = b.op("Relu", [h])
    h = b.op("Cast", [h], to=TensorProto.FLOAT)
    h = b.op("Dropout", [h, b.floats(0.5)], n_outputs=2)[0]  # unused mask output
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    assert only_group(proto, c1, c2).width == 8
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, c2, 1).shape == (4, keep(8, ratio), 3, 3)


@pytest.mark.parametrize("ratio", RATIOS)
def test_boolean_unary_and_where(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    nan = b.op("IsNaN", [h])
    inf = b.op("IsInf", [h])
    ok = b.op("Not", [b.op("Or", [nan, inf])])
    h = b.op("Where", [ok, h, b.floats(0.0)])
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    prune_and_check(proto, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("as_constant_nodes", [False, True])
def test_clip_with_constant_bounds(ratio, opset, as_constant_nodes):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    make = b.constant_node if as_constant_nodes else b.const
    lo, hi = make(np.array(0.0, np.float32)), make(np.array(0.3, np.float32))
    h = b.op("Clip", [h, lo, hi])
    y, c2 = head(b, h, 8)
    proto = b.model([y], opset=opset)
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, c2, 1).shape == (4, keep(8, ratio), 3, 3)
    assert not [n for n in slim.graph.node if n.op_type == "Constant"]


@pytest.mark.parametrize("ratio", RATIOS)
def test_swish_as_mul_of_sigmoid(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Mul", [h, b.op("Sigmoid", [h])])
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    assert only_group(proto, c1, c2).width == 8
    prune_and_check(proto, ratio)


# =========================================================================================
# Pooling and reductions
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"])
def test_pooling(op, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    if op.startswith("Global"):
        h = b.op(op, [h])
    else:
        h = b.op(op, [h], kernel_shape=[2, 2], strides=[2, 2])
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, c2, 1).shape == (4, keep(8, ratio), 3, 3)


def test_maxpool_indices_used_freezes():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    out, idx = b.op("MaxPool", [h], n_outputs=2, kernel_shape=[2, 2], strides=[2, 2])
    y, _ = head(b, out, 8)
    z = b.op("Cast", [idx], to=TensorProto.FLOAT)
    proto = b.model([y, z])
    g = group_of(groups(proto), c1)
    assert g.frozen and "MaxPool indices" in g.frozen


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reduce_over_spatial_axes(op, keepdims, opset, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    if opset >= 18:
        h = b.op(op, [h, b.ints([2, 3])], keepdims=keepdims)
    else:
        h = b.op(op, [h], axes=[2, 3], keepdims=keepdims)
    if keepdims:
        y, c2 = head(b, h, 8)
    else:
        y = b.gemm(h, 8, 4)
        c2 = b.last()
    proto = b.model([y], opset=opset)
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    w = param(slim, c2, 1)
    assert w.shape[1] == keep(8, ratio)


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_over_channel_axis_is_frozen(opset):
    """Spatial attention a * mean_c(a): the channels of `a` are frozen, the stem stays prunable."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    a = b.conv(b.op("Relu", [h]), 8, 8)
    c2 = b.last()
    if opset >= 18:
        r = b.op("ReduceMean", [a, b.ints([1])], keepdims=1)
    else:
        r = b.op("ReduceMean", [a], axes=[1], keepdims=1)
    h = b.op("Mul", [a, r])
    y, _ = head(b, h, 8)
    proto = b.model([y], opset=opset)
    gs = groups(proto)
    frozen = group_of(gs, c2)
    assert frozen.frozen and "ReduceMean" in frozen.frozen and "channel axis" in frozen.frozen
    assert group_of(gs, c1).frozen is None
    slim, _ = prune_and_check(proto, 0.5)
    assert param(slim, c2, 1).shape == (8, 4, 3, 3)


def test_reduce_without_axes_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    r = b.op("ReduceSum", [h], keepdims=0)
    proto = b.model([r])
    g = group_of(groups(proto), c1)
    assert g.frozen and "ReduceSum" in g.frozen


# =========================================================================================
# Resize / Upsample / Pad
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_resize_scales(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Resize", [h, "", b.floats([1, 1, 2, 2])], mode="nearest")
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    prune_and_check(proto, ratio)


def test_resize_scales_on_channels_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Resize", [h, "", b.floats([1, 2, 1, 1])], mode="nearest")
    y, _ = head(b, h, 16)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen and "channel axis" in g.frozen


@pytest.mark.parametrize("ratio", RATIOS)
def test_resize_sizes_channel_entry_updated(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    sizes = b.ints([1, 8, 16, 16])
    h = b.op("Resize", [h, "", "", sizes], mode="linear")
    rs = b.last()
    h2 = b.op("Resize", [b.op("Relu", [h]), "", "", sizes], mode="nearest")  # shares the constant
    y, c2 = head(b, h2, 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    assert param(slim, rs, 3).tolist() == [1, k, 16, 16]
    assert param(slim, b.nodes[-2].name, 3).tolist() == [1, k, 16, 16]


def test_resize_with_axes_attribute_over_spatial_axes():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Resize", [h, "", b.floats([2, 2])], mode="nearest", axes=[2, 3])
    y, c2 = head(b, h, 8)
    proto = b.model([y], opset=18)
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.feed_out == [c2], g.frozen
    prune_and_check(proto, 0.5)


def test_resize_with_axes_attribute_over_channels_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Resize", [h, "", b.floats([2, 1])], mode="nearest", axes=[1, 2])
    h2 = b.conv(b.input("x2", [1, 3, 8, 8]), 3, 16)
    y, _ = head(b, b.op("Add", [h, h2]), 16)
    proto = b.model([y], opset=18)
    assert group_of(groups(proto), c1).frozen is not None


def test_upsample_deprecated():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Upsample", [h, b.floats([1, 1, 2, 2])], mode="nearest")
    y, c2 = head(b, h, 8)
    try:
        proto = b.model([y])
        onnx.checker.check_model(proto, full_check=True)
        run(proto, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    except Exception as e:
        pytest.skip(f"Upsample is rejected at opset 17: {str(e).splitlines()[0][:100]}")
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_out == [c2]
    prune_and_check(proto, 0.5)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("form", ["input", "axes_input"])
def test_pad_spatial(ratio, form):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    if form == "input":
        h = b.op("Pad", [h, b.ints([0, 0, 1, 2, 0, 0, 2, 1]), b.floats(0.5)])
        opset = 17
    else:
        h = b.op("Pad", [h, b.ints([1, 2, 2, 1]), b.floats(0.5), b.ints([2, 3])])
        opset = 18
    y, c2 = head(b, h, 8)
    proto = b.model([y], opset=opset)
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, c2, 1).shape == (4, keep(8, ratio), 3, 3)


@pytest.mark.parametrize("reads", ["height", "channels"])
def test_pad_computed_from_shape(reads):
    """torch's F.pad(x, (0, 0, 0, (4 - W % 4) % 4)) exports its pads as arithmetic on Shape(x):
    evaluated from the static shapes. Pads computed from the spatial size leave the channels
    prunable; pads computed from the channel count freeze them (the Shape rule)."""
    b = GraphBuilder()
    h, c1 = stem(b, 8, (1, 3, 10, 10))                  # the pad (2) goes on the end of axis 3
    dim = b.op("Gather", [b.op("Shape", [h]), b.const(np.array(3 if reads == "height" else 1, np.int64))])
    four = b.const(np.array(4, np.int64))
    pad = b.op("Mod", [b.op("Sub", [four, b.op("Mod", [dim, four])]), four])
    zeros = b.op("ConstantOfShape", [b.ints([7])], value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    pads = b.op("Concat", [zeros, b.op("Unsqueeze", [pad, b.ints([0])])], axis=0)
    h = b.op("Pad", [h, pads, b.floats(0.0)])
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    if reads == "channels":
        assert "channel count is read at run time" in group_of(groups(proto), c1).frozen
        return
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, 0.5)
    assert param(slim, c2, 1).shape == (4, 4, 3, 3)


@pytest.mark.parametrize("form", ["input", "axes_input"])
def test_pad_channel_axis_is_frozen(form):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    if form == "input":
        h = b.op("Pad", [h, b.ints([0, 1, 0, 0, 0, 1, 0, 0])])
        opset = 17
    else:
        h = b.op("Pad", [h, b.ints([1, 1]), "", b.ints([1])])
        opset = 18
    y, _ = head(b, h, 10)
    proto = b.model([y], opset=opset)
    g = group_of(groups(proto), c1)
    assert g.frozen and "pads the channel axis" in g.frozen


# =========================================================================================
# Elementwise binary operators
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean"])
def test_binary_couples_two_activations(op, ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = b.conv(x, 3, 8)
    ca = b.last()
    c = b.conv(x, 3, 8)
    cb = b.last()
    if op == "Div":
        c = b.op("Exp", [c])   # keeps the divisor away from zero
    h = b.op(op, [a, c])
    y, c3 = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1
    assert ps[0].width == 8 and sorted(ps[0].feed_in) == sorted([ca, cb]) and ps[0].feed_out == [c3]
    slim, report = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    assert param(slim, ca, 1).shape[0] == param(slim, cb, 1).shape[0] == k
    assert report.plan.removed[ca] == report.plan.removed[cb]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("op", ["Sum", "Max", "Min"])
def test_variadic_couples_three_activations(op, ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    ins, convs = [], []
    for _ in range(3):
        ins.append(b.conv(x, 3, 8))
        convs.append(b.last())
    y, c4 = head(b, b.op(op, ins), 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and sorted(ps[0].feed_in) == sorted(convs)
    _, report = prune_and_check(proto, ratio)
    assert report.plan.removed[convs[0]] == report.plan.removed[convs[1]] == report.plan.removed[convs[2]]


@pytest.mark.parametrize("ratio", RATIOS)
def test_binary_width_one_operand_couples_nothing(ratio):
    """x * sigmoid(conv_1ch(x)): a spatial gate of channel width 1 couples nothing."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Relu", [h])
    gate = b.conv(h, 8, 1)
    cg = b.last()
    h = b.op("Mul", [h, b.op("Sigmoid", [gate])])
    y, c3 = head(b, h, 8)
    proto = b.model([y])
    gs = groups(proto)
    g = group_of(gs, c1)
    assert g.frozen is None and g.width == 8 and sorted(g.feed_out) == sorted([cg, c3])
    assert group_of(gs, cg).width == 1
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, cg, 1).shape == (1, keep(8, ratio), 3, 3)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div", "Max"])
@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (8, 1, 1)])
@pytest.mark.parametrize("const_first", [False, True])
def test_binary_per_channel_constant_is_sliced(op, shape, const_first, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    values = np.linspace(0.5, 1.5, 8).astype(np.float32).reshape(shape)
    c = b.const(values, "k")
    h = b.op(op, [c, h] if const_first else [h, c])
    e = b.last()
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [c1] and ps[0].channelwise == [e]
    slim, report = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    sliced = param(slim, e, 0 if const_first else 1)
    assert sliced.shape == tuple(k if d == 8 else d for d in shape)
    kept_idx = sorted(set(range(8)) - set(report.plan.removed[c1]))
    np.testing.assert_array_equal(sliced.ravel(), values.ravel()[kept_idx])


@pytest.mark.parametrize("ratio", RATIOS)
def test_binary_scalar_constant_untouched(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Mul", [h, b.floats([2.0])])
    mul = b.last()
    h = b.op("Add", [h, b.floats(np.ones((1, 1, 1, 1)))])
    add = b.last()
    y, _ = head(b, h, 8)
    proto = b.model([y])
    assert len(prunable(proto)) == 1
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, mul, 1).shape == (1,)
    assert param(slim, add, 1).shape == (1, 1, 1, 1)


def test_binary_per_channel_runtime_operand_freezes():
    """A per-channel operand computed at run time from the graph input is not a constant."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    s = b.input("s", [1, 8, 1, 1])
    h = b.conv(x, 3, 8)
    c1 = b.last()
    h = b.op("Mul", [h, s])
    y, _ = head(b, h, 8)
    proto = b.model([y])
    (g,) = [g for g in groups(proto) if c1 in g.feed_in]
    assert sorted(g.feed_in) == sorted([c1, "s"])   # `s` is a graph input: it couples ...
    assert g.frozen == "graph input"                # ... and freezes


# =========================================================================================
# Concat / Split / Slice
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_concat_channels_stay_separate(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = b.conv(x, 3, 4)
    ca = b.last()
    c = b.conv(x, 3, 6)
    cb = b.last()
    h = b.op("Concat", [a, c], axis=1)
    y, c3 = head(b, h, 10)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(p.width for p in ps) == [4, 6]
    assert group_of(ps, ca).feed_out == [c3] and group_of(ps, cb).feed_out == [c3]
    slim, report = prune_and_check(proto, ratio)
    assert param(slim, c3, 1).shape[1] == keep(4, ratio) + keep(6, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
def test_concat_densenet_reuse(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 4)])
    c0 = b.nodes[-2].name
    a = b.op("Relu", [b.conv(h, 4, 4)])
    c1 = b.nodes[-2].name
    cat1 = b.op("Concat", [h, a], axis=1)
    bb = b.op("Relu", [b.conv(cat1, 8, 4)])
    c2 = b.nodes[-2].name
    cat2 = b.op("Concat", [cat1, bb], axis=1)
    y, c3 = head(b, cat2, 12)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(p.width for p in ps) == [4, 4, 4]
    assert sorted(group_of(ps, c0).feed_out) == sorted([c1, c2, c3])
    assert sorted(group_of(ps, c1).feed_out) == sorted([c2, c3])
    assert group_of(ps, c2).feed_out == [c3]
    slim, _ = prune_and_check(proto, ratio)
    k = keep(4, ratio)
    assert param(slim, c2, 1).shape[1] == 2 * k
    assert param(slim, c3, 1).shape[1] == 3 * k


def test_concat_with_constant_block_freezes_only_it():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    block = b.floats(np.ones((1, 2, 8, 8)))
    h = b.op("Concat", [h, block], axis=1)
    y, _ = head(b, h, 10)
    proto = b.model([y])
    assert group_of(groups(proto), c1).frozen is None
    assert "constant input of Concat" in frozen_reasons(proto)
    prune_and_check(proto, 0.5)


@pytest.mark.parametrize("ratio", RATIOS)
def test_concat_on_spatial_axis_couples_inputs(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    a = b.conv(x, 3, 8)
    ca = b.last()
    c = b.conv(x, 3, 8)
    cb = b.last()
    h = b.op("Concat", [a, c], axis=2)
    y, _ = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and sorted(ps[0].feed_in) == sorted([ca, cb])
    prune_and_check(proto, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
def test_concat_of_a_constant_on_a_non_channel_axis_cuts_the_constant(ratio):
    """A class token in front of the patches: the constant carries the same channels on the
    channel axis, so it is cut with them instead of freezing them."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    token = b.floats(b.rng.standard_normal((1, 8, 2, 8)).astype(np.float32))
    cat = b.op("Concat", [token, h], axis=2)
    cat_node = b.last()
    y, _ = head(b, cat, 8)
    proto = b.model([y])
    assert group_of(groups(proto), c1).frozen is None
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, cat_node, 0).shape == (1, keep(8, ratio), 2, 8)


def _split_net(form):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    opset = {"input": 13, "attr": 11, "equal": 13, "num_outputs": 18}[form]
    if form == "input":
        p, q = b.op("Split", [h, b.ints([3, 5])], n_outputs=2, axis=1)
    elif form == "attr":
        p, q = b.op("Split", [h], n_outputs=2, axis=1, split=[3, 5])
    elif form == "equal":
        p, q = b.op("Split", [h], n_outputs=2, axis=1)
    else:
        p, q = b.op("Split", [h], n_outputs=2, axis=1, num_outputs=2)
    sp = b.last()
    cp_in, cq_in = (3, 5) if form in ("input", "attr") else (4, 4)
    a = b.conv(p, cp_in, 4)
    ca = b.last()
    c = b.conv(q, cq_in, 4)
    cb = b.last()
    h = b.op("Relu", [b.op("Add", [a, c])])
    y, c4 = head(b, h, 4, 2)
    return b.model([y], opset=opset), c1, sp, ca, cb, (cp_in, cq_in), opset


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("form", ["input", "attr", "equal", "num_outputs"])
def test_split_on_channels(form, ratio):
    proto, c1, sp, ca, cb, sizes, opset = _split_net(form)
    gs = prunable(proto)
    # each segment is its own group (same producer, different consumers), plus the Add
    segs = sorted(g.width for g in gs if g.feed_in == [c1])
    assert segs == sorted(sizes)
    assert sorted(g.feed_out[0] for g in gs if g.feed_in == [c1]) == sorted([ca, cb])
    slim, _ = prune_and_check(proto, ratio)
    new = [keep(s, ratio) for s in sizes]
    if opset >= 13:
        assert param(slim, sp, 1).tolist() == new
        assert attr(slim, sp, "num_outputs") is None
    else:
        assert attr(slim, sp, "split") == new
    assert param(slim, ca, 1).shape[1] == new[0] and param(slim, cb, 1).shape[1] == new[1]


@pytest.mark.parametrize("ratio", RATIOS)
def test_split_on_spatial_axis_passes_through(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    p, q = b.op("Split", [h, b.ints([3, 5])], n_outputs=2, axis=2)
    sp = b.last()
    h = b.op("Concat", [q, p], axis=2)
    y, _ = head(b, h, 8)
    proto = b.model([y])
    assert len(prunable(proto)) == 1
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, sp, 1).tolist() == [3, 5]


def test_split_parts_keep_a_channel_each():
    """A group spanning both parts of a Split (re-joined by Concat) is cut into one group per
    part, so no part can lose every channel (a 0-channel tensor breaks onnxruntime); a plan
    that empties a part is refused."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    p, q = b.op("Split", [h, b.ints([2, 6])], n_outputs=2, axis=1)
    h = b.op("Concat", [b.op("Relu", [p]), b.op("Sigmoid", [q])], axis=1)
    y, _ = head(b, h, 8)
    proto = b.model([y])
    assert sorted(g.width for g in prunable(proto)) == [2, 6]
    with pytest.raises(OnnxPruneError, match="removes every channel of group"):
        onnxprune.prune(proto, plan=Plan({c1: [0, 1, 5]}))
    prune_and_check(proto, plan=Plan({c1: [0, 5]}))


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("bounds", [(2, 7), (-6, INT64_MAX), (0, -1)])
def test_slice_on_channel_axis_bounds_updated(bounds, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    start, end = bounds
    h = b.op("Slice", [h, b.ints([start]), b.ints([end]), b.ints([1])])
    sl = b.last()
    lo, hi, _ = slice(start, end).indices(8)
    y, c2 = head(b, h, hi - lo)
    proto = b.model([y])
    gs = groups(proto)
    inner = [g for g in gs if g.feed_in == [c1] and g.feed_out == [c2]]
    assert len(inner) == 1 and inner[0].width == hi - lo and inner[0].frozen is None
    slim, report = prune_and_check(proto, ratio)
    removed = set(report.plan.removed.get(c1, []))
    kept_mask = np.array([i not in removed for i in range(8)])
    new_start, new_end = param(slim, sl, 1).tolist(), param(slim, sl, 2).tolist()
    assert new_start == [int(kept_mask[:lo].sum())]
    assert new_end == [new_start[0] + int(kept_mask[lo:hi].sum())]
    assert param(slim, c2, 1).shape[1] == int(kept_mask[lo:hi].sum())


@pytest.mark.parametrize("ratio", RATIOS)
def test_slice_on_spatial_axis_passes_through(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Slice", [h, b.ints([1, 0]), b.ints([7, 8]), b.ints([2, 3])])
    sl = b.last()
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [c1] and ps[0].feed_out == [c2] and ps[0].width == 8
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, sl, 1).tolist() == [1, 0] and param(slim, sl, 2).tolist() == [7, 8]


def test_slice_channel_step_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Slice", [h, b.ints([0]), b.ints([8]), b.ints([1]), b.ints([2])])
    y, _ = head(b, h, 4)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen and "step" in g.frozen


# =========================================================================================
# Flatten / Reshape / Squeeze / Unsqueeze / Transpose
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_flatten_chw_into_gemm(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8, shape=(1, 3, 4, 4))
    h = b.op("Flatten", [b.op("Relu", [h])], axis=1)
    y = b.gemm(h, 8 * 16, 10)
    g = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].width == 8 and ps[0].feed_in == [c1] and ps[0].feed_out == [g]
    slim, report = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    w = param(slim, g, 1)
    assert w.shape == (10, k * 16)
    # each kept channel owns its block of H*W features, in order
    kept_idx = sorted(set(range(8)) - set(report.plan.removed[c1]))
    original = param(proto, g, 1).reshape(10, 8, 16)
    np.testing.assert_array_equal(w, original[:, kept_idx].reshape(10, -1))


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("target", [[1, 128], [1, -1], [0, -1], [-1, 128]])
def test_reshape_flatten_to_features(target, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8, shape=(1, 3, 4, 4))
    h = b.op("Reshape", [h, b.ints(target)])
    rs = b.last()
    y = b.gemm(h, 128, 10)
    g = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_out == [g]
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    new = param(slim, rs, 1).tolist()
    expected = [t if t <= 0 else (k * 16 if i == 1 else t) for i, t in enumerate(target)]
    assert new == expected
    assert param(slim, g, 1).shape == (10, k * 16)


@pytest.mark.parametrize("ratio", RATIOS)
def test_reshape_squeeze_like(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Reshape", [b.op("GlobalAveragePool", [h]), b.ints([1, 8])])
    rs = b.last()
    y = b.gemm(h, 8, 10)
    g = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_out == [g]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, rs, 1).tolist() == [1, keep(8, ratio)]


@pytest.mark.parametrize("ratio", RATIOS)
def test_reshape_unflatten_features_back_to_channels(ratio):
    """Gemm features -> Reshape [1,C,1,1] -> Conv: features become channels again."""
    b = GraphBuilder()
    x = b.input("x", [1, 16])
    h = b.gemm(x, 16, 8)
    g = b.last()
    h = b.op("Reshape", [h, b.ints([1, 8, 1, 1])])
    rs = b.last()
    y = b.conv(h, 8, 4, k=1)
    c2 = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [g] and ps[0].feed_out == [c2]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, rs, 1).tolist() == [1, keep(8, ratio), 1, 1]


@pytest.mark.parametrize("ratio", RATIOS)
def test_reshape_channel_shuffle_is_prunable(ratio):
    """Reshape [N,g,C/g,H,W] -> Transpose -> Reshape: the same position of every group is
    one class, so the shuffle stays valid and the stem is prunable in steps of g."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Reshape", [h, b.ints([1, 2, 4, 8, 8])])
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.ints([1, 8, 8, 8])])
    y, _ = head(b, h, 8)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.width == 4
    prune_and_check(proto, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("GlobalAveragePool", [h])               # [1, 8, 1, 1]
    if opset >= 13:
        h = b.op("Squeeze", [h, b.ints([2, 3])])     # [1, 8]
        h = b.op("Unsqueeze", [h, b.ints([0, -1])])  # [1, 1, 8, 1]
        h = b.op("Squeeze", [h, b.ints([0])])        # [1, 8, 1]
        h = b.op("Squeeze", [h])                     # [8]: every unit axis
        h = b.op("Unsqueeze", [h, b.ints([0])])      # [1, 8]
    else:
        h = b.op("Squeeze", [h], axes=[2, 3])
        h = b.op("Unsqueeze", [h], axes=[0, -1])
        h = b.op("Squeeze", [h], axes=[0])
        h = b.op("Squeeze", [h])
        h = b.op("Unsqueeze", [h], axes=[0])
    y = b.gemm(h, 8, 10)                             # [1, 8] -> [1, 10]
    g = b.last()
    proto = b.model([y], opset=opset)
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [c1] and ps[0].feed_out == [g]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, g, 1).shape == (10, keep(8, ratio))


def test_squeeze_of_channel_axis_is_frozen():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 1)
    c1 = b.last()
    h = b.op("Squeeze", [h, b.ints([1])])
    proto = b.model([h])
    assert any("squeezes the channel axis" in r for r in frozen_reasons(proto))


@pytest.mark.parametrize("ratio", RATIOS)
def test_transpose_channels_last_block(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Transpose", [h], perm=[0, 2, 3, 1])         # [1, 8, 8, C]
    h = b.op("MatMul", [h, b.weight((8, 12))])
    mm = b.last()
    h = b.op("Add", [h, b.weight((12,), "b")])
    add = b.last()
    h = b.op("Relu", [h])
    h = b.op("Transpose", [h], perm=[0, 3, 1, 2])         # [1, 12, 8, 8]
    y, c3 = head(b, h, 12)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(p.width for p in ps) == [8, 12]
    assert group_of(ps, c1).feed_out == [mm]
    assert group_of(ps, mm).feed_out == [c3] and add in group_of(ps, mm).channelwise
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, mm, 1).shape == (keep(8, ratio), keep(12, ratio))
    assert param(slim, add, 1).shape == (keep(12, ratio),)


@pytest.mark.parametrize("ratio", RATIOS)
def test_transpose_reshape_tokens_block(ratio):
    """[1,C,H,W] -> Reshape [1,C,HW] -> Transpose -> MatMul -> Transpose -> Reshape [1,C',H,W]."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Reshape", [h, b.ints([1, 8, 64])])
    r1 = b.last()
    h = b.op("Transpose", [h], perm=[0, 2, 1])
    h = b.op("MatMul", [h, b.weight((8, 12))])
    mm = b.last()
    h = b.op("Transpose", [b.op("Relu", [h])], perm=[0, 2, 1])
    h = b.op("Reshape", [h, b.ints([1, 12, 8, 8])])
    r2 = b.last()
    y, c3 = head(b, h, 12)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(p.width for p in ps) == [8, 12]
    assert group_of(ps, c1).feed_out == [mm] and group_of(ps, mm).feed_out == [c3]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, mm, 1).shape == (keep(8, ratio), keep(12, ratio))
    assert param(slim, r1, 1).tolist() == [1, keep(8, ratio), 64]
    assert param(slim, r2, 1).tolist() == [1, keep(12, ratio), 8, 8]


# =========================================================================================
# Shape -> Gather
# =========================================================================================
def _dynamic_reshape(index):
    """Flatten through a target computed from Shape: Gather(index) of the conv output."""
    b = GraphBuilder()
    h, c1 = stem(b, 8, shape=(1, 3, 4, 4))
    dim = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h]), b.ints(index)], axis=0), b.ints([0])])
    if index == 0:
        target = b.op("Concat", [dim, b.ints([-1])], axis=0)          # [N, -1]
        h = b.op("Reshape", [h, target])
        y = b.gemm(h, 128, 10)
    else:
        target = b.op("Concat", [b.ints([1]), dim, b.ints([-1])], axis=0)  # [1, C, -1]
        h = b.op("Reshape", [h, target])
        h = b.op("ReduceMean", [h], axes=[2], keepdims=0)
        y = b.gemm(h, 8, 10)
    return b.model([y]), c1


@pytest.mark.parametrize("ratio", RATIOS)
def test_shape_gather_of_batch_dim_is_harmless(ratio):
    proto, c1 = _dynamic_reshape(0)
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.width == 8
    prune_and_check(proto, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
def test_shape_gather_of_channel_dim_copied_onto_those_channels_follows_them(ratio):
    """reshape(x, [1, C, -1]) with C = x.shape[1] read at run time: the count is that of the
    pruned tensor itself, so it needs no rewrite."""
    proto, c1 = _dynamic_reshape(1)
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.width == 8
    prune_and_check(proto, ratio)


def test_shape_gather_of_channel_dim_sizing_another_axis_is_frozen():
    """reshape(x, [1, 8, C, -1]): the run-time channel count splits the positions, which pruning
    would change: the channels it counts freeze."""
    b = GraphBuilder()
    h, c1 = stem(b, 8, shape=(1, 3, 4, 4))
    dim = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h]), b.ints(1)], axis=0), b.ints([0])])
    h = b.op("Reshape", [h, b.op("Concat", [b.ints([1, 8]), dim, b.ints([-1])], axis=0)])
    proto = b.model([b.gemm(b.op("ReduceMean", [h], axes=[2, 3], keepdims=0), 8, 10)])
    g = group_of(groups(proto), c1)
    assert g.frozen and "a channel count read at run time sizes other channels" in g.frozen


# =========================================================================================
# Unknown operators, graph interface, Softmax
# =========================================================================================
def test_unknown_op_freezes_exactly_its_channels():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("LRN", [b.op("Relu", [h])], size=3)
    lrn = b.last()
    h = b.conv(h, 8, 8)
    c2 = b.last()
    h = b.op("Relu", [h])
    y, c3 = head(b, h, 8)
    proto = b.model([y])
    gs = groups(proto)
    before, after, free = group_of(gs, c1), group_of(gs, lrn), group_of(gs, c2)
    assert before.frozen == "unsupported operator LRN"
    assert after.frozen == "unsupported operator LRN"   # its outputs are new frozen channels
    assert free.frozen is None and free.feed_out == [c3]
    slim, _ = prune_and_check(proto, 0.5)
    assert param(slim, c1, 1).shape[0] == 8 and param(slim, c2, 1).shape == (4, 8, 3, 3)


def test_custom_domain_op_is_frozen_with_domain():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Gelu", [h])
    b.nodes[-1].domain = "com.microsoft"
    h = b.conv(h, 8, 8)
    c2 = b.last()
    y, c3 = head(b, b.op("Relu", [h]), 8)
    proto = b.model_with_domains({y: [1, 4, 8, 8]}, {"com.microsoft": 1})
    gs = groups(proto)
    assert group_of(gs, c1).frozen == "unsupported operator Gelu (domain com.microsoft)"
    assert group_of(gs, c2).frozen is None
    prune_and_check(proto, 0.5)


def test_graph_inputs_and_outputs_are_frozen():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [x])
    h = b.conv(h, 3, 8)
    c1 = b.last()
    mid = b.op("Relu", [h])
    y, c2 = head(b, mid, 8)
    proto = b.model([y, mid])       # the middle activation is an output too
    gs = groups(proto)
    assert group_of(gs, "x").frozen == "graph input"
    assert group_of(gs, c1).frozen == "graph output"
    assert group_of(gs, c2).frozen == "graph output"
    assert prunable(proto) == []


@pytest.mark.parametrize("opset,axis,frozen", [(13, 1, True), (13, -1, False), (11, 1, True),
                                               (11, 2, False), (11, 0, True)])
def test_softmax_axis(opset, axis, frozen):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Softmax", [h], axis=axis)
    y, _ = head(b, h, 8)
    proto = b.model([y], opset=opset)
    g = group_of(groups(proto), c1)
    if frozen:
        assert g.frozen and "Softmax normalises across channels" in g.frozen
    else:
        assert g.frozen is None
        prune_and_check(proto, 0.5)


# =========================================================================================
# Canonicalisation at load time (onnxprune/model.py)
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_weights_in_constant_nodes(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    rng = np.random.default_rng(1)
    w1 = b.constant_node(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3)
    b1 = b.constant_node(rng.standard_normal(8).astype(np.float32))
    h = b.op("Conv", [x, w1, b1], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c1 = b.last()
    h = b.op("Relu", [h])
    w2 = b.constant_node(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.3)
    y = b.op("Conv", [h, w2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c2 = b.last()
    proto = b.model([y])
    assert not proto.graph.initializer
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    assert param(slim, c1, 1).shape == (k, 3, 3, 3) and param(slim, c2, 1).shape == (4, k, 3, 3)
    assert not [n for n in slim.graph.node if n.op_type == "Constant"]


@pytest.mark.parametrize("via_identity", [True, False])
def test_shared_weight_with_different_cuts(via_identity):
    """Two convs read one weight (behind Identity nodes, as torch exports de-duplicated
    weights): a plan cuts their inputs differently, and neither may corrupt the other."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h1 = b.op("Relu", [b.conv(x, 3, 8)])
    p1 = b.nodes[-2].name
    h2 = b.op("Relu", [b.conv(x, 3, 8)])
    p2 = b.nodes[-2].name
    w = b.weight((8, 8, 3, 3))
    wa = b.op("Identity", [w]) if via_identity else w
    wb = b.op("Identity", [w]) if via_identity else w
    a = b.op("Conv", [h1, wa], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    ca = b.last()
    c = b.op("Conv", [h2, wb], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    cb = b.last()
    h = b.op("Relu", [b.op("Add", [a, c])])
    y, c3 = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(len(p.feed_in) for p in ps) == [1, 1, 2]
    plan = Plan({p1: [0, 1, 2], p2: [5, 6], ca: [3]})
    slim, report = prune_and_check(proto, plan=plan)
    wa_s, wb_s = param(slim, ca, 1), param(slim, cb, 1)
    assert wa_s.shape == (7, 5, 3, 3) and wb_s.shape == (7, 6, 3, 3)
    original = tensor(proto, w)
    out_keep = [i for i in range(8) if i != 3]
    np.testing.assert_array_equal(wa_s, original[out_keep][:, [3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(wb_s, original[out_keep][:, [0, 1, 2, 3, 4, 7]])


@pytest.mark.parametrize("ratio", RATIOS)
def test_weight_computed_from_constants_is_folded(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)
    c1 = b.last()
    scale = b.floats(np.linspace(0.5, 1.5, 8).reshape(1, 8, 1, 1))
    w = b.op("Mul", [b.weight((4, 8, 3, 3)), scale])  # a weight computed at run time
    y = b.op("Conv", [b.op("Relu", [h]), w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c2 = b.last()
    proto = b.model([y])
    only_group(proto, c1, c2)
    slim, report = prune_and_check(proto, ratio)
    assert any("folded" in n for n in report.notes)
    assert param(slim, c2, 1).shape == (4, keep(8, ratio), 3, 3)
    assert "Mul" not in {n.op_type for n in slim.graph.node}


@pytest.mark.parametrize("ratio", RATIOS)
def test_opset11_model(ratio):
    """An opset 11 network: Clip with inputs, Split attribute, Squeeze attribute, Pad input."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.bn(b.conv(x, 3, 8), 8)
    c1 = b.nodes[-2].name
    h = b.op("Clip", [h, b.floats(0.0), b.floats(6.0)])
    h = b.op("Pad", [h, b.ints([0, 0, 1, 1, 0, 0, 1, 1])])
    p, q = b.op("Split", [h], n_outputs=2, axis=1, split=[4, 4])
    sp = b.last()
    h = b.op("Concat", [q, p], axis=1)
    h = b.conv(h, 8, 8, pad=0)
    c2 = b.last()
    h = b.op("Squeeze", [b.op("GlobalAveragePool", [h])], axes=[2, 3])
    y = b.gemm(h, 8, 5)
    proto = b.model([y], opset=11)
    ps = prunable(proto)
    # both Split parts go from the same Conv to the same Conv, but each part must keep a
    # channel: one group per part (4 + 4), and the second conv's output
    assert sorted(p.width for p in ps) == [4, 4, 8]
    assert all(g.feed_out == [c2] for g in ps if g.feed_in == [c1])
    slim, report = prune_and_check(proto, ratio)
    k, half = keep(8, ratio), keep(4, ratio)
    removed = set(report.plan.removed[c1])
    assert attr(slim, sp, "split") == [len({0, 1, 2, 3} - removed), len({4, 5, 6, 7} - removed)]
    assert attr(slim, sp, "split") == [half, half]
    assert param(slim, c2, 1).shape == (k, 2 * half, 3, 3)


# =========================================================================================
# More patterns: SE block, reuse, shared constants, Gather, Expand/Tile, LayerNormalization
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_squeeze_excitation_block(ratio):
    """h * sigmoid(conv_e(relu(conv_r(gap(h))))): the gate's channels are h's channels."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    c1 = b.nodes[-2].name
    s = b.conv(b.op("GlobalAveragePool", [h]), 8, 4, k=1)
    cr = b.last()
    s = b.conv(b.op("Relu", [s]), 4, 8, k=1)
    ce = b.last()
    h = b.op("Mul", [h, b.op("Sigmoid", [s])])
    y, c3 = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert sorted(p.width for p in ps) == [4, 8]
    g = group_of(ps, [c1, ce])
    assert sorted(g.feed_out) == sorted([cr, c3])
    slim, report = prune_and_check(proto, ratio)
    assert report.plan.removed[c1] == report.plan.removed[ce]
    assert param(slim, ce, 1).shape == (keep(8, ratio), keep(4, ratio), 1, 1)


@pytest.mark.parametrize("ratio", RATIOS)
def test_concat_of_the_same_tensor_twice(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Relu", [h])
    y, c2 = head(b, b.op("Concat", [h, h], axis=1), 16)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].width == 8
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, c2, 1).shape == (4, 2 * keep(8, ratio), 3, 3)


@pytest.mark.parametrize("criterion", ["random", "l1"])
def test_per_channel_constants_shared_by_two_groups(criterion):
    """Exporters de-duplicate equal constants: two BatchNormalizations of different groups read
    the same scale/shift/mean/var tensors, cut differently."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    shared = [b.floats(np.linspace(0.5, 1.5, 8)), b.floats(np.linspace(-0.1, 0.1, 8)),
              b.floats(np.linspace(-0.2, 0.2, 8)), b.floats(np.linspace(0.5, 2.0, 8))]
    h = b.op("Relu", [b.op("BatchNormalization", [b.conv(x, 3, 8)] + shared)])
    bn1 = b.last()
    h = b.op("Relu", [b.op("BatchNormalization", [b.conv(h, 8, 8)] + shared)])
    bn2 = b.last()
    y, _ = head(b, h, 8)
    proto = b.model([y])
    assert len(prunable(proto)) == 2
    slim, report = prune_and_check(proto, 0.5, criterion=criterion)
    for bn in (node(slim, bn1), node(slim, bn2)):
        for name in bn.input[1:]:
            assert tensor(slim, name).shape == (4,)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("axis", [0, 2, 3])
def test_gather_on_a_non_channel_axis(axis, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Gather", [h, b.ints(0)], axis=axis)                 # rank 3
    if axis == 0:                                                 # [8, 8, 8]: channels on 0
        h = b.op("Unsqueeze", [b.op("ReduceMean", [h], axes=[1, 2], keepdims=0), b.ints([0])])
    else:                                                         # [1, 8, 8]
        h = b.op("ReduceMean", [h], axes=[2], keepdims=0)
    y = b.gemm(h, 8, 4)
    g = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [c1] and ps[0].feed_out == [g]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, g, 1).shape == (4, keep(8, ratio))


def test_gather_of_channels_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Gather", [h, b.ints([0, 2, 4])], axis=1)
    y, _ = head(b, h, 3)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen and "Gather selects channels" in g.frozen


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("op,shape", [("Expand", [1, 1, 8, 8]), ("Expand", [8, 8]),
                                      ("Tile", [1, 1, 8, 8])])
def test_expand_and_tile_over_spatial_axes(op, shape, ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    g = b.op(op, [b.op("GlobalAveragePool", [h]), b.ints(shape)])
    h = b.op("Sub", [h, g])
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    prune_and_check(proto, ratio)


def test_tile_of_channels_is_frozen():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    y, _ = head(b, b.op("Tile", [h, b.ints([1, 2, 1, 1])]), 16)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen and "Tile repeats channels" in g.frozen


def test_expand_with_literal_channel_count():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    g = b.op("Expand", [b.op("GlobalAveragePool", [h]), b.ints([1, 8, 8, 8])])
    y, _ = head(b, b.op("Sub", [h, g]), 8)
    prune_and_check(b.model([y]), 0.5)


@pytest.mark.parametrize("ratio", RATIOS)
def test_layer_normalization_over_spatial_axes(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("LayerNormalization", [h, b.floats(np.ones((8, 8))), b.floats(np.zeros((8, 8)))], axis=2)
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    prune_and_check(proto, ratio)


@pytest.mark.parametrize("axis", [1, -3])
def test_layer_normalization_over_channels_is_frozen(axis):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("LayerNormalization", [h, b.floats(np.ones((8, 8, 8))), b.floats(np.zeros((8, 8, 8)))],
             axis=axis)
    y, _ = head(b, h, 8)
    proto = b.model([y])
    g = group_of(groups(proto), c1)
    assert g.frozen and "LayerNormalization" in g.frozen


@pytest.mark.parametrize("ratio", RATIOS)
def test_pow_with_per_channel_exponent(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Pow", [b.op("Sigmoid", [h]), b.floats(np.linspace(1, 3, 8).reshape(1, 8, 1, 1))])
    pw = b.last()
    y, _ = head(b, h, 8)
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].channelwise == [pw]
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, pw, 1).shape == (1, keep(8, ratio), 1, 1)


@pytest.mark.parametrize("ratio", RATIOS)
def test_conv1d_and_depthwise_conv1d(ratio):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 16])
    h = b.op("Conv", [x, b.weight((8, 3, 3)), b.weight((8,), "b")], kernel_shape=[3], pads=[1, 1])
    c1 = b.last()
    h = b.op("Conv", [b.op("Relu", [h]), b.weight((8, 1, 3))], kernel_shape=[3], pads=[1, 1], group=8)
    dw = b.last()
    y = b.op("Conv", [h, b.weight((4, 8, 1))], kernel_shape=[1])
    c3 = b.last()
    proto = b.model([y])
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [c1] and ps[0].feed_out == [c3] and ps[0].channelwise == [dw]
    slim, _ = prune_and_check(proto, ratio)
    assert attr(slim, dw, "group") == keep(8, ratio)


# =========================================================================================
# Reshape: features back into channels
# =========================================================================================
@pytest.mark.parametrize("ratio", RATIOS)
def test_flatten_then_reshape_back_to_channels(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8, shape=(1, 3, 4, 4))
    h = b.op("Flatten", [h], axis=1)                 # [1, 128]
    h = b.op("Reshape", [h, b.ints([1, 8, 4, 4])])
    rs = b.last()
    y, c2 = head(b, b.op("Relu", [h]), 8)
    proto = b.model([y])
    only_group(proto, c1, c2)
    slim, _ = prune_and_check(proto, ratio)
    assert param(slim, rs, 1).tolist() == [1, keep(8, ratio), 4, 4]


# =========================================================================================
# Shape -> Gather with a negative index
# =========================================================================================
@pytest.mark.parametrize("index", [
    1,
    -3,
])
def test_shape_gather_channel_count_used_as_a_value(index):
    """y / C with C read from Shape: pruning would silently change the divisor."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    c = b.op("Cast", [b.op("Gather", [b.op("Shape", [h]), b.ints(index)], axis=0)], to=TensorProto.FLOAT)
    y, _ = head(b, b.op("Relu", [h]), 8)
    z = b.op("Div", [y, c])
    proto = b.model([z])
    g = group_of(groups(proto), c1)
    assert g.frozen and "channel count is read at run time" in g.frozen


# =========================================================================================
# Channels that leave the analysed graph: subgraphs, graph inputs of odd rank
# =========================================================================================
def _if_reads_outer_activation():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    b.inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, [1]))
    h = b.op("Relu", [b.conv(x, 3, 8)])
    c1 = b.nodes[-2].name
    out = helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [1, 8, 8, 8])
    then_g = helper.make_graph([helper.make_node("Sigmoid", [h], ["branch_out"])], "then", [], [out])
    else_g = helper.make_graph([helper.make_node("Tanh", [h], ["branch_out"])], "else", [], [out])
    o = b.op("If", ["flag"], then_branch=then_g, else_branch=else_g)
    y = b.conv(o, 8, 4)
    z = b.conv(h, 8, 4)
    return b.model([y, z]), c1


def test_if_branch_reading_an_activation_freezes_it():
    """Channels read inside an If branch (outer scope) must be frozen, not pruned."""
    proto, c1 = _if_reads_outer_activation()
    g = group_of(groups(proto), c1)
    assert g.frozen is not None
    prune_and_check(proto, 0.5, expect_smaller=False)


def test_per_channel_graph_input_of_rank_3_freezes():
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Mul", [h, b.input("s", [8, 1, 1])])
    y, _ = head(b, h, 8)
    proto = b.model([y])
    assert group_of(groups(proto), c1).frozen is not None
    prune_and_check(proto, 0.5, expect_smaller=False)


def _gated_by_graph_input():
    """conv(x) * g with g a [1, 1, H, W] graph input: width 1, couples nothing."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Mul", [h, b.input("g", [1, 1, 8, 8])])
    y, c2 = head(b, h, 8)
    return b.model([y]), c1, c2


def test_width_one_graph_input_gate_couples_nothing():
    proto, c1, c2 = _gated_by_graph_input()
    g = group_of(groups(proto), c1)
    assert g.frozen is None and g.feed_out == [c2]
    prune_and_check(proto, 0.5, fold="none")


def test_width_one_graph_input_gate_with_default_fold():
    proto, _, _ = _gated_by_graph_input()
    prune_and_check(proto, 0.5)


def test_scalar_bool_graph_input():
    """A rank-0 bool graph input: the oracle must feed it as an array."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    b.inputs.append(helper.make_tensor_value_info("t", TensorProto.BOOL, []))
    h = b.op("Mul", [h, b.op("Cast", ["t"], to=TensorProto.FLOAT)])
    y, _ = head(b, h, 8)
    prune_and_check(b.model([y]), 0.5, fold="none")


# =========================================================================================
# More canonicalisation: initializers listed as graph inputs, unnamed nodes
# =========================================================================================
def _initializers_as_inputs():
    """Old exporters (IR < 4) also list every initializer as a graph input."""
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    y, c2 = head(b, b.op("Relu", [h]), 8)
    for t in b.inits:
        b.inputs.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return b.model([y]), c1


def test_initializers_listed_as_graph_inputs_are_not_activations():
    proto, c1 = _initializers_as_inputs()
    ps = prunable(proto)
    assert len(ps) == 1 and ps[0].feed_in == [c1] and ps[0].width == 8
    assert frozen_reasons(proto).count("graph input") == 1


@pytest.mark.parametrize("ratio", RATIOS)
def test_initializers_listed_as_graph_inputs_prune(ratio):
    proto, c1 = _initializers_as_inputs()
    slim, _ = prune_and_check(proto, ratio)
    k = keep(8, ratio)
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in slim.graph.input}
    assert declared[node(slim, c1).input[1]] == [k, 3, 3, 3]
    assert param(slim, c1, 1).shape == (k, 3, 3, 3)


@pytest.mark.parametrize("ratio", RATIOS)
def test_unnamed_and_duplicate_node_names(ratio):
    b = GraphBuilder()
    h, c1 = stem(b, 8)
    h = b.op("Relu", [h])
    y, _ = head(b, h, 8)
    for n in b.nodes:
        n.name = "" if n.op_type == "Conv" else "same"
    proto = b.model([y])
    assert len(prunable(proto)) == 1
    prune_and_check(proto, ratio)


@pytest.mark.parametrize("case", ["same", "other"])
def test_normalize_expands_to_the_shape_of_the_tensor_it_divides(case):
    """torch's F.normalize(x, dim=-1) (Swin V2's cosine attention) exports as
    x / Expand(Clip(ReduceL2(x, keepdims)), Shape(x)): the run-time shape is x's own, so the
    channels stay prunable and the Expand follows them. Expanded to the shape of a tensor
    with other channels, it couples the two (both cut alike), still exact."""
    b = GraphBuilder()
    h, c1 = stem(b, 8, (1, 3, 10, 10))
    norm = b.op("Clip", [b.op("ReduceL2", [h], axes=[3], keepdims=1), b.floats(1e-12)])
    other = b.conv(h, 8, 8) if case == "other" else h
    h = b.op("Div", [other, b.op("Expand", [norm, b.op("Shape", [other])])])
    y, c2 = head(b, h, 8)
    proto = b.model([y])
    assert not any("Expand shape is computed at run time" in (g.frozen or "") for g in groups(proto))
    (g,) = [g for g in groups(proto) if c1 in g.feed_in]
    assert g.frozen is None and len(g.feed_in) == (2 if case == "other" else 1)   # coupled with `other`
    slim, _ = prune_and_check(proto, 0.5)
    assert param(slim, c2, 1).shape[1] == 4
