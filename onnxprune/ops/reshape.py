"""Reshaping: Flatten and Reshape (flatten C×H×W into features, split heads or shuffle
groups off the channel axis, merge them back), Squeeze/Unsqueeze, Transpose, Gather on
other axes, Expand, Tile, and Shape (harmless unless the channel count is read)."""
from __future__ import annotations

import numpy as np

from ..channels import ChannelMap, const_axes, input_map, norm_axis, require
from ..graph import attr, set_input_constant
from .shape_values import SHAPE_ARITHMETIC, only_channel_slice_bounds, trace_shape_entries
from .spec import STRUCTURAL, op


@op("Flatten", bound=STRUCTURAL)
def flatten(node, ctx):
    m = input_map(node, ctx)
    shape = ctx.shape(node.input[0])
    axis = norm_axis(attr(node, "axis", 1), len(shape))
    require(axis == m.axis == 1 or (axis > m.axis and all(d == 1 for d in shape[m.axis + 1:axis])),
            "Flatten merges channels with the batch axis")
    per_channel = int(np.prod(shape[m.axis + 1:])) if axis <= m.axis + 1 else 1
    if axis == 1:
        ctx.out(node.output[0], ChannelMap(1, np.repeat(m.ids, per_channel)))
    else:
        require(all(d == 1 for d in shape[:m.axis]), "Flatten of a batched channel axis")
        ctx.out(node.output[0], ChannelMap(0, m.ids))


@op("Reshape", bound=STRUCTURAL)
def reshape(node, ctx):
    m = input_map(node, ctx)
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
        set_input_constant(n, model, 1, new)
    ctx.edit(node, update_target)
    ctx.out(node.output[0], ChannelMap(a, ids))


def _feeds_channel_shuffle(node, ctx, a) -> bool:
    """The Reshape output is read only by Transposes that swap axes a and a + 1: a channel
    shuffle ([N, g, C/g, H, W] -> [N, C/g, g, H, W]), to be merged back by a Reshape."""
    users = ctx.consumers.get(node.output[0], [])
    for user, index in users:
        perm = attr(user, "perm") if user.op_type == "Transpose" else None
        if perm is None or len(perm) < a + 2 or perm[a] != a + 1 or perm[a + 1] != a:
            return False
    return bool(users)


def _feeds_unbind(node, ctx, a) -> bool:
    """The Reshape output is read only by Transposes that move axis a to the front, and those
    only by Split / Gather / Slice of that axis: a fused projection taken apart (timm attention:
    qkv [B, T, 3, h, hd] -> [3, B, h, T, hd] -> unbind(0) into q, k, v)."""
    users = ctx.consumers.get(node.output[0], [])
    for user, index in users:
        perm = attr(user, "perm") if user.op_type == "Transpose" else None
        if a == 0 or perm is None or perm[0] != a:
            return False
        parts = ctx.consumers.get(user.output[0], [])
        for part, i in parts:
            if part.op_type in ("Split", "Gather"):
                axis = attr(part, "axis", 0)
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
        set_input_constant(n, model, 1, new)
    ctx.edit(node, update_target)
    ctx.out(node.output[0], ChannelMap(a + 1, ids))


def _static_target(node, ctx) -> list[int]:
    """The Reshape target as written: literal entries, with -1 kept as -1. A target computed
    at run time is accepted when each entry can be traced (Concat of constants and input dims)."""
    value = ctx.const(node.input[1])
    if value is not None:
        return [int(v) for v in value]
    entries = trace_shape_entries(node.input[1], ctx)
    require(entries is not None, "Reshape target is computed at run time")
    return entries


@op("Squeeze", "Unsqueeze", bound=STRUCTURAL)
def squeeze(node, ctx):
    m = input_map(node, ctx)
    in_rank, out_rank = len(ctx.shape(node.input[0])), len(ctx.shape(node.output[0]))
    axes = const_axes(node, ctx, 1)
    if node.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(ctx.shape(node.input[0])) if d == 1]
        axes = [norm_axis(x, in_rank) for x in axes]
        require(m.axis not in axes, "squeezes the channel axis")
        axis = m.axis - sum(x < m.axis for x in axes)
    else:
        require(axes is not None, "Unsqueeze without axes")
        axis = m.axis
        for x in sorted(norm_axis(x, out_rank) for x in axes):
            if x <= axis:
                axis += 1
    ctx.out(node.output[0], ChannelMap(axis, m.ids))


@op("Transpose", bound=STRUCTURAL)
def transpose(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    perm = attr(node, "perm", list(range(rank))[::-1])
    ctx.out(node.output[0], ChannelMap(list(perm).index(m.axis), m.ids))


@op("Gather", bound=STRUCTURAL)
def gather(node, ctx):
    m = input_map(node, ctx)
    require(ctx.map(node.input[1]) is None, "Gather indices carry channels")
    rank = len(ctx.shape(node.input[0]))
    axis = norm_axis(attr(node, "axis", 0), rank)
    require(axis != m.axis, "Gather selects channels")
    indices_rank = len(ctx.shape(node.input[1]))
    ctx.out(node.output[0], ChannelMap(m.axis + (indices_rank - 1 if axis < m.axis else 0), m.ids))


@op("Expand", bound=STRUCTURAL)
def expand(node, ctx):
    m = input_map(node, ctx)
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
            set_input_constant(n, model, 1, new)
        ctx.edit(node, update_shape)
    ctx.out(node.output[0], ChannelMap(axis, m.ids))


@op("Tile", bound=STRUCTURAL)
def tile(node, ctx):
    m = input_map(node, ctx)
    repeats = ctx.const(node.input[1])
    require(repeats is not None, "Tile repeats are computed at run time")
    require(int(repeats[m.axis]) == 1, "Tile repeats channels")
    ctx.out(node.output[0], m)


@op("Shape", bound=STRUCTURAL)
def shape(node, ctx):
    """Shape is harmless unless someone reads the channel count from it."""
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    start = norm_axis(attr(node, "start", 0), rank)
    end = attr(node, "end", rank)
    end = min(rank, norm_axis(end, rank))
    if not start <= m.axis < end:
        return
    for user, _ in ctx.consumers.get(node.output[0], []):
        index = ctx.const(user.input[1]) if user.op_type == "Gather" and len(user.input) > 1 else None
        read = [i + (end - start) if i < 0 else i for i in np.atleast_1d(index).tolist()] \
            if index is not None else []
        if index is not None and attr(user, "axis", 0) == 0 and m.axis - start not in read:
            continue  # reads other dimensions only
        # The count may only be used to cut this very tensor along its channels (torch's
        # `chunk`): the Slice rule replaces those bounds by constants, the stale count dies.
        require(user.op_type in SHAPE_ARITHMETIC and all(
                    only_channel_slice_bounds(o, node.input[0], m.axis, ctx) for o in user.output if o),
                "the channel count is read at run time")
