"""Normalisation and reduction: BatchNormalization and InstanceNormalization (channel-wise
parameters to slice), LayerNormalization and Softmax (they mix what they normalise over:
channels there are frozen), Reduce* over other axes."""
from __future__ import annotations

import numpy as np

from ..channels import CHANNELWISE, ChannelMap, const_axes, input_map, norm_axis, require
from ..graph import attr, opset_version
from .spec import STRUCTURAL, UNBOUNDED, Lipschitz, op


def _extra_outputs_unused(node, ctx) -> bool:
    """Optional outputs (training-mode statistics, mean / inverse std) are not read: their
    shape holds the channel count. (Graph outputs among them freeze the node's channels:
    couplings.py does that for every operator.)"""
    return all(not o or not ctx.consumers.get(o) for o in node.output[1:])


def _batch_norm_bound(b, node):
    gamma, var = (b.model.inits[node.input[i]] for i in (1, 4))
    scale = np.abs(gamma) / np.sqrt(var + attr(node, "epsilon", 1e-5))
    rank = len(b.model.shapes[node.input[0]])
    b.emit("Mul", [node.input[0], b.const(scale.reshape((-1,) + (1,) * (rank - 2)), "bn")], [node.output[0]])


def _instance_norm_bound(b, node):
    b.note("InstanceNormalization: data-dependent scale ignored, |γ| used")
    gamma = np.abs(b.model.inits[node.input[1]])
    rank = len(b.model.shapes[node.input[0]])
    b.emit("Mul", [node.input[0], b.const(gamma.reshape((-1,) + (1,) * (rank - 2)), "in")], [node.output[0]])


def _layer_norm_bound(b, node):
    b.note("LayerNormalization: data-dependent scale ignored, |γ| used")
    b.emit("Mul", [node.input[0], b.abs_weight(node.input[1])], [node.output[0]])


def _scale(node, model):
    """The per-channel scale (axis 1): where it is zero, the output is the shift alone."""
    scale, shape = model.inits.get(node.input[1]), model.shapes.get(node.input[0])
    if scale is None or shape is None or scale.ndim != 1 or len(shape) < 2:
        return None
    return scale.reshape((-1,) + (1,) * (len(shape) - 2))


def _fresh_normalization(node, index: int) -> float:
    """A new channel of torch's BatchNorm / InstanceNorm: scale 1, shift 0, mean 0, variance 1."""
    return 1.0 if index in (1, 4) else 0.0


@op("BatchNormalization", bound=_batch_norm_bound, factor=_scale, fresh=_fresh_normalization)
def batch_normalization(node, ctx):
    m = input_map(node, ctx)
    require(m.axis == 1, "channel axis is not 1")
    require(_extra_outputs_unused(node, ctx), "training-mode statistics outputs are used")
    for i in range(1, 5):
        ctx.param(node, i, 0, m.ids, CHANNELWISE)
    ctx.out(node.output[0], m)


@op("InstanceNormalization", bound=_instance_norm_bound, factor=_scale, fresh=_fresh_normalization)
def instance_normalization(node, ctx):
    m = input_map(node, ctx)
    require(m.axis == 1, "channel axis is not 1")
    ctx.param(node, 1, 0, m.ids, CHANNELWISE)
    ctx.param(node, 2, 0, m.ids, CHANNELWISE)
    ctx.out(node.output[0], m)


@op("LayerNormalization", bound=_layer_norm_bound)
def layer_normalization(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    first = norm_axis(attr(node, "axis", -1), rank)
    require(_extra_outputs_unused(node, ctx), "mean / inverse std outputs are used")
    if m.axis >= first:
        # Every channel enters every output's mean and variance: none can be removed. The
        # output keeps the same channels, on the same axis, so the layers after it (the
        # Linear of a transformer or ConvNeXt MLP) are still analysed as channels-last.
        ctx.freeze(m.ids, f"LayerNormalization {node.name}: LayerNormalization normalises "
                          f"over the channel axis")
    ctx.out(node.output[0], m)


@op("Softmax", "LogSoftmax", "Hardmax", bound=Lipschitz(1.0))
def softmax(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    opset = opset_version(ctx.model.opset_imports)
    axis = norm_axis(attr(node, "axis", -1 if opset >= 13 else 1), rank)
    # Before opset 13 the op flattens every axis from `axis` on into one softmax.
    mixes = m.axis == axis if opset >= 13 else m.axis >= axis
    require(not mixes, f"{node.op_type} normalises across channels")
    ctx.out(node.output[0], m)


# Reductions that keep a bound map a bound (sums, means, maxima, norms) and those that do not.
REDUCE = {"ReduceMean": STRUCTURAL, "ReduceMax": STRUCTURAL, "ReduceMin": STRUCTURAL,
          "ReduceSum": STRUCTURAL, "ReduceL1": STRUCTURAL, "ReduceL2": STRUCTURAL,
          "ReduceProd": UNBOUNDED, "ReduceLogSum": UNBOUNDED, "ReduceLogSumExp": UNBOUNDED,
          "ReduceSumSquare": UNBOUNDED}


@op(*REDUCE, bounds=REDUCE)
def reduce(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    axes = const_axes(node, ctx, 1)
    require(axes is not None and len(axes) > 0, "reduces over every axis, channels included")
    axes = sorted(norm_axis(a, rank) for a in axes)
    require(m.axis not in axes, f"{node.op_type} reduces over the channel axis")
    keepdims = attr(node, "keepdims", 1)
    axis = m.axis if keepdims else m.axis - sum(a < m.axis for a in axes)
    ctx.out(node.output[0], ChannelMap(axis, m.ids))
