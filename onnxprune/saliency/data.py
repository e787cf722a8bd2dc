"""What the data-driven criteria share (docs/methods.md §5.4): the calibration data handed
to the score stage, the layers that read each channel (feed-outs) with the weight energy
each input position carries, and one streaming pass of the original model.

Every data criterion scores a channel by what its consumers lose without it, so they all
start from the same list: each feed-out layer, the activation tensor it reads, and which
channel identity sits at each position of that tensor's channel axis."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..channels import FEED_OUT
from ..errors import OnnxPruneError
from ..graph import attr
from ..layer_data import stream_pair
from ..ops import layer_of
from ..ops.conv_bound import following_bn_scale
from .magnitude import axis_norms


@dataclass(frozen=True)
class CalibrationData:
    """Calibration samples for the score and allocate stages: `batches()` returns a fresh
    iterator of feed dicts, `size` is the number of samples in one pass."""
    batches: Callable
    size: int


def require_data(data, who: str) -> CalibrationData:
    if data is None:
        raise OnnxPruneError(f"{who} needs calibration data (--calib / calibration=)")
    return data


@dataclass
class Consumer:
    """A feed-out layer: `node` reads `tensor`, whose channel axis `axis` carries identity
    `ids[p]` at position p. `weight` is the layer's weight (float64) scaled by the
    BatchNormalization after it, if any, so that the error is measured after that BN and
    BN folded or not gives the same scores (as bgsc's r_b); `energy[p]` is Σ weight² over
    the weights that read position p."""
    node: object
    tensor: str
    axis: int
    ids: np.ndarray
    weight: np.ndarray
    energy: np.ndarray


def consumers(model, couplings) -> list[Consumer]:
    nodes = model.index().nodes
    out, seen = [], set()
    for s in couplings.slices:
        if s.role != FEED_OUT or s.node in seen:
            continue
        node = nodes[s.node]
        cmap = couplings.tensors.get(node.input[0])
        if cmap is None or cmap.axis == 0:
            continue  # channels on the batch axis: not a layer input we can measure
        seen.add(s.node)
        w = _scaled_by_following_bn(model, node, model.inits[node.input[s.input]].astype(np.float64))
        out.append(Consumer(node, node.input[0], cmap.axis, np.asarray(cmap.ids), w,
                            input_energy(node, w, s.axis, len(cmap.ids))))
    return out


def _scaled_by_following_bn(model, node, w: np.ndarray) -> np.ndarray:
    scale = following_bn_scale(node, model, model.index())
    layer = layer_of(node)
    if scale is None or layer is None:
        return w
    axis = layer.out_axis(node)
    if w.shape[axis] != scale.size:
        return w
    return w * scale.reshape([-1 if a == axis else 1 for a in range(w.ndim)])


def input_energy(node, w: np.ndarray, in_axis: int, n_inputs: int) -> np.ndarray:
    """Σ W² over the weights reading each input position (all outputs and taps). In a
    grouped conv, input channel g·L + j is read by group g's filters only."""
    scale = float(attr(node, "alpha", 1.0)) ** 2 if node.op_type == "Gemm" else 1.0
    if w.shape[in_axis] == n_inputs:
        return axis_norms(w, in_axis, 2) * scale
    groups = n_inputs // w.shape[in_axis]   # a grouped Conv: weight (C_out, C_in / g, k...)
    per_out = w.shape[0] // groups
    return np.concatenate([axis_norms(w[g * per_out:(g + 1) * per_out], 1, 2) for g in range(groups)])


def stream_original(model, tensors, data: CalibrationData, consume) -> None:
    """`consume({tensor: value})` once per calibration batch, values from the original model."""
    stream_pair(None, model, [], sorted(set(tensors)), data.batches, lambda _, values: consume(values))


def per_class(couplings, ids: np.ndarray, values: np.ndarray, out: np.ndarray, reduce=np.add) -> None:
    """Add (or max) per-position values into their channel classes."""
    reduce.at(out, couplings.class_of[ids], values)


def channels_last(x: np.ndarray, axis: int) -> np.ndarray:
    """(samples, positions, channels) of a tensor whose channels are on `axis`."""
    x = np.moveaxis(x.astype(np.float64, copy=False), axis, -1)
    return x.reshape(x.shape[0], -1, x.shape[-1])
