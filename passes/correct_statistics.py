"""Per-channel statistics correction (docs/methods.md §5): every layer whose input lost
channels gets, on each output channel, the mean and standard deviation the original layer
had on the calibration data,

    y ← (y − μ_pruned) · σ_original / σ_pruned + μ_original,

folded into the layer's weight and bias (the folded-BatchNormalization equivalent of
re-estimating BN statistics). Layers are corrected in graph order, in the same chunks as
the reconstruction, so each sees the network with every earlier correction in place.
"""
from __future__ import annotations

import numpy as np

from onnxprune.graph import attr
from onnxprune.layer_data import (Moments, bias, can_take_bias, channel_rows, kept_outputs, output_axis,
                                  refit_chunks, refit_targets, set_bias, set_weight, stream_pair)

# A channel whose pruned output barely varies keeps its scale: dividing by ~0 would blow up.
MIN_STD = 1e-6


def run(model, step) -> None:
    if step.calibration is None:
        return
    targets = [t for t in refit_targets(model, step.couplings, step.kept)
               if can_take_bias(model.index().nodes[t])]
    if not targets:
        return
    for chunk in refit_chunks(model, targets, step.calibration_size):
        nodes = model.index().nodes
        pruned = {t: Moments() for t in chunk}
        original = {t: Moments() for t in chunk}

        def consume(slim_values, original_values, chunk=chunk, nodes=nodes, pruned=pruned, original=original):
            for t in chunk:
                node, y = nodes[t], nodes[t].output[0]
                axis = output_axis(node, slim_values[y].ndim)
                pruned[t].add(channel_rows(slim_values[y], axis))
                original[t].add(channel_rows(kept_outputs(step.couplings, step.kept, node, original_values[y]), axis))

        outputs = [nodes[t].output[0] for t in chunk]
        stream_pair(model, step.original, outputs, outputs, step.calibration, consume)
        for t in chunk:
            _rescale(model, nodes[t], pruned[t], original[t])
        model.touch()
    step.notes.append(f"correct_statistics: {len(targets)} layer(s) given the original per-channel "
                      f"mean and standard deviation ({step.calibration_size} calibration samples)")


def _rescale(model, node, pruned: Moments, original: Moments) -> None:
    scale = np.where(pruned.std > MIN_STD, original.std / np.maximum(pruned.std, MIN_STD), 1.0)
    w = model.inits[node.input[1]].astype(np.float64)
    if node.op_type == "Conv":
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    else:  # Gemm: output channels are columns of A·B
        w = w * (scale[:, None] if attr(node, "transB", 0) else scale[None, :])
    b = bias(model, node, len(scale))
    set_weight(model, node, w)
    set_bias(model, node, (b - pruned.mean) * scale + original.mean, model.inits[node.input[1]].dtype)
