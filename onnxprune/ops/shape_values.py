"""Shape arithmetic evaluated by hand: small integer tensors computed from constants and
static shapes (torch exports `chunk` as Shape -> Gather -> Add -> Div -> Mul -> Slice, and
computes Reshape targets from Shape). The channel rules use these to accept bounds and
targets that only look computed at run time, and to make sure a channel count read from a
Shape is only used to cut that very tensor."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..channels import norm_axis
from ..graph import attr


# Marker entries of a traced shape vector (real dimensions are never negative):
OTHER_DIM = -2       # computed from dimensions that pruning leaves alone
CHANNEL_COUNT = -3   # computed from a channel count read at run time (the Shape rule froze it)
SCALED_BATCH = -4    # a run-time dimension the analysis sees as 1 (the batch) times a literal
                     # count: nn.MultiheadAttention's B*heads; the count is the kept one's to set


# Operators that pass a shape vector on unchanged (as far as the entries go)
COPIES = ("Unsqueeze", "Squeeze", "Cast", "Identity")


def trace_shape_entries(tensor, ctx, depth=0):
    """Entries of a run-time shape vector: ints for constants, OTHER_DIM for values computed
    from other tensors' non-channel dimensions (window counts, padded sizes), CHANNEL_COUNT
    for values computed from a channel count. None when not traceable."""
    value = ctx.const(tensor)
    if value is not None:
        return [int(v) for v in np.atleast_1d(value)]
    producer = ctx.index.producers.get(tensor) if depth < 6 else None
    if producer is None:
        return None
    if producer.op_type == "Concat":
        parts = [trace_shape_entries(t, ctx, depth + 1) for t in producer.input]
        return None if any(p is None for p in parts) else sum(parts, [])
    if producer.op_type in COPIES or _flattens_vector(producer, ctx):
        return trace_shape_entries(producer.input[0], ctx, depth + 1)
    if producer.op_type == "Where":
        return _minus_one_as_one(producer, ctx, depth)
    idx = dims_read(producer, ctx)
    if idx is not None:
        source = ctx.map(ctx.index.producers[producer.input[0]].input[0])
        return [CHANNEL_COUNT if source is not None and d == source.axis else OTHER_DIM for d in idx]
    # Arithmetic on dimensions (torch's `H // window`, `C // heads`): its value is fixed once
    # every channel count it reads is frozen, which the Shape rule sees to.
    value = shape_value(tensor, ctx)
    if value is None:
        return None
    if reads_channel_count(tensor, ctx):
        return [CHANNEL_COUNT] * int(np.size(value))
    return [SCALED_BATCH] if _batch_times_count(producer, ctx) else [OTHER_DIM] * int(np.size(value))


def _batch_times_count(node, ctx) -> bool:
    """Mul of one literal and one run-time dimension that is 1 in the analysis (the batch):
    its value is the literal, and at any batch B it is B times the literal."""
    if node.op_type != "Mul":
        return False
    literals = [ctx.const(t) for t in node.input]
    if sum(v is not None for v in literals) != 1:
        return False
    literal, dim = (literals[0], node.input[1]) if literals[0] is not None else (literals[1], node.input[0])
    value = shape_value(dim, ctx)
    return np.size(literal) == 1 and value is not None and np.size(value) == 1 and int(np.reshape(value, -1)[0]) == 1


def _flattens_vector(node, ctx) -> bool:
    """A Reshape of a shape vector to [-1] (torch's expand writes its sizes so)."""
    if node.op_type != "Reshape" or len(ctx.shape(node.input[0])) != 1:
        return False
    target = shape_value(node.input[1], ctx)
    return target is not None and np.atleast_1d(target).tolist() == [-1]


def _minus_one_as_one(node, ctx, depth):
    """torch's `expand(n, -1, -1)`: Where(Equal(v, -1), 1, v) turns the -1 ("keep this size")
    of the sizes v into 1, which Expand broadcasts. Real dimensions are never -1, so traced
    entries pass as they are; None for any other Where."""
    cond = ctx.index.producers.get(node.input[0])
    ones = shape_value(node.input[1], ctx)
    if cond is None or cond.op_type != "Equal" or cond.input[0] != node.input[2] or ones is None \
            or not (np.asarray(ones) == 1).all():
        return None
    minus = shape_value(cond.input[1], ctx)
    entries = trace_shape_entries(node.input[2], ctx, depth + 1)
    if minus is None or not (np.asarray(minus) == -1).all() or entries is None:
        return None
    return [1 if e == -1 else e for e in entries]


def reads_channel_count(tensor, ctx, depth=0) -> bool:
    """Whether the shape arithmetic computing `tensor` reads a channel count from a Shape
    (true too when it reads a whole Shape of a tensor that carries channels)."""
    node = ctx.index.producers.get(tensor) if depth < 16 else None
    if node is None:
        return False
    if node.op_type == "Shape":
        return ctx.map(node.input[0]) is not None
    idx = dims_read(node, ctx)
    if idx is not None:
        source = ctx.map(ctx.index.producers[node.input[0]].input[0])
        return source is not None and source.axis in idx
    return any(reads_channel_count(t, ctx, depth + 1) for t in node.input if t)


def dims_read(node, ctx) -> list[int] | None:
    """The dimensions (of the tensor whose Shape it reads) that a Gather or Slice of a Shape
    selects, from constant indices or bounds; None for anything else."""
    shape_node = ctx.index.producers.get(node.input[0])
    if shape_node is None or shape_node.op_type != "Shape" or node.op_type not in ("Gather", "Slice"):
        return None
    rank = len(ctx.shape(shape_node.input[0]))
    start = norm_axis(attr(shape_node, "start", 0), rank)
    dims = list(range(rank))[start:attr(shape_node, "end", rank)]
    if node.op_type == "Gather":
        index = ctx.const(node.input[1])
        if index is None or attr(node, "axis", 0) != 0:
            return None
        return [dims[int(i)] for i in np.atleast_1d(index)]
    bounds = [shape_value(t, ctx) if len(node.input) > i and node.input[i] else None
              for i, t in enumerate(list(node.input) + [""] * 5) if 1 <= i <= 4]
    starts, ends, axes, steps = bounds
    if starts is None or ends is None or np.size(starts) != 1 or \
            (axes is not None and int(np.reshape(axes, -1)[0]) not in (0, -1)):
        return None
    step = 1 if steps is None else int(np.reshape(steps, -1)[0])
    return dims[slice(int(np.reshape(starts, -1)[0]), int(np.reshape(ends, -1)[0]), step)]


SHAPE_ARITHMETIC = ("Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity",
                     "Add", "Sub", "Mul", "Div")
# Evaluated by shape_value too (torch's F.pad computes its pads with them), but a channel
# count that reaches them is not a Slice bound: the Shape rule freezes it.
PAD_ARITHMETIC = ("Mod", "ConstantOfShape", "Reshape", "Transpose")


def only_channel_slice_bounds(tensor, source, axis, ctx) -> bool:
    """Every use of `tensor` (an integer value computed from the shape of `source`) ends,
    through shape arithmetic, as the start or end of a Slice of `source` along `axis` alone."""
    def ends(user, index):
        if user.op_type != "Slice" or index not in (1, 2) or user.input[0] != source:
            return None
        axes = ctx.const(user.input[3]) if len(user.input) > 3 and user.input[3] else None
        return axes is not None and axes.size == 1 and \
            norm_axis(int(axes.reshape(-1)[0]), len(ctx.shape(source))) == axis

    def passes_on(user, index):
        return user.op_type in SHAPE_ARITHMETIC and \
            (index == 0 or user.op_type in ("Concat", "Add", "Sub", "Mul", "Div"))
    return _every_use_ends(tensor, ctx, ends, passes_on)


def _every_use_ends(tensor, ctx, ends, passes_on, depth=0) -> bool:
    """Every use of `tensor` is accepted by `ends(user, input index)` (True; False rejects it,
    None is no end), or passed on by `passes_on` to outputs whose every use is."""
    users = ctx.consumers.get(tensor, [])
    if depth > 16 or not users or tensor in ctx.model.output_names:
        return False
    for user, index in users:
        if user.domain not in ("", "ai.onnx"):
            return False
        end = ends(user, index)
        if end is None and passes_on(user, index):
            end = all(_every_use_ends(o, ctx, ends, passes_on, depth + 1) for o in user.output if o)
        if not end:
            return False
    return True


def copied_dims(tensor, ctx, depth=0):
    """(tensor whose Shape is read, the dimensions read) when `tensor` is dimensions of a Shape
    passed on unchanged (Gather or Slice of it, then Unsqueeze/Squeeze/Cast); else None."""
    node = ctx.index.producers.get(tensor) if depth < 8 else None
    if node is None:
        return None
    if node.op_type in COPIES:
        return copied_dims(node.input[0], ctx, depth + 1)
    dims = dims_read(node, ctx)
    return None if dims is None else (ctx.index.producers[node.input[0]].input[0], dims)


def only_copied_into_reshapes(tensor, source, ctx) -> bool:
    """Every use of `tensor` (dimensions read from the Shape of `source`) copies it unchanged into
    the target of a Reshape of `source`, or of a tensor reshaped or transposed from it (the
    dynamo exporter's k.transpose(-2, -1) of a symbolic batch reads (B, heads) so): the Reshape
    rule checks there that a channel count lands on those very channels."""
    def ends(user, index):
        return _reshaped_from(user.input[0], source, ctx) if user.op_type == "Reshape" and index == 1 else None

    def passes_on(user, index):
        return user.op_type in COPIES + ("Concat",) and (index == 0 or user.op_type == "Concat")
    return _every_use_ends(tensor, ctx, ends, passes_on)


def _reshaped_from(tensor, source, ctx, depth=0) -> bool:
    if tensor == source:
        return True
    node = ctx.index.producers.get(tensor) if depth < 16 else None
    return node is not None and node.op_type in ("Reshape", "Transpose") and \
        _reshaped_from(node.input[0], source, ctx, depth + 1)


def shape_value(tensor, ctx, depth=0):
    """The value of a small integer tensor computed from constants and static shapes by the
    operators of SHAPE_ARITHMETIC (and Shape); None when anything else takes part."""
    value = ctx.const(tensor)
    if value is not None:
        return np.asarray(value)
    node = ctx.index.producers.get(tensor) if depth < 16 else None
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        dims = np.asarray(ctx.shape(node.input[0]), dtype=np.int64)
        start, end = attr(node, "start", 0), attr(node, "end", len(dims))
        return dims[start:end]
    if node.op_type not in SHAPE_ARITHMETIC + PAD_ARITHMETIC:
        return None
    ins = [shape_value(t, ctx, depth + 1) if t else None for t in node.input]
    op = node.op_type
    if ins[0] is None or (op in ("Gather", "Add", "Sub", "Mul", "Div", "Mod", "Reshape") and ins[1] is None):
        return None
    x = ins[0]
    if op in PAD_ARITHMETIC:
        return _pad_arithmetic(node, x, ins)
    if op in ("Identity", "Cast"):
        return x if op == "Identity" else x.astype(onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to")))
    if op == "Gather":
        return np.take(x, ins[1].astype(np.int64), axis=attr(node, "axis", 0))
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
        return np.concatenate([np.atleast_1d(v) for v in ins], axis=attr(node, "axis", 0))
    axes = attr(node, "axes")
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


def _pad_arithmetic(node, x, ins):
    op = node.op_type
    if op == "Mod":
        return (np.fmod if attr(node, "fmod", 0) else np.mod)(x, ins[1])
    if op == "ConstantOfShape":
        fill = attr(node, "value")
        fill = np.zeros(1, np.float32) if fill is None else numpy_helper.to_array(fill)
        return np.full(x.astype(np.int64), fill.reshape(-1)[0], dtype=fill.dtype)
    if op == "Reshape":
        return x.reshape([x.shape[i] if t == 0 else int(t) for i, t in enumerate(ins[1])])
    return np.transpose(x, attr(node, "perm"))
