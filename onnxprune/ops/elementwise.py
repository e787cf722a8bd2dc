"""Elementwise operators: activations (channel j stays channel j) and broadcasting binary
operators (the channels at the same position of two activations are one class)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..channels import CHANNELWISE, ChannelMap, input_map, require
from ..graph import attr
from .spec import UNBOUNDED, Lipschitz, op


# -- bounds of activations with parameters ----------------------------------------------
def _leaky_relu_bound(b, node):
    b.scale(node, node.input[0], max(1.0, abs(attr(node, "alpha", 0.01))))


def _elu_bound(b, node):
    b.scale(node, node.input[0], max(1.0, abs(attr(node, "alpha", 1.0))))


def _selu_bound(b, node):
    gamma, alpha = attr(node, "gamma", 1.0507), attr(node, "alpha", 1.67326)
    b.scale(node, node.input[0], gamma * max(1.0, alpha))


def _cast_bound(b, node):
    """A cast between floating types changes nothing a bound sees; a cast to an integer or
    boolean type rounds or thresholds: no bound."""
    if attr(node, "to") in FLOAT_TYPES:
        return b.scale(node, node.input[0], 1.0)
    b.unbounded(node)


FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _hard_sigmoid_bound(b, node):
    b.scale(node, node.input[0], abs(attr(node, "alpha", 0.2)))


# Pass-through operators and their bound. A Lipschitz factor is max |f'| (ReLU 1; SiLU,
# HardSwish, GELU and sigmoid as docs/methods.md §1 gives them). Operators without a
# global bound (Exp, Log, Sqrt, Reciprocal; boolean tests) are UNBOUNDED: bgsc freezes the
# channels that pass through them instead of guessing.
UNARY = {
    "Relu": Lipschitz(1.0), "LeakyRelu": _leaky_relu_bound, "Elu": _elu_bound, "Selu": _selu_bound,
    "Celu": Lipschitz(1.0), "Sigmoid": Lipschitz(0.25), "HardSigmoid": _hard_sigmoid_bound,
    "HardSwish": Lipschitz(1.5), "Tanh": Lipschitz(1.0), "Softplus": Lipschitz(1.0),
    "Softsign": Lipschitz(1.0), "Gelu": Lipschitz(1.13), "Mish": Lipschitz(1.09),
    "ThresholdedRelu": Lipschitz(1.0), "Abs": Lipschitz(1.0), "Neg": Lipschitz(1.0),
    "Erf": Lipschitz(1.13), "Sin": Lipschitz(1.0), "Cos": Lipschitz(1.0),
    "Floor": Lipschitz(1.0), "Ceil": Lipschitz(1.0), "Round": Lipschitz(1.0), "Sign": Lipschitz(1.0),
    "Identity": Lipschitz(1.0), "Cast": _cast_bound, "Shrink": Lipschitz(1.0),
    "Exp": UNBOUNDED, "Log": UNBOUNDED, "Sqrt": UNBOUNDED, "Reciprocal": UNBOUNDED,
    "Not": UNBOUNDED, "IsNaN": UNBOUNDED, "IsInf": UNBOUNDED,
}


@op(*UNARY, bounds=UNARY)
def elementwise_unary(node, ctx):
    m = input_map(node, ctx)
    ctx.out(node.output[0], m)


@op("Dropout", bound=Lipschitz(1.0))
def dropout(node, ctx):
    m = input_map(node, ctx)
    for o in node.output:  # the optional mask has the input's shape too
        ctx.out(o, m)


# -- bounds of binary operators ----------------------------------------------------------
def _sum_bound(b, node):
    """|Δ(a ± b)| <= |Δa| + |Δb|; constants carry no error."""
    b.sum(node, [t for t in node.input if b.is_activation(t)])


def _mean_bound(b, node):
    b.sum(node, [t for t in node.input if b.is_activation(t)], 1.0 / len(node.input))


def _where_bound(b, node):
    b.sum(node, [t for t in node.input[1:] if b.is_activation(t)])


def _mul_bound(b, node):
    x0, x1 = node.input[0], node.input[1]
    acts = [t for t in (x0, x1) if b.is_activation(t)]
    if len(acts) == 1:  # x * constant
        x = acts[0]
        c = b.model.inits.get(x1 if x == x0 else x0)
        return b.emit("Mul", [x, b.const(np.abs(c) if c is not None else 1.0, "c")], [node.output[0]])
    for x, y in ((x0, x1), (x1, x0)):
        gate = b.gate_bound(y)
        if gate is None:
            continue
        if b.derived_from(y, x):  # x·g(x): SiLU / HardSwish written out
            factor = SILU_LIPSCHITZ if gate[1] == "sigmoid" else HARD_SWISH_LIPSCHITZ
            b.note(f"x*gate(x) ({gate[1]}): Lipschitz factor {factor}")
        else:
            factor = gate[0]  # an SE-style gate bounded by 1
        return b.scale(node, x, factor)
    b.note("product of two unbounded activations: bounds summed")
    b.sum(node, acts)


SILU_LIPSCHITZ, HARD_SWISH_LIPSCHITZ = 1.1, 1.5


def _div_bound(b, node):
    c = b.model.inits.get(node.input[1])
    if c is None:
        b.note("division by an activation: denominator ignored")
    b.emit("Mul", [node.input[0], b.const(1.0 / np.abs(c) if c is not None else 1.0, "div")], [node.output[0]])


def _prelu_bound(b, node):
    slope = b.model.inits.get(node.input[1])
    if slope is None:
        return b.scale(node, node.input[0], 1.0)
    b.emit("Mul", [node.input[0], b.const(np.maximum(1.0, np.abs(slope)), "prelu")], [node.output[0]])


BINARY = {
    "Add": _sum_bound, "Sub": _sum_bound, "Sum": _sum_bound, "Max": _sum_bound, "Min": _sum_bound,
    "Mean": _mean_bound, "Where": _where_bound, "Mul": _mul_bound, "Div": _div_bound,
    "PRelu": _prelu_bound, "Clip": Lipschitz(1.0),
    "Pow": UNBOUNDED, "Mod": UNBOUNDED, "BitShift": UNBOUNDED,
    "Equal": UNBOUNDED, "Greater": UNBOUNDED, "GreaterOrEqual": UNBOUNDED, "Less": UNBOUNDED,
    "LessOrEqual": UNBOUNDED, "And": UNBOUNDED, "Or": UNBOUNDED, "Xor": UNBOUNDED,
}


def _constant_factor(node, model):
    """x * constant: where the constant is zero, the output is zero whatever x."""
    if node.op_type != "Mul":
        return None
    constants = [model.inits[t] for t in node.input[:2] if t in model.inits]
    return constants[0] if len(constants) == 1 else None


def _fresh_constant(node, index: int) -> float | None:
    """The neutral entry of a per-channel constant (x + 0, x * 1, x / 1); PRelu's slope
    starts at torch's 0.25. Other operators have none: their groups do not widen."""
    return {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0, "PRelu": 0.25}.get(node.op_type)


@op(*BINARY, bounds=BINARY, factor=_constant_factor, fresh=_fresh_constant)
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
    if _independent_sum(node, ctx, mapped, aligned, axis, width):
        return
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


RESIDUAL_SUMS = ("Add", "Sum")


def _independent_sum(node, ctx, mapped, aligned, axis: int, width: int) -> bool:
    """With `--residual independent`, a sum of two or more full-width activations keeps
    each operand's channels apart (indexation-addition, docs/methods.md §2): the output
    gets identities of its own. Any other operand (a per-channel constant, a broadcast
    activation) keeps the coupled rule."""
    if ctx.residual != "independent" or node.op_type not in RESIDUAL_SUMS:
        return False
    operands = [(i, m) for i, m in mapped if len(m.ids) == width and aligned[i] == axis
                and m.axis == axis - (len(ctx.shape(node.output[0])) - len(ctx.shape(node.input[i])))]
    if len(operands) < 2 or len(operands) != sum(1 for t in node.input if t):
        return False
    ctx.join(node, node.output[0], width, axis, operands)
    return True
