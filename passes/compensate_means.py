"""Mean compensation (docs/methods.md §5): a removed input channel c of a layer contributed
W[:, c] ⊛ x_c; replace it by its expectation. The expected contribution of every removed
input column (a channel at one kernel tap, or one feature) is added to the layer's bias:

    b ← b + E[X[:, removed]] · W[removed, :]

with the expectation taken over the calibration data and over output positions, so zero
padding at the borders is averaged in. Without calibration data the expectations are
predicted from the BatchNormalization statistics in the graph (onnxprune/moments.py). Exact in expectation. Where fold_removed_constants
already folded the value removed channels would have with their filters zeroed (a bias
through a ReLU, say), the expectation replaces that fold: it is what the original layer
actually received on average.
"""
from __future__ import annotations

import numpy as np

from onnxprune.moments import predict
from onnxprune.layer_data import (MAX_POSITIONS, input_columns, removed_inputs, Moments, Positions, bias, can_take_bias, groups_of, n_positions, rows,
                                  set_bias, stream_pair, weight_matrix)


def run(model, step) -> None:
    original = step.original
    onodes = original.index().nodes
    removed_in = removed_inputs(step.couplings, step.kept)
    targets = [n.name for n in model.graph.node
               if n.name in removed_in and can_take_bias(n) and n.op_type in ("Conv", "Gemm")]
    if not targets:
        return
    means = _measured_means(original, onodes, targets, step) if step.calibration is not None \
        else _predicted_means(original, onodes, targets)
    targets = [t for t in targets if t in means]
    out_ids = {p.node: p.ids for p in step.couplings.producers}
    nodes = model.index().nodes
    for t in targets:
        node = onodes[t]
        w = original.inits[node.input[1]].astype(np.float64)
        removed_cols = input_columns(node, w, removed_in[t])
        if step.merged.get(t):   # merged into kept inputs by merge_neurons: not missing any more
            removed_cols = removed_cols.copy()
            removed_cols[list(step.merged[t])] = False
        delta = np.concatenate([mean[removed_cols] @ weight_matrix(node, w, g)[removed_cols]
                                for g, mean in enumerate(means[t])])
        if t in step.folds:   # the expectation replaces the zeroed-filter constant
            delta = delta - step.folds[t].delta
        if t in out_ids:   # the layer's own removed outputs are gone
            delta = delta[step.kept(out_ids[t])]
        slim_node = nodes[t]
        set_bias(model, slim_node, bias(model, slim_node, len(delta)) + delta,
                 model.inits[slim_node.input[1]].dtype)
    model.touch()
    source = (f"{step.calibration_size} calibration samples" if step.calibration is not None
              else "means predicted from BatchNormalization statistics, no calibration data")
    step.notes.append(f"compensate_means: expected contribution of removed inputs added to the bias "
                      f"of {len(targets)} layer(s) ({source})")


def _measured_means(original, onodes, targets, step) -> dict:
    """Layer -> per conv group, the mean of each input column over the calibration data."""
    positions = Positions(MAX_POSITIONS)
    moments = {t: [Moments() for _ in range(groups_of(onodes[t]))] for t in targets}

    def consume(_, original_values):
        for t in targets:
            node = onodes[t]
            x = original_values[node.input[0]]
            picked = positions.pick(n_positions(node, original.shapes[node.output[0]]))
            for g, m in enumerate(moments[t]):
                m.add(rows(node, x, original.inits[node.input[1]].shape, g, picked))

    stream_pair(original, original, [], [onodes[t].input[0] for t in targets], step.calibration, consume)
    return {t: [m.mean for m in ms] for t, ms in moments.items()}


def _predicted_means(original, onodes, targets) -> dict:
    """The same, predicted from BatchNormalization statistics (onnxprune/moments.py); zero
    padding at the borders is not counted. Layers whose input has no estimate are left out."""
    estimates = predict(original)
    out = {}
    for t in targets:
        node = onodes[t]
        if node.input[0] not in estimates:
            continue
        mean = estimates[node.input[0]][0]
        w = original.inits[node.input[1]]
        groups = groups_of(node)
        per_in = len(mean) // groups
        taps = int(np.prod(w.shape[2:])) if node.op_type == "Conv" else 1
        out[t] = [np.repeat(mean[g * per_in:(g + 1) * per_in], taps) for g in range(groups)]
    return out
