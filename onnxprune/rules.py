"""One rule per operator type: how channel identities flow through it.

A rule reads its inputs' channel maps and records, through the `Context`:
  - the channel map of each output (`ctx.out`, or `ctx.produce` for new channels),
  - identities that must be removed together (`ctx.unify`),
  - initializer axes that hold channels (`ctx.param`), so the rewrite can slice them,
  - attributes or shape constants that depend on the kept channels (`ctx.edit`).
Any assumption a rule cannot verify is a `require(...)` that freezes the node's channels.
Supporting a new operator means adding one function here and one test.
"""
from __future__ import annotations

import numpy as np
import onnx

from .couplings import BIAS, CHANNELWISE, FEED_IN, FEED_OUT, ChannelMap, Context, require

RULES: dict = {}


def rule(*op_types):
    def register(fn):
        for op in op_types:
            RULES[op] = fn
        return fn
    return register


def _input_map(node, ctx: Context, index: int = 0) -> ChannelMap:
    m = ctx.map(node.input[index])
    require(m is not None, f"input {index} carries no channels")
    return m


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axes(node, ctx: Context, input_index: int):
    """`axes` as an attribute (older opsets) or a constant input (newer opsets); None if absent."""
    axes = ctx.attr(node, "axes")
    if axes is None and len(node.input) > input_index and node.input[input_index]:
        value = ctx.const(node.input[input_index])
        require(value is not None, "axes are computed at run time")
        axes = value.tolist()
    return None if axes is None else [int(a) for a in np.atleast_1d(axes)]


def _set_input_constant(node, model, index: int, value: np.ndarray) -> None:
    """Give `node` its own copy of a shape constant: other nodes may share the original."""
    name = f"{node.name}__{index}_pruned"
    model.inits[name] = value
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def _set_attr(node, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


# -- pass-through: channel j of the output is channel j of the input ---------------------
ELEMENTWISE_UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu", "Abs", "Neg", "Exp", "Log",
    "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not",
    "Identity", "Cast", "IsNaN", "IsInf", "Shrink",
)


@rule(*ELEMENTWISE_UNARY)
def elementwise_unary(node, ctx):
    m = _input_map(node, ctx)
    ctx.out(node.output[0], m)


@rule("Dropout")
def dropout(node, ctx):
    m = _input_map(node, ctx)
    for o in node.output:  # the optional mask has the input's shape too
        ctx.out(o, m)


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
      "MaxRoiPool")
def pooling(node, ctx):
    m = _input_map(node, ctx)
    require(m.axis == 1, "pooling over a tensor whose channel axis is not 1")
    require(len(node.output) < 2 or not node.output[1] or not ctx.consumers.get(node.output[1]),
            "MaxPool indices encode the channel count")
    ctx.out(node.output[0], m)


@rule("BatchNormalization")
def batch_normalization(node, ctx):
    m = _input_map(node, ctx)
    require(m.axis == 1, "channel axis is not 1")
    require(all(not o or not ctx.consumers.get(o) for o in node.output[1:]),
            "training-mode statistics outputs are used")
    for i in range(1, 5):
        ctx.param(node, i, 0, m.ids, CHANNELWISE)
    ctx.out(node.output[0], m)


@rule("InstanceNormalization")
def instance_normalization(node, ctx):
    m = _input_map(node, ctx)
    require(m.axis == 1, "channel axis is not 1")
    ctx.param(node, 1, 0, m.ids, CHANNELWISE)
    ctx.param(node, 2, 0, m.ids, CHANNELWISE)
    ctx.out(node.output[0], m)


