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
    require(m.axis < first, "LayerNormalization normalises over the channel axis")
    require(all(not o or not ctx.consumers.get(o) for o in node.output[1:]),
            "mean / inverse std outputs are used")
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
@rule("Conv")
def conv(node, ctx):
    x = _input_map(node, ctx)
    w = ctx.const(node.input[1])
    require(w is not None, "Conv weight is computed at run time")
    require(x.axis == 1, "Conv input channel axis is not 1")
    group = ctx.attr(node, "group", 1)
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
    x = _input_map(node, ctx)
    w = ctx.const(node.input[1])
    require(w is not None, "ConvTranspose weight is computed at run time")
    require(x.axis == 1, "ConvTranspose input channel axis is not 1")
    group = ctx.attr(node, "group", 1)
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
    require(ctx.map(node.input[1]) is None, "MatMul of two activations (attention)")
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
    if dst[a] == width and src_rest == dst_rest:
        ids = m.ids                                  # trailing dims regrouped (squeeze-like)
    elif dst[a] == width * src_rest and dst_rest == 1:
        ids = np.repeat(m.ids, src_rest)             # flatten C×H×W into features
    elif width == dst[a] * dst_rest and _blocks_constant(m.ids, dst[a]):
        ids = m.ids[::dst_rest]                      # unflatten features back into channels
    else:
        require(False, "Reshape regroups channels (channel shuffle or heads)")
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


def _blocks_constant(ids, blocks) -> bool:
    rows = np.asarray(ids).reshape(blocks, -1)
    return bool((rows == rows[:, :1]).all())


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
        require(index is not None and ctx.attr(user, "axis", 0) == 0 and m.axis - start not in read,
                "the channel count is read at run time")

