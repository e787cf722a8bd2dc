"""Per-channel statistics correction (docs/methods.md §5): every layer whose input lost
channels gets, on each output channel, the mean and standard deviation the original layer
had on the calibration data,

    y ← (y − μ_pruned) · σ_original / σ_pruned + μ_original,

folded into the layer's weight and bias (the folded-BatchNormalization equivalent of
re-estimating BN statistics). Layers are corrected in graph order, in the same chunks as
the reconstruction, so each sees the network with every earlier correction in place.

Without calibration data the statistics are predicted from the BatchNormalization
statistics still in the graph (onnxprune/moments.py): with per-channel input means μ_c and
variances σ²_c, a layer's output channel o has mean Σ_c W[o,c]·μ_c + b and, channels taken
as independent, variance Σ_c W[o,c]²·σ²_c. Kept input channels are rescaled so that the
predicted variance of the pruned layer equals the predicted variance of the original, and
the bias restores the original mean (which includes the removed channels' expectation).
The pruned layer is predicted as it now is: after neuron merging, with the merged columns.
Layers whose inputs have no estimate are left as they are. With independent residual
branches, the kept inputs are predicted as the pruned network has them: a sum's channel
that lost a branch no longer carries that branch's mean and variance.
"""
from __future__ import annotations

import numpy as np

from onnxprune.graph import attr
from onnxprune.masking import mask_feed_out_inputs
from onnxprune.moments import predict
from onnxprune.layer_data import (Moments, bias, can_take_bias, channel_rows, groups_of, input_columns,
                                  kept_outputs, output_axis, refit_chunks, refit_targets, removed_inputs,
                                  set_bias, set_weight, set_weight_matrix, stream_pair, weight_matrix)

# A channel whose pruned output barely varies keeps its scale: dividing by ~0 would blow up.
MIN_STD = 1e-6


def run(model, step) -> None:
    if step.calibration is None:
        return _from_bn_statistics(model, step)
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


def _from_bn_statistics(model, step) -> None:
    estimates = predict(step.original)
    # the inputs as the pruned network has them (differs only where residual branches were dropped)
    pruned_estimates = predict(mask_feed_out_inputs(step.original, step.couplings, step.kept)) \
        if step.couplings.joins else estimates
    onodes = step.original.index().nodes
    removed = removed_inputs(step.couplings, step.kept)
    out_ids = {p.node: p.ids for p in step.couplings.producers}
    done = 0
    for t in refit_targets(model, step.couplings, step.kept):
        node, slim_node = onodes[t], model.index().nodes[t]
        x = node.input[0]
        if x not in estimates or x not in pruned_estimates or not can_take_bias(node):
            continue
        w = step.original.inits[node.input[1]].astype(np.float32, copy=False)   # float32 is plenty for a rescale
        mean, var = (a.astype(np.float32) for a in estimates[x])   # float32 products: BLAS, no cast of the sums
        mean_now, var_now = (a.astype(np.float32) for a in pruned_estimates[x])
        # removed inputs of one group (none where only a residual branch was dropped)
        gone = removed.get(t, np.zeros(len(mean) // groups_of(node), dtype=bool))
        cols = input_columns(node, w, gone)
        merged = step.merged.get(t)
        groups = groups_of(node)
        per_in = len(mean) // groups
        scale, new_bias = [], []
        b_full = bias(step.original, node, w.shape[0] if node.op_type == "Conv" else weight_matrix(node, w).shape[1])
        for g in range(groups):
            part = slice(g * per_in, (g + 1) * per_in)
            s1, s2 = _channel_sums(node, w, g, per_in)
            v_full, mu_full = var[part] @ s2, mean[part] @ s1   # the target: the original layer
            if merged:   # merged rows changed the kept ones: the matrix as the pruned layer has it
                kept_m = _as_pruned(weight_matrix(node, w, g), cols, merged)
                taps = kept_m.shape[0] // per_in
                mu, sd2 = np.repeat(mean_now[part], taps), np.repeat(var_now[part], taps)
                v_kept, mu_kept = sd2 @ (kept_m * kept_m), mu @ kept_m
            else:
                v_kept, mu_kept = (var_now[part] * ~gone) @ s2, (mean_now[part] * ~gone) @ s1
            s = np.where(v_kept > 1e-12 * np.maximum(v_full, 1e-30),
                         np.sqrt(v_full / np.maximum(v_kept, 1e-30)), 1.0)
            width = s1.shape[1]
            scale.append(s)
            new_bias.append(mu_full + b_full[g * width:(g + 1) * width] - s * mu_kept)
        scale, new_bias = np.concatenate(scale), np.concatenate(new_bias)
        if t in out_ids:
            kept_out = step.kept(out_ids[t])
            scale, new_bias = scale[kept_out], new_bias[kept_out]
        _apply_scale(model, slim_node, scale)
        set_bias(model, slim_node, new_bias, model.inits[slim_node.input[1]].dtype)
        done += 1
    model.touch()
    if done:
        step.notes.append(f"correct_statistics: {done} layer(s) rescaled to the output variance and mean "
                          "that the BatchNormalization statistics predict (no calibration data)")


def _channel_sums(node, w: np.ndarray, g: int, per_in: int):
    """(Σ w, Σ w²) over each input channel's taps, as (inputs, outputs) of conv group g:
    what the output's mean and variance need when the inputs are taken as independent.
    Summed on the weight's own layout, not on the (transposed) weight matrix: no copy."""
    if node.op_type == "Conv":
        per_out = w.shape[0] // groups_of(node)
        wg = w[g * per_out:(g + 1) * per_out].reshape(per_out, per_in, -1)
        return wg.sum(axis=2).T, np.square(wg).sum(axis=2).T
    m = weight_matrix(node, w, g)
    return m, np.square(m)


def _as_pruned(m: np.ndarray, removed_rows: np.ndarray, merged: dict | None) -> np.ndarray:
    """The original weight matrix as the pruned layer now has it: removed rows zero, and
    rows that neuron merging (passes/merge_neurons.py) folded in added to their kept row."""
    out = m.copy()
    for r, (k, scale) in (merged or {}).items():   # merging touches group-1 layers only
        out[k] += scale * m[r]
    out[removed_rows] = 0.0
    return out


def _apply_scale(model, node, scale) -> None:
    if node.op_type == "Conv":   # output channels on axis 0, in group order: one product, in float32
        w = model.inits[node.input[1]]
        return set_weight(model, node, w.astype(np.float32, copy=False)
                          * scale.astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1)))
    w = model.inits[node.input[1]].astype(np.float64)
    groups = groups_of(node)
    per = len(scale) // groups
    for g in range(groups):
        w = set_weight_matrix(node, w, g, weight_matrix(node, w, g) * scale[g * per:(g + 1) * per][None, :])
    set_weight(model, node, w)