@rule("LayerNormalization")
def layer_normalization(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    first = _norm_axis(ctx.attr(node, "axis", -1), rank)
    require(all(not o or not ctx.consumers.get(o) for o in node.output[1:]),
            "mean / inverse std outputs are used")
    if m.axis >= first:
        # Every channel enters every output's mean and variance: none can be removed. The
        # output keeps the same channels, on the same axis, so the layers after it (the
        # Linear of a transformer or ConvNeXt MLP) are still analysed as channels-last.
        ctx.freeze(m.ids, f"LayerNormalization {node.name}: LayerNormalization normalises "
                          f"over the channel axis")
    ctx.out(node.output[0], m)


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    opset = next((o.version for o in ctx.model.opset_imports if o.domain in ("", "ai.onnx")), 13)
    axis = _norm_axis(ctx.attr(node, "axis", -1 if opset >= 13 else 1), rank)
    # Before opset 13 the op flattens every axis from `axis` on into one softmax.
    mixes = m.axis == axis if opset >= 13 else m.axis >= axis
    require(not mixes, f"{node.op_type} normalises across channels")
    ctx.out(node.output[0], m)


@rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def reduce(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    axes = _axes(node, ctx, 1)
    require(axes is not None and len(axes) > 0, "reduces over every axis, channels included")
    axes = sorted(_norm_axis(a, rank) for a in axes)
    require(m.axis not in axes, f"{node.op_type} reduces over the channel axis")
    keepdims = ctx.attr(node, "keepdims", 1)
    axis = m.axis if keepdims else m.axis - sum(a < m.axis for a in axes)
    ctx.out(node.output[0], ChannelMap(axis, m.ids))


@rule("Resize", "Upsample")
def resize(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    axes = ctx.attr(node, "axes")  # opset 18: scales and sizes list only these axes
    axes = list(range(rank)) if axes is None else [_norm_axis(a, rank) for a in axes]
    position = axes.index(m.axis) if m.axis in axes else None
    scales_index = 1 if node.op_type == "Upsample" else 2
    if len(node.input) > scales_index and node.input[scales_index]:
        scales = ctx.const(node.input[scales_index])
        require(scales is not None, "scales are computed at run time")
        require(scales.size == 0 or position is None or scales[position] == 1, "resizes along the channel axis")
    if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
        sizes = ctx.const(node.input[3])
        require(sizes is not None, "sizes are computed at run time")
        if position is not None:
            require(int(sizes[position]) == len(m.ids), "resizes along the channel axis")

            def update_sizes(n, model, kept, sizes=sizes, ids=m.ids, position=position):
                new = sizes.copy()
                new[position] = int(kept(ids).sum())
                _set_input_constant(n, model, 3, new)
            ctx.edit(node, update_sizes)
    ctx.out(node.output[0], m)


@rule("Pad")
def pad(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    pads = ctx.attr(node, "pads")
    if pads is None:
        value = ctx.const(node.input[1])
        require(value is not None, "pads are computed at run time")
        pads = value.tolist()
    axes = _axes(node, ctx, 3) if len(node.input) > 3 else None
    axes = [_norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    n = len(axes)
    for k, a in enumerate(axes):
        if a == m.axis:
            require(pads[k] == 0 and pads[k + n] == 0, "pads the channel axis")
    value = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    require(value is None or value.size <= 1, "per-channel pad value")
    ctx.out(node.output[0], m)


# -- unify: elementwise operators couple the channels at the same position ---------------
@rule("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Clip",
      "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Mod",
      "BitShift")
def elementwise(node, ctx):
    """Broadcasting elementwise op. An operand of channel width 1 couples nothing; a constant
    operand with one value per channel is a parameter to slice; two activation operands with
    the same channels are one class per position."""
    out_shape = ctx.shape(node.output[0])
    rank = len(out_shape)
    mapped = [(i, ctx.map(t)) for i, t in enumerate(node.input) if ctx.map(t) is not None]
    aligned = {i: m.axis + rank - len(ctx.shape(node.input[i])) for i, m in mapped}
    axes = {aligned[i] for i, m in mapped if len(m.ids) > 1}
    require(len(axes) <= 1, "operands carry channels on different axes")
    if not axes:  # only width-1 activations: the output's channels come from elsewhere
        axis = next(iter(aligned.values()))
        require(out_shape[axis] == 1, "channels created by broadcasting a constant")
        ctx.out(node.output[0], ChannelMap(axis, mapped[0][1].ids))
        return
    axis = axes.pop()
    width = out_shape[axis]
    full = [m for i, m in mapped if len(m.ids) == width and aligned[i] == axis]
    require(len(full) > 0, "channels created by broadcasting")
    ids = full[0].ids
    for i, t in enumerate(node.input):
        if not t:
            continue
        shape = ctx.shape(t)
        local = axis - (rank - len(shape))
        size = shape[local] if local >= 0 else 1
        require(size in (1, width), f"operand {t} has {size} entries on the channel axis, not 1 or {width}")
        m = ctx.map(t)
        if size == 1 or width == 1:
            continue  # a scalar or broadcast operand couples nothing
        if m is not None:
            require(m.axis == local, f"operand {t} carries its channels on another axis")
            if m is not ids:
                ctx.unify(ids, m.ids)
        else:
            require(ctx.const(t) is not None, f"operand {t} has one value per channel but is not a constant")
            ctx.param(node, i, local, ids, CHANNELWISE)
    ctx.out(node.output[0], ChannelMap(axis, ids))


# -- consume and produce: layers with weights --------------------------------------------
def _conv_inputs(node, ctx):
    """Input channel map, constant weight and group count of a Conv or ConvTranspose."""
    x = _input_map(node, ctx)
    w = ctx.const(node.input[1])
    require(w is not None, f"{node.op_type} weight is computed at run time")
    require(x.axis == 1, f"{node.op_type} input channel axis is not 1")
    return x, w, ctx.attr(node, "group", 1)


@rule("Conv")
def conv(node, ctx):
    x, w, group = _conv_inputs(node, ctx)
    c_in, c_out, per_group = len(x.ids), w.shape[0], w.shape[1]
    if group == 1:
        ctx.param(node, 1, 1, x.ids, FEED_OUT)
        out = ctx.produce(node, node.output[0], c_out, 1)
        ctx.param(node, 1, 0, out, FEED_IN)
        ctx.param(node, 2, 0, out, BIAS)
    elif per_group == 1 and group == c_in:
        # Depthwise: output channel o reads input channel o // multiplier only.
        out = np.repeat(x.ids, c_out // c_in)
        ctx.param(node, 1, 0, out, CHANNELWISE)
        ctx.param(node, 2, 0, out, CHANNELWISE)
        ctx.edit(node, lambda n, model, kept, ids=x.ids: _set_attr(n, "group", int(kept(ids).sum())))
        ctx.out(node.output[0], ChannelMap(1, out))
    else:
        # Grouped: every group must keep the same number of channels, so channel j of each
        # group is removed together (one class spans the groups).
        _unify_across_groups(ctx, x.ids, group)
        ctx.param(node, 1, 1, x.ids[:per_group], FEED_OUT)
        out = ctx.produce(node, node.output[0], c_out, 1)
        _unify_across_groups(ctx, out, group)
        ctx.param(node, 1, 0, out, FEED_IN)
        ctx.param(node, 2, 0, out, BIAS)


def _unify_across_groups(ctx, ids, group):
    rows = np.asarray(ids).reshape(group, -1)
    for r in rows[1:]:
        ctx.unify(rows[0], r)


@rule("ConvTranspose")
def conv_transpose(node, ctx):
    x, w, group = _conv_inputs(node, ctx)
    c_in, per_group_out = w.shape[0], w.shape[1]
    if group == 1:
        ctx.param(node, 1, 0, x.ids, FEED_OUT)
        out = ctx.produce(node, node.output[0], per_group_out, 1)
        ctx.param(node, 1, 1, out, FEED_IN)
        ctx.param(node, 2, 0, out, BIAS)
    else:
        require(group == c_in, "grouped ConvTranspose that is not depthwise")
        out = np.repeat(x.ids, per_group_out)
        ctx.param(node, 1, 0, x.ids, CHANNELWISE)
        ctx.param(node, 2, 0, out, CHANNELWISE)
        ctx.edit(node, lambda n, model, kept, ids=x.ids: _set_attr(n, "group", int(kept(ids).sum())))
        ctx.out(node.output[0], ChannelMap(1, out))


@rule("Gemm")
def gemm(node, ctx):
    a = _input_map(node, ctx)
    require(ctx.attr(node, "transA", 0) == 0 and a.axis == 1, "Gemm reads features on axis 0")
    w = ctx.const(node.input[1])
    require(w is not None, "Gemm weight is computed at run time")
    trans_b = ctx.attr(node, "transB", 0)
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    ctx.param(node, 1, k_axis, a.ids, FEED_OUT)
    out = ctx.produce(node, node.output[0], w.shape[n_axis], 1)
    ctx.param(node, 1, n_axis, out, FEED_IN)
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.const(node.input[2])
        require(bias is not None, "Gemm bias is computed at run time")
        if bias.ndim >= 1 and bias.shape[-1] == len(out) and len(out) > 1:
            ctx.param(node, 2, bias.ndim - 1, out, BIAS)


@rule("MatMul")
def matmul(node, ctx):
    a = _input_map(node, ctx, 0)
    b = ctx.map(node.input[1])
    if b is not None:
        _matmul_of_activations(node, ctx, a, b)
        return
    w = ctx.const(node.input[1])
    require(w is not None and w.ndim == 2, "MatMul weight is not a constant matrix")
    rank = len(ctx.shape(node.input[0]))
    require(rank >= 2, "MatMul of a vector")
    if a.axis != rank - 1:
        ctx.out(node.output[0], a)  # channels on a batch or row axis pass through
        return
    ctx.param(node, 1, 0, a.ids, FEED_OUT)
    out = ctx.produce(node, node.output[0], w.shape[1], rank - 1)
    ctx.param(node, 1, 1, out, FEED_IN)


def _matmul_of_activations(node, ctx, a, b):
    """Attention (Q.K^T, scores.V): a batched product of two activations. Channels on a batch
    axis of both operands (the heads, once a Reshape has split them off) are matched position
    by position, as by an elementwise op: head j of the output reads head j of each operand
    only. Channels on a row, column or contracted axis mix with the other operand: frozen."""
    sa, sb, so = ctx.shape(node.input[0]), ctx.shape(node.input[1]), ctx.shape(node.output[0])
    require(len(sa) >= 3 and len(sb) >= 3 and a.axis < len(sa) - 2 and b.axis < len(sb) - 2,
            "MatMul of two activations (attention) with channels on a matrix axis")
    axis = a.axis + len(so) - len(sa)
    require(axis == b.axis + len(so) - len(sb),
            "MatMul of two activations (attention) with channels on different batch axes")
    if len(a.ids) == len(b.ids):
        if len(a.ids) > 1 and a.ids is not b.ids:
            ctx.unify(a.ids, b.ids)
        ids = a.ids
    else:
        require(min(len(a.ids), len(b.ids)) == 1,
                f"MatMul of two activations (attention) with {len(a.ids)} and {len(b.ids)} heads")
        ids = a.ids if len(a.ids) > 1 else b.ids   # a single head is broadcast: couples nothing
    ctx.out(node.output[0], ChannelMap(axis, ids))


# -- concatenate, split, slice -----------------------------------------------------------
@rule("Concat")
def concat(node, ctx):
    rank = len(ctx.shape(node.output[0]))
    axis = _norm_axis(ctx.attr(node, "axis"), rank)
    maps = [ctx.map(t) for t in node.input]
    channel_axes = {m.axis for m in maps if m is not None}
    require(len(channel_axes) == 1, "inputs carry channels on different axes")
    channel_axis = channel_axes.pop()
    if axis == channel_axis:
        parts = []
        for t, m in zip(node.input, maps):
            if m is None:  # a constant block of channels: kept as it is
                ids = ctx.fresh(ctx.shape(t)[axis])
                ctx.freeze(ids, "constant input of Concat")
                parts.append(ids)
            else:
                parts.append(m.ids)
        ctx.out(node.output[0], ChannelMap(axis, np.concatenate(parts)))
        return
    require(all(m is not None for m in maps), "Concat of a constant along a non-channel axis")
    for m in maps[1:]:
        ctx.unify(maps[0].ids, m.ids)
    ctx.out(node.output[0], maps[0])


@rule("Split")
def split(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    axis = _norm_axis(ctx.attr(node, "axis", 0), rank)
    if axis != m.axis:
        for o in node.output:
            ctx.out(o, m)
        return
    sizes = [ctx.shape(o)[axis] for o in node.output]
    bounds = np.cumsum([0] + sizes)
    segments = [m.ids[bounds[k]:bounds[k + 1]] for k in range(len(sizes))]
    for o, seg in zip(node.output, segments):
        ctx.out(o, ChannelMap(axis, seg))
        ctx.segment(node, seg)

    def update_split(n, model, kept, segments=segments):
        new = np.array([int(kept(s).sum()) for s in segments], dtype=np.int64)
        opset = next((o.version for o in model.opset_imports if o.domain in ("", "ai.onnx")), 13)
        if opset >= 13:
            _set_input_constant(n, model, 1, new)
            for a in list(n.attribute):
                if a.name == "num_outputs":
                    n.attribute.remove(a)
        else:
            _set_attr(n, "split", new.tolist())
    ctx.edit(node, update_split)


@rule("Slice")
def slice_(node, ctx):
    m = _input_map(node, ctx)
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    consts = [ctx.const(t) if len(node.input) > i and node.input[i] else None
              for i, t in enumerate(list(node.input) + [""] * 5) if 1 <= i <= 4]
    starts, ends, axes, steps = consts
    if (starts is None or ends is None) and axes is not None and np.size(axes) == 1:
        # Bounds computed from static shapes (torch exports `chunk` as Shape -> Gather -> Add
        # -> Div -> Mul -> Slice): evaluated here; a cut of the channel axis writes them back
        # as constants (update_bounds), and the Shape rule checked nothing else reads them.
        starts = starts if starts is not None else _shape_value(node.input[1], ctx)
        ends = ends if ends is not None else _shape_value(node.input[2], ctx)
    require(starts is not None and ends is not None, "Slice bounds are computed at run time")
    require(len(node.input) <= 3 or not node.input[3] or axes is not None, "Slice axes computed at run time")
    require(len(node.input) <= 4 or not node.input[4] or steps is not None, "Slice steps computed at run time")
    axes = list(range(len(starts))) if axes is None else [_norm_axis(int(a), rank) for a in axes]
    if m.axis not in axes:
        ctx.out(node.output[0], m)
        return
    k = axes.index(m.axis)
    step = 1 if steps is None else int(steps[k])
    require(step == 1, "Slice of the channel axis with a step other than 1")
    start, stop, _ = slice(int(starts[k]), int(ends[k])).indices(shape[m.axis])
    ctx.out(node.output[0], ChannelMap(m.axis, m.ids[start:stop]))
    ctx.segment(node, m.ids[start:stop])

    def update_bounds(n, model, kept, k=k, start=start, stop=stop, ids=m.ids,
                      starts=starts, ends=ends):
        mask = kept(ids)
        new_starts, new_ends = starts.copy(), ends.copy()
        new_starts[k] = int(mask[:start].sum())
        new_ends[k] = new_starts[k] + int(mask[start:stop].sum())
        _set_input_constant(n, model, 1, new_starts)
        _set_input_constant(n, model, 2, new_ends)
    ctx.edit(node, update_bounds)


# -- reshaping: flatten C×H×W into features, squeeze, transpose --------------------------
@rule("Flatten")
def flatten(node, ctx):
    m = _input_map(node, ctx)
    shape = ctx.shape(node.input[0])
    axis = _norm_axis(ctx.attr(node, "axis", 1), len(shape))
    require(axis == m.axis == 1 or (axis > m.axis and all(d == 1 for d in shape[m.axis + 1:axis])),
            "Flatten merges channels with the batch axis")
    per_channel = int(np.prod(shape[m.axis + 1:])) if axis <= m.axis + 1 else 1
    if axis == 1:
        ctx.out(node.output[0], ChannelMap(1, np.repeat(m.ids, per_channel)))
    else:
        require(all(d == 1 for d in shape[:m.axis]), "Flatten of a batched channel axis")
        ctx.out(node.output[0], ChannelMap(0, m.ids))


@rule("Reshape")
def reshape(node, ctx):
    m = _input_map(node, ctx)
    src, dst = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    a, width = m.axis, len(m.ids)
    require(tuple(src[:a]) == tuple(dst[:a]), "Reshape changes the axes before the channel axis")
    target = _static_target(node, ctx)
    require(len(dst) > a, "Reshape removes the channel axis")
    src_rest, dst_rest = int(np.prod(src[a + 1:])), int(np.prod(dst[a + 1:]))
    # Row-major: entry (c, q) of [channel, rest] is flat c * src_rest + q in both tensors.
    if dst[a] % width == 0 and src_rest == dst[a] // width * dst_rest:
        # merge: channel c owns entries c*r .. c*r+r-1 of the new axis. r = 1: trailing dims
        # regrouped (squeeze-like); r = H*W: flatten C×H×W into features; r = g: the last
        # Reshape of a channel shuffle, or heads merged back into features.
        ids = np.repeat(m.ids, dst[a] // width)
    elif width % dst[a] == 0 and dst_rest == width // dst[a] * src_rest:
        # split: new channel i holds old channels i*b .. i*b+b-1, b = width // dst[a]
        block = width // dst[a]
        rows = m.ids.reshape(dst[a], block)
        if len(dst) > a + 1 and block % dst[a + 1] == 0 and (
                (dst[a + 1] == block and (dst[a] == 1 or _feeds_channel_shuffle(node, ctx, a)))
                or _feeds_unbind(node, ctx, a)):
            _split_into_groups(node, ctx, target, rows, dst[a + 1])
            return
        # Heads (or features back into channels): the block is removed whole, so one class
        # per block; the axis after the channel axis then carries no channel information.
        for j in range(1, block):
            differ = rows[:, j] != rows[:, 0]
            if differ.any():
                ctx.unify(rows[differ, 0], rows[differ, j])
        ids = rows[:, 0]
    else:
        require(False, "Reshape regroups channels with other axes")
    require(target[a] != 0 or dst[a] == src[a], "Reshape copies a dimension into the channel axis")
    require(target[a] != -2, "Reshape takes the channel count from another tensor's shape")
    require(target[a] < 0 or ctx.const(node.input[1]) is not None,
            "Reshape target with a literal channel count is computed at run time")

    def update_target(n, model, kept, ids=m.ids, a=a, target=target):
        if target[a] <= 0:
            return  # -1 and 0 follow the input by themselves
        new = np.array(target, dtype=np.int64)
        new[a] = int(kept(ids).sum()) * target[a] // len(ids)
        _set_input_constant(n, model, 1, new)
    ctx.edit(node, update_target)
    ctx.out(node.output[0], ChannelMap(a, ids))


def _feeds_channel_shuffle(node, ctx, a) -> bool:
    """The Reshape output is read only by Transposes that swap axes a and a + 1: a channel
    shuffle ([N, g, C/g, H, W] -> [N, C/g, g, H, W]), to be merged back by a Reshape."""
    users = ctx.consumers.get(node.output[0], [])
    for user, index in users:
        perm = ctx.attr(user, "perm") if user.op_type == "Transpose" else None
        if perm is None or len(perm) < a + 2 or perm[a] != a + 1 or perm[a + 1] != a:
            return False
    return bool(users)


def _feeds_unbind(node, ctx, a) -> bool:
    """The Reshape output is read only by Transposes that move axis a to the front, and those
    only by Split / Gather / Slice of that axis: a fused projection taken apart (timm attention:
    qkv [B, T, 3, h, hd] -> [3, B, h, T, hd] -> unbind(0) into q, k, v)."""
    users = ctx.consumers.get(node.output[0], [])
    for user, index in users:
        perm = ctx.attr(user, "perm") if user.op_type == "Transpose" else None
        if a == 0 or perm is None or perm[0] != a:
            return False
        parts = ctx.consumers.get(user.output[0], [])
        for part, i in parts:
            if part.op_type in ("Split", "Gather"):
                axis = ctx.attr(part, "axis", 0)
            elif part.op_type == "Slice" and len(part.input) > 3 and ctx.const(part.input[3]) is not None:
                axes = ctx.const(part.input[3]).reshape(-1)
                axis = int(axes[0]) if axes.size == 1 else None
            else:
                return False
            if i != 0 or axis not in (0, -len(perm)):
                return False
        if not parts:
            return False
    return bool(users)


def _split_into_groups(node, ctx, target, rows, k):
    """[.., g*k*inner, ..] -> [.., g, k, inner.., ..] read as g groups (shuffle groups; the q, k
    and v of a fused projection; g = 1: an inserted unit axis) of the same k channels (heads
    when inner > 1). Channel j of every group is one class, and so is each block of `inner`
    (a head is removed whole): every group keeps the same positions, so the pruned tensor
    still splits into g equal groups and a shuffle that follows interleaves exactly the kept
    channels. The channels move to axis a + 1; axis a keeps its size g."""
    a = ctx.map(node.input[0]).axis
    require(target[a + 1] != 0, "Reshape copies a dimension into the channel axis")
    require(target[a + 1] != -2, "Reshape takes the channel count from another tensor's shape")
    require(target[a + 1] < 0 or ctx.const(node.input[1]) is not None,
            "Reshape target with a literal channel count is computed at run time")
    rows = rows.reshape(rows.shape[0], k, -1)
    for r in rows[1:]:
        ctx.unify(rows[0].reshape(-1), r.reshape(-1))
    for j in range(1, rows.shape[2]):
        ctx.unify(rows[0, :, 0], rows[0, :, j])
    ids = rows[0, :, 0]

    def update_target(n, model, kept, ids=ids, a=a, target=target):
        if target[a + 1] <= 0:
            return  # -1 follows the input by itself
        new = np.array(target, dtype=np.int64)
        new[a + 1] = int(kept(ids).sum())
        _set_input_constant(n, model, 1, new)
    ctx.edit(node, update_target)
    ctx.out(node.output[0], ChannelMap(a + 1, ids))


def _static_target(node, ctx) -> list[int]:
    """The Reshape target as written: literal entries, with -1 kept as -1. A target computed
    at run time is accepted when each entry can be traced (Concat of constants and input dims)."""
    value = ctx.const(node.input[1])
    if value is not None:
        return [int(v) for v in value]
    entries = _trace_shape_entries(node.input[1], ctx)
    require(entries is not None, "Reshape target is computed at run time")
    return entries


def _trace_shape_entries(tensor, ctx, depth=0):
    """Entries of a run-time shape vector: ints for constants, 0-like markers (-2) for values
    read from another tensor's shape at a non-channel axis. None when not traceable."""
    value = ctx.const(tensor)
    if value is not None:
        return [int(v) for v in np.atleast_1d(value)]
    producer = ctx.model.producers().get(tensor) if depth < 6 else None
    if producer is None:
        return None
    if producer.op_type == "Concat":
        parts = [_trace_shape_entries(t, ctx, depth + 1) for t in producer.input]
        return None if any(p is None for p in parts) else sum(parts, [])
    if producer.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return _trace_shape_entries(producer.input[0], ctx, depth + 1)
    if producer.op_type == "Gather":
        shape_node = ctx.model.producers().get(producer.input[0])
        index = ctx.const(producer.input[1])
        if shape_node is not None and shape_node.op_type == "Shape" and index is not None:
            source = ctx.map(shape_node.input[0])
            idx = [int(i) for i in np.atleast_1d(index)]
            if source is not None and source.axis in idx:
                return None  # reads the channel count: the target would not follow
            return [-2] * len(idx)
    return None


@rule("Squeeze", "Unsqueeze")
def squeeze(node, ctx):
    m = _input_map(node, ctx)
    in_rank, out_rank = len(ctx.shape(node.input[0])), len(ctx.shape(node.output[0]))
    axes = _axes(node, ctx, 1)
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(ctx.shape(node.input[0])) if d == 1]
        axes = [_norm_axis(x, in_rank) for x in axes]
        require(m.axis not in axes, "squeezes the channel axis")
        axis = m.axis - sum(x < m.axis for x in axes)
    else:
        require(axes is not None, "Unsqueeze without axes")
        axis = m.axis
        for x in sorted(_norm_axis(x, out_rank) for x in axes):
            if x <= axis:
                axis += 1
    ctx.out(node.output[0], ChannelMap(axis, m.ids))


@rule("Transpose")
def transpose(node, ctx):
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    perm = ctx.attr(node, "perm", list(range(rank))[::-1])
    ctx.out(node.output[0], ChannelMap(list(perm).index(m.axis), m.ids))


@rule("Gather")
def gather(node, ctx):
    m = _input_map(node, ctx)
    require(ctx.map(node.input[1]) is None, "Gather indices carry channels")
    rank = len(ctx.shape(node.input[0]))
    axis = _norm_axis(ctx.attr(node, "axis", 0), rank)
    require(axis != m.axis, "Gather selects channels")
    indices_rank = len(ctx.shape(node.input[1]))
    ctx.out(node.output[0], ChannelMap(m.axis + (indices_rank - 1 if axis < m.axis else 0), m.ids))


@rule("Expand")
def expand(node, ctx):
    m = _input_map(node, ctx)
    src, dst = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    axis = m.axis + len(dst) - len(src)
    require(dst[axis] == len(m.ids), "Expand repeats channels")
    target = ctx.const(node.input[1])
    require(target is not None, "Expand shape is computed at run time")
    position = axis - (len(dst) - len(target))
    if position >= 0 and target[position] == len(m.ids) and len(m.ids) > 1:
        def update_shape(n, model, kept, ids=m.ids, target=target, position=position):
            new = target.copy()
            new[position] = int(kept(ids).sum())
            _set_input_constant(n, model, 1, new)
        ctx.edit(node, update_shape)
    ctx.out(node.output[0], ChannelMap(axis, m.ids))


@rule("Tile")
def tile(node, ctx):
    m = _input_map(node, ctx)
    repeats = ctx.const(node.input[1])
    require(repeats is not None, "Tile repeats are computed at run time")
    require(int(repeats[m.axis]) == 1, "Tile repeats channels")
    ctx.out(node.output[0], m)


@rule("Shape")
def shape(node, ctx):
    """Shape is harmless unless someone reads the channel count from it."""
    m = _input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    start = _norm_axis(ctx.attr(node, "start", 0), rank)
    end = ctx.attr(node, "end", rank)
    end = min(rank, _norm_axis(end, rank))
    if not start <= m.axis < end:
        return
    for user, _ in ctx.consumers.get(node.output[0], []):
        index = ctx.const(user.input[1]) if user.op_type == "Gather" and len(user.input) > 1 else None
        read = [i + (end - start) if i < 0 else i for i in np.atleast_1d(index).tolist()] \
            if index is not None else []
        if index is not None and ctx.attr(user, "axis", 0) == 0 and m.axis - start not in read:
            continue  # reads other dimensions only
        # The count may only be used to cut this very tensor along its channels (torch's
        # `chunk`): the Slice rule replaces those bounds by constants, the stale count dies.
        require(user.op_type in _SHAPE_ARITHMETIC and all(
                    _only_channel_slice_bounds(o, node.input[0], m.axis, ctx) for o in user.output if o),
                "the channel count is read at run time")


_SHAPE_ARITHMETIC = ("Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity",
                     "Add", "Sub", "Mul", "Div")


def _only_channel_slice_bounds(tensor, source, axis, ctx, depth=0) -> bool:
    """Every use of `tensor` (an integer value computed from the shape of `source`) ends,
    through shape arithmetic, as the start or end of a Slice of `source` along `axis` alone."""
    users = ctx.consumers.get(tensor, [])
    if depth > 16 or not users or tensor in ctx.model.output_names:
        return False
    for user, index in users:
        if user.domain not in ("", "ai.onnx"):
            return False
        if user.op_type == "Slice" and index in (1, 2) and user.input[0] == source:
            axes = ctx.const(user.input[3]) if len(user.input) > 3 and user.input[3] else None
            if axes is None or axes.size != 1 or \
                    _norm_axis(int(axes.reshape(-1)[0]), len(ctx.shape(source))) != axis:
                return False
        elif user.op_type in _SHAPE_ARITHMETIC and (index == 0 or user.op_type in
                                                    ("Concat", "Add", "Sub", "Mul", "Div")):
            if not all(_only_channel_slice_bounds(o, source, axis, ctx, depth + 1)
                       for o in user.output if o):
                return False
        else:
            return False
    return True


def _shape_value(tensor, ctx, depth=0):
    """The value of a small integer tensor computed from constants and static shapes by the
    operators of _SHAPE_ARITHMETIC (and Shape); None when anything else takes part."""
    value = ctx.const(tensor)
    if value is not None:
        return np.asarray(value)
    node = ctx.model.producers().get(tensor) if depth < 16 else None
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        dims = np.asarray(ctx.shape(node.input[0]), dtype=np.int64)
        start, end = ctx.attr(node, "start", 0), ctx.attr(node, "end", len(dims))
        return dims[start:end]
    if node.op_type not in _SHAPE_ARITHMETIC:
        return None
    ins = [_shape_value(t, ctx, depth + 1) if t else None for t in node.input]
    op = node.op_type
    if ins[0] is None or (op in ("Gather", "Add", "Sub", "Mul", "Div") and ins[1] is None):
        return None
    x = ins[0]
    if op in ("Identity", "Cast"):
        return x if op == "Identity" else x.astype(onnx.helper.tensor_dtype_to_np_dtype(ctx.attr(node, "to")))
    if op == "Gather":
        return np.take(x, ins[1].astype(np.int64), axis=ctx.attr(node, "axis", 0))
    if op in ("Add", "Sub", "Mul"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x, ins[1])
    if op == "Div":
        y = ins[1]
        if x.dtype.kind in "iu" and y.dtype.kind in "iu":  # integer Div truncates toward zero
            return (np.sign(x) * np.sign(y) * (np.abs(x) // np.abs(y))).astype(np.result_type(x, y))
        return x / y
    if op == "Concat":
        if any(v is None for v in ins):
            return None
        return np.concatenate([np.atleast_1d(v) for v in ins], axis=ctx.attr(node, "axis", 0))
    axes = ctx.attr(node, "axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = ins[1].tolist()
    if op == "Unsqueeze":
        return None if axes is None else np.expand_dims(x, tuple(int(a) for a in np.atleast_1d(axes)))
    if op == "Squeeze":
        return np.squeeze(x) if axes is None else np.squeeze(x, tuple(int(a) for a in np.atleast_1d(axes)))
    if op == "Slice":
        if any(v is None for v in ins[1:3]) or any(t and v is None for t, v in zip(node.input[3:], ins[3:])):
            return None
        axes_ = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(ins[1])))
        steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(axes_)
        index = [slice(None)] * x.ndim
        for k, a in enumerate(axes_):
            index[a] = slice(int(ins[1][k]), int(ins[2][k]), int(steps[k]))
        return x[tuple(index)]
    return None

