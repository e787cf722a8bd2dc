"""Concatenate, split and slice: along the channel axis, the output's channel list is the
concatenation or a sub-range of the inputs' lists (each part keeps at least one channel,
and the Split sizes / Slice bounds are rewritten); along other axes, channels pass."""
from __future__ import annotations

import numpy as np

from ..channels import CHANNELWISE, ChannelMap, input_map, norm_axis, require
from ..graph import attr, opset_version, set_attr, set_input_constant
from .shape_values import shape_value, trace_shape_entries
from .spec import STRUCTURAL, op


@op("Concat", bound=STRUCTURAL)
def concat(node, ctx):
    rank = len(ctx.shape(node.output[0]))
    axis = norm_axis(attr(node, "axis"), rank)
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
    # Along another axis (tokens: a class token in front of the patches), every operand
    # carries the same channels on the channel axis; a constant operand is cut with them.
    ids = next(m.ids for m in maps if m is not None)
    for i, (t, m) in enumerate(zip(node.input, maps)):
        if m is None:
            # torchvision's class token with a symbolic batch: expand(n, -1, -1) of a constant
            expanded = expanded_constant(t, channel_axis, ctx)
            if expanded is not None:
                ctx.param(expanded[0], 0, expanded[1], ids, CHANNELWISE)
                continue
            require(ctx.const(t) is not None, "Concat of a computed value along a non-channel axis")
            ctx.param(node, i, channel_axis, ids, CHANNELWISE)
        elif m.ids is not ids:
            ctx.unify(ids, m.ids)
    ctx.out(node.output[0], ChannelMap(channel_axis, ids))


def expanded_constant(tensor, axis, ctx):
    """(Expand node, axis of its data) when `tensor` is only a constant broadcast over axes
    other than `axis` (sizes computed at run time, e.g. from the batch, with 1 at `axis`) and
    read by one node: cutting the constant on that axis cuts `tensor` the same way."""
    node = ctx.index.producers.get(tensor)
    if node is None or node.op_type != "Expand" or len(ctx.consumers.get(tensor, [])) != 1:
        return None
    data, rank = ctx.const(node.input[0]), len(ctx.shape(tensor))
    sizes = trace_shape_entries(node.input[1], ctx)
    if data is None or sizes is None or axis - (rank - data.ndim) < 0:
        return None
    entry = axis - (rank - len(sizes))
    if entry >= 0 and sizes[entry] != 1:   # any other size repeats or counts the channels
        return None
    return node, axis - (rank - data.ndim)


@op("Split", bound=STRUCTURAL)
def split(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    axis = norm_axis(attr(node, "axis", 0), rank)
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
        opset = opset_version(model.opset_imports)
        if opset >= 13:
            set_input_constant(n, model, 1, new)
            for a in list(n.attribute):
                if a.name == "num_outputs":
                    n.attribute.remove(a)
        else:
            set_attr(n, "split", new.tolist())
    ctx.edit(node, update_split)


@op("Slice", bound=STRUCTURAL)
def slice_(node, ctx):
    m = input_map(node, ctx)
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    consts = [ctx.const(t) if len(node.input) > i and node.input[i] else None
              for i, t in enumerate(list(node.input) + [""] * 5) if 1 <= i <= 4]
    starts, ends, axes, steps = consts
    if (starts is None or ends is None) and axes is not None and np.size(axes) == 1:
        # Bounds computed from static shapes (torch exports `chunk` as Shape -> Gather -> Add
        # -> Div -> Mul -> Slice): evaluated here; a cut of the channel axis writes them back
        # as constants (update_bounds), and the Shape rule checked nothing else reads them.
        starts = starts if starts is not None else shape_value(node.input[1], ctx)
        ends = ends if ends is not None else shape_value(node.input[2], ctx)
    require(starts is not None and ends is not None, "Slice bounds are computed at run time")
    require(len(node.input) <= 3 or not node.input[3] or axes is not None, "Slice axes computed at run time")
    require(len(node.input) <= 4 or not node.input[4] or steps is not None, "Slice steps computed at run time")
    axes = list(range(len(starts))) if axes is None else [norm_axis(int(a), rank) for a in axes]
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
        set_input_constant(n, model, 1, new_starts)
        set_input_constant(n, model, 2, new_ends)
    ctx.edit(node, update_bounds)
