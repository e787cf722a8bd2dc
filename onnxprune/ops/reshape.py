"""Reshaping: Flatten and Reshape (flatten C×H×W into features, split heads or shuffle
groups off the channel axis, merge them back, heads merged with the batch axis; targets
computed from Shape, rewritten by reshape_target.py), Squeeze/Unsqueeze, Transpose, Gather
on other axes, Expand, Tile, and Shape (harmless unless the channel count is read)."""
from __future__ import annotations

import numpy as np

from ..channels import ChannelMap, const_axes, input_map, norm_axis, require
from ..graph import attr, set_input_constant
from .reshape_target import count_read_follows, counts_channels, edit_count, static_target
from .shape_values import (OTHER_DIM, SHAPE_ARITHMETIC, dims_read, only_channel_slice_bounds,
                           only_copied_into_reshapes)
from .spec import STRUCTURAL, op


OTHER_DIM_REASON = ("Reshape sizes the channel axis from other dimensions read at run time (only the "
                    "batch times a literal count is rewritten)")


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
    target = static_target(node, ctx)
    q, batch = _channel_axis_in_output(src, dst, a)
    per = dst[q] // batch                   # entries of the new channel axis per batch entry
    src_rest, dst_rest = int(np.prod(src[a + 1:])), int(np.prod(dst[q + 1:]))
    # Row-major: entry (c, r) of [channel, rest] is flat c * src_rest + r in both tensors.
    if per % width == 0 and src_rest == per // width * dst_rest:
        # merge: channel c owns entries c*r .. c*r+r-1 of the new axis. r = 1: trailing dims
        # regrouped (squeeze-like); r = H*W: flatten C×H×W into features; r = g: the last
        # Reshape of a channel shuffle, or heads merged back into features.
        ids = np.repeat(m.ids, per // width)
    elif width % per == 0 and dst_rest == width // per * src_rest:
        # split: new channel i holds old channels i*b .. i*b+b-1, b = width // per
        block = width // per
        rows = m.ids.reshape(per, block)
        if batch == 1 and len(dst) > q + 1 and block % dst[q + 1] == 0 and (
                (dst[q + 1] == block and (per == 1 or (rows == rows[0]).all()
                                          or _feeds_channel_shuffle(node, ctx, q)))
                or _axis_taken_apart(node.output[0], q, ctx)):
            _split_into_groups(node, ctx, target, rows, q)
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
    # (T, B, E) -> (T, B*heads, hd): the batch entries merged in front hold the same channels
    ids = np.tile(ids, batch)
    require(target[q] != 0 or (q == a and dst[q] == src[a]), "Reshape copies a dimension into the channel axis")
    require(all(t != 0 or i != a for i, t in enumerate(target) if i != q),
            "Reshape copies the channel count into another axis")
    require(target[q] != OTHER_DIM, OTHER_DIM_REASON)
    follows = count_read_follows(node, ctx, q, ids)
    if counts_channels(target[q]) and not follows:   # -1 (and a copied 0) follow the input by themselves
        edit_count(node, ctx, q, target[q], m.ids, lambda kept, ids=m.ids, n=dst[q]: int(kept(ids).sum()) * n // len(ids))
    ctx.out(node.output[0], ChannelMap(q, ids))


def _channel_axis_in_output(src, dst, a) -> tuple[int, int]:
    """Where the channel axis `a` of `src` lands in `dst`, and how many entries of the axes in
    front of it are merged in front of the channels there. The axes in front of the channels
    may be regrouped among themselves ((T, B, ...) -> (T*B, ...)): the channels then start at
    the output axis whose prefix holds as many entries (the last such axis, past unit axes).
    Or the last of them may be merged with the channels ((T, B, E) -> (T, B*heads, hd), the
    layout nn.MultiheadAttention exports): each batch entry then repeats the channels."""
    if tuple(src[:a]) == tuple(dst[:a]) and len(dst) > a:
        return a, 1
    before = int(np.prod(src[:a]))
    prefix = np.cumprod([1] + list(dst))          # prefix[q] = entries in front of dst axis q
    equal = [q for q in range(len(dst)) if prefix[q] == before]
    if equal:
        return equal[-1], 1
    q = int(np.searchsorted(prefix, before)) - 1  # prefix[q] < before < prefix[q + 1]
    require(0 <= q < len(dst) and before % prefix[q] == 0 and dst[q] % (before // prefix[q]) == 0,
            "Reshape regroups the axes before the channel axis with the channels")
    return q, before // int(prefix[q])


def _feeds_channel_shuffle(node, ctx, a) -> bool:
    """The Reshape output is read only by Transposes that swap axes a and a + 1: a channel
    shuffle ([N, g, C/g, H, W] -> [N, C/g, g, H, W]), to be merged back by a Reshape."""
    users = ctx.consumers.get(node.output[0], [])
    for user, index in users:
        perm = attr(user, "perm") if user.op_type == "Transpose" else None
        if perm is None or len(perm) < a + 2 or perm[a] != a + 1 or perm[a + 1] != a:
            return False
    return bool(users)


def _axis_taken_apart(tensor, axis, ctx, depth=0) -> bool:
    """Every use of `tensor` moves `axis` around (Transpose, Unsqueeze, Squeeze of other axes)
    and ends in a Split / Gather / Slice along it: a fused projection taken apart (timm's qkv
    [B, T, 3, h, hd] -> permute -> unbind(0); nn.MultiheadAttention's (T, B, 3, E) ->
    unsqueeze(0) -> transpose(0, -2) -> squeeze(-2) -> q, k, v = [0], [1], [2])."""
    users = ctx.consumers.get(tensor, [])
    if depth > 8 or not users or tensor in ctx.model.output_names:
        return False
    rank = len(ctx.shape(tensor))
    for user, index in users:
        if index != 0 or user.domain not in ("", "ai.onnx"):
            return False
        kind = user.op_type
        if kind in ("Split", "Gather"):
            if norm_axis(attr(user, "axis", 0), rank) != axis:
                return False
            continue
        if kind == "Slice":
            axes = ctx.const(user.input[3]) if len(user.input) > 3 and user.input[3] else None
            if axes is None or axes.size != 1 or norm_axis(int(axes.reshape(-1)[0]), rank) != axis:
                return False
            continue
        moved = _moved_axis(user, axis, rank, ctx)
        if moved is None or not _axis_taken_apart(user.output[0], moved, ctx, depth + 1):
            return False
    return True


def _moved_axis(node, axis, rank, ctx) -> int | None:
    """Where a Transpose, Unsqueeze or Squeeze puts input `axis`; None for other operators
    and for a Squeeze of that very axis."""
    if node.op_type == "Transpose":
        return list(attr(node, "perm", list(range(rank))[::-1])).index(axis)
    if node.op_type not in ("Squeeze", "Unsqueeze"):
        return None
    axes = const_axes(node, ctx, 1)
    if axes is None:
        return None
    if node.op_type == "Squeeze":
        axes = [norm_axis(x, rank) for x in axes]
        return None if axis in axes else axis - sum(x < axis for x in axes)
    for x in sorted(norm_axis(x, rank + len(axes)) for x in axes):
        axis += x <= axis
    return axis


def _split_into_groups(node, ctx, target, rows, a):
    """[.., g*k*inner, ..] -> [.., g, k, inner.., ..] read as g groups (shuffle groups; the q, k
    and v of a fused projection; g = 1: an inserted unit axis; batch entries split off again)
    of the same k channels (heads when inner > 1). Channel j of every group is one class, and
    so is each block of `inner` (a head is removed whole): every group keeps the same
    positions, so the pruned tensor still splits into g equal groups and a shuffle that
    follows interleaves exactly the kept channels. The channels move to output axis a + 1;
    axis a keeps its size g."""
    require(target[a + 1] != 0, "Reshape copies a dimension into the channel axis")
    require(target[a + 1] != OTHER_DIM, OTHER_DIM_REASON)
    rows = rows.reshape(rows.shape[0], ctx.shape(node.output[0])[a + 1], -1)
    for r in rows[1:]:
        if not np.array_equal(r, rows[0]):
            ctx.unify(rows[0].reshape(-1), r.reshape(-1))
    for j in range(1, rows.shape[2]):
        ctx.unify(rows[0, :, 0], rows[0, :, j])
    ids = rows[0, :, 0]
    follows = count_read_follows(node, ctx, a + 1, ids)
    if counts_channels(target[a + 1]) and not follows:   # -1 follows the input by itself
        edit_count(node, ctx, a + 1, target[a + 1], ids, lambda kept, ids=ids: int(kept(ids).sum()))
    ctx.out(node.output[0], ChannelMap(a + 1, ids))


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
    if target is None:   # F.normalize: Expand(norm, Shape(x)), then x / it
        shaped = _shape_source(node.input[1], ctx)
        source = ctx.map(shaped) if shaped is not None else None
        require(source is not None and source.axis == axis and len(source.ids) == len(m.ids),
                "Expand shape is computed at run time")
        if source.ids is not m.ids:
            ctx.unify(source.ids, m.ids)   # the expanded copy has that tensor's shape: same cut
        ctx.out(node.output[0], ChannelMap(axis, m.ids))
        return
    position = axis - (len(dst) - len(target))
    if position >= 0 and target[position] == len(m.ids) and len(m.ids) > 1:
        def update_shape(n, model, kept, ids=m.ids, target=target, position=position):
            new = target.copy()
            new[position] = int(kept(ids).sum())
            set_input_constant(n, model, 1, new)
        ctx.edit(node, update_shape)
    ctx.out(node.output[0], ChannelMap(axis, m.ids))


def _shape_source(tensor, ctx):
    """The tensor whose whole shape `tensor` is (Shape, through Cast/Identity), else None."""
    node = ctx.index.producers.get(tensor)
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = ctx.index.producers.get(node.input[0])
    if node is None or node.op_type != "Shape" or attr(node, "start", 0) != 0 or \
            attr(node, "end", None) not in (None, len(ctx.shape(node.input[0]))):
        return None
    return node.input[0]


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
    for user, index in ctx.consumers.get(node.output[0], []):
        read = dims_read(user, ctx)
        if read is not None and m.axis not in read:
            continue  # reads other dimensions only (Gather of some, Slice of a range)
        if user.op_type == "Expand" and index == 1 and ctx.shape(user.output[0]) == ctx.shape(node.input[0]):
            continue  # broadcast to this tensor's shape: the Expand rule checks it has these channels
        # The count may only be used to cut this very tensor along its channels (torch's
        # `chunk`): the Slice rule replaces those bounds by constants, the stale count dies.
        require(user.op_type in SHAPE_ARITHMETIC and all(
                    only_channel_slice_bounds(o, node.input[0], m.axis, ctx)
                    or only_copied_into_reshapes(o, node.input[0], ctx) for o in user.output if o),
                "the channel count is read at run time")
