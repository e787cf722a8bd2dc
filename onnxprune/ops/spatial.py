"""Spatial operators: pooling, Resize/Upsample and Pad move or pool values within each
channel; channel j of the output is channel j of the input."""
from __future__ import annotations

import numpy as np
import onnx

from ..channels import input_map, const_axes, norm_axis, require
from ..graph import attr, set_input_constant
from .shape_values import shape_value
from .spec import STRUCTURAL, op


def _pad_bound(b, node):
    """Pad the bound map with zeros: a pad value is a constant and carries no error."""
    n = onnx.NodeProto()
    n.CopyFrom(node)
    if len(n.input) > 2 and n.input[2]:
        n.input[2] = b.const(np.zeros((), np.float32), "pad")
    b.keep(n)


@op("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "MaxRoiPool", bound=STRUCTURAL)
def pooling(node, ctx):
    m = input_map(node, ctx)
    require(m.axis == 1, "pooling over a tensor whose channel axis is not 1")
    require(len(node.output) < 2 or not node.output[1] or not ctx.consumers.get(node.output[1]),
            "MaxPool indices encode the channel count")
    ctx.out(node.output[0], m)


@op("Resize", "Upsample", bound=STRUCTURAL)
def resize(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    axes = attr(node, "axes")  # opset 18: scales and sizes list only these axes
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
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
                set_input_constant(n, model, 3, new)
            ctx.edit(node, update_sizes)
    ctx.out(node.output[0], m)


@op("Pad", bound=_pad_bound)
def pad(node, ctx):
    m = input_map(node, ctx)
    rank = len(ctx.shape(node.input[0]))
    pads = attr(node, "pads")
    if pads is None:
        # torch's F.pad computes pads from the input's shape: evaluated from the static shapes
        # (they stay fixed: a channel count read on the way is frozen by the Shape rule)
        value = shape_value(node.input[1], ctx)
        require(value is not None, "pads are computed at run time")
        pads = value.tolist()
    axes = const_axes(node, ctx, 3) if len(node.input) > 3 else None
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    n = len(axes)
    for k, a in enumerate(axes):
        if a == m.axis:
            require(pads[k] == 0 and pads[k + n] == 0, "pads the channel axis")
    value = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    require(value is None or value.size <= 1, "per-channel pad value")
    ctx.out(node.output[0], m)
