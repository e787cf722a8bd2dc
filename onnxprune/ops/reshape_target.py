"""Reshape targets: reading a target (constant, or computed at run time from Shape and traced
entry by entry) and recording the rewrite of its channel count to the kept count, in the
constant, in the part of a run-time Concat that holds it, or, for the batch times a head
count, as B * kept. Used by the Reshape rule (onnxprune/ops/reshape.py)."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..channels import RuleError, require
from ..graph import set_input_constant
from .shape_values import CHANNEL_COUNT, SCALED_BATCH, copied_dims, shape_value, trace_shape_entries


def count_read_follows(node, ctx, q, ids) -> bool:
    """Whether entry `q` of the target is the channel count of a tensor carrying exactly `ids`,
    read at run time and copied unchanged: it then follows the pruned tensor by itself. A
    channel count copied anywhere else freezes the channels it counts (the Shape rule let it
    through for this check)."""
    follows = False
    for part, offset in _target_leaves(node.input[1], ctx):
        read = copied_dims(part, ctx)
        source = ctx.map(read[0]) if read is not None else None
        for j, dim in enumerate(read[1] if source is not None else []):
            if dim != source.axis:
                continue
            if offset + j == q and np.array_equal(source.ids, ids):
                follows = True
            else:
                ctx.freeze(source.ids, f"Reshape {node.name}: a channel count read at run time sizes other channels")
    return follows


def _target_leaves(tensor, ctx, offset=0, depth=0):
    """(part, entries in front of it) of a Reshape target computed at run time, nested
    Concats taken apart; nothing for a constant target."""
    node = ctx.index.producers.get(tensor)
    if ctx.const(tensor) is not None or depth > 8:
        return
    if node is not None and node.op_type == "Concat":
        for part in node.input:
            yield from _target_leaves(part, ctx, offset, depth + 1)
            offset += len(trace_shape_entries(part, ctx) or [])
    else:
        yield tensor, offset


def counts_channels(entry) -> bool:
    """A target entry that says how many channels there are: a literal, a channel count read
    at run time, or the batch times a literal head count."""
    return entry > 0 or entry in (CHANNEL_COUNT, SCALED_BATCH)


def edit_count(node, ctx, position, entry, ids, count) -> None:
    """`_edit_target`; a run-time channel count it cannot rewrite (Slice(Shape(x), 0, 2) reads
    the batch and the channels in one piece) counts other channels, which count_read_follows
    or the Shape rule froze, so the channels it sizes here stay whole too, and the map still
    follows them."""
    try:
        _edit_target(node, ctx, position, count)
    except RuleError:
        if entry != CHANNEL_COUNT:
            raise
        ctx.freeze(ids, f"Reshape {node.name}: Reshape target reads a channel count at run time")


def _edit_target(node, ctx, position, count) -> None:
    """Record the rewrite of entry `position` of the Reshape's target to `count(kept)`: in the
    constant target, or in the part of the Concat that computes it. The entries that Shape
    reads at run time are dimensions pruning does not change: they follow by themselves. A
    channel count read at run time (torchvision's Swin: `reshape(B*nW, N, C)` of the heads,
    C from the stream's shape) counts channels that stay whole, not these: that part of the
    Concat becomes a constant. The batch times a head count (B*heads) keeps the batch read at
    run time and takes the kept count."""
    source, index, offset, entries = node, 1, 0, None
    if ctx.const(node.input[1]) is None:
        source, index, offset, entries = _target_part(node.input[1], position, ctx)
        require(ctx.const(source.input[index]) is not None or entries in ([CHANNEL_COUNT], [SCALED_BATCH]),
                "Reshape target with a literal channel count is computed at run time")
    if entries == [SCALED_BATCH]:
        per_batch = np.asarray(shape_value(source.input[index], ctx)).reshape(-1)
        ctx.edit(source, lambda n, model, kept, index=index: _rescale_batch(n, model, index, per_batch, count(kept)))
        return
    value = ctx.const(source.input[index])
    read_at_run_time = value is None
    value = np.array(np.zeros(ctx.shape(source.input[index])) if value is None else value, dtype=np.int64)
    full = count(lambda ids: np.ones(len(ids), dtype=bool))

    def update(n, model, kept, value=value, at=position - offset, index=index):
        if read_at_run_time and count(kept) == full:
            # nothing removed: the run-time read stays (the size may be dynamic, PP-OCR's
            # token count read from the width of the image the model is given)
            return
        new = value.copy()
        new.reshape(-1)[at] = count(kept)
        set_input_constant(n, model, index, new)
    ctx.edit(source, update)


def _target_part(tensor, position, ctx):
    """(Concat, input index, entries in front of that input, its traced entries) of the
    innermost part of a run-time target that computes entry `position` (Concats nest:
    nn.MultiheadAttention's (T, B) + (3, E) + ())."""
    source = ctx.index.producers.get(tensor)
    require(source is not None and source.op_type == "Concat" and len(ctx.consumers.get(tensor, [])) == 1,
            "Reshape target with a literal channel count is computed at run time")
    offset = 0
    for index, part in enumerate(source.input):
        entries = trace_shape_entries(part, ctx)
        if position < offset + len(entries):
            break
        offset += len(entries)
    inner = ctx.index.producers.get(part)
    if ctx.const(part) is None and inner is not None and inner.op_type == "Concat":
        source, index, inner_offset, entries = _target_part(part, position - offset, ctx)
        offset += inner_offset
    return source, index, offset, entries


def _rescale_batch(concat, model, index, per_batch, kept_count) -> None:
    """Part `index` of `concat` computes B * per_batch at run time: make it B * kept_count
    with an exact integer Div and Mul inserted in front of the Concat (the product may be
    shared with other targets, so it is not edited in place)."""
    if kept_count == int(per_batch[0]):
        return
    prefix = f"{concat.name}__{index}"
    model.inits[f"{prefix}_per_batch"] = per_batch.copy()
    model.inits[f"{prefix}_kept"] = np.array([kept_count], dtype=per_batch.dtype)
    nodes = [helper.make_node("Div", [concat.input[index], f"{prefix}_per_batch"], [f"{prefix}_batch"],
                              name=f"{prefix}_batch"),
             helper.make_node("Mul", [f"{prefix}_batch", f"{prefix}_kept"], [f"{prefix}_kept_count"],
                              name=f"{prefix}_kept_count")]
    at = next(i for i, n in enumerate(model.graph.node) if n.name == concat.name)
    for i, n in enumerate(nodes):
        model.graph.node.insert(at + i, n)
    concat.input[index] = f"{prefix}_kept_count"


def static_target(node, ctx) -> list[int]:
    """The Reshape target as written: literal entries, with -1 kept as -1. A target computed
    at run time is accepted when each entry can be traced (Concat of constants and input dims)."""
    value = ctx.const(node.input[1])
    if value is not None:
        return [int(v) for v in value]
    entries = trace_shape_entries(node.input[1], ctx)
    require(entries is not None, "Reshape target is computed at run time")
    return entries
