"""The sensitivity allocator (`--allocator sensitivity`, docs/methods.md §5.4): per-group
channel counts from measured fidelity, for a MAC or parameter target.

For every prunable group alone, thinned to a few kept counts by the criterion's order,
the model's outputs on a subset of the calibration data are compared with the original's:
loss = Σ_outputs ‖a − b‖² / ‖a‖² over the samples. The counts come from the greedy of
onnxprune/density.py, the step loss being the rise of the group's measured curve
(interpolated linearly in the kept count, made non-increasing in it), so the budget goes
where output error grows least per MAC (or parameter) saved.

Fast: one masked copy of the model whose feed-out inputs are multiplied by masks fed at
run time (the masking oracle's reference, with no rewrite), so every measurement is one
run of one session. Bounded: at most MAX_EVALUATIONS group × count measurements, and no
more than MAC_BUDGET multiply-accumulates in all (fewer counts per group on models with
many groups or many MACs; never fewer than one per group), on at most SAMPLES samples."""
from __future__ import annotations

import time

import numpy as np
import onnx

from .budget import class_widths, floor_of, group_round_to, prunable_groups, removal_order, rounded_keep
from .cost import cost
from .density import allocate_greedy
from .masking import _mask_shape, _rebuild, layer_dtype
from .runtime import model_session, run_chunked
from .saliency.data import consumers, require_data

KEEP_FRACTIONS = (0.75, 0.5, 0.25)   # measured per group, plus its floor
SAMPLES = 64
MAX_EVALUATIONS = 400
MAC_BUDGET = 1e13    # about two minutes of one CPU core's convolutions


def allocate_sensitivity(model, couplings, scores, metric: str, target: float, min_keep: float = 0.1,
                         round_to: int = 1, coupled: str = "all", fold: bool = True, data=None):
    """Returns (TargetResult, notes)."""
    data = require_data(data, "--allocator sensitivity")
    curves, note = measured_curves(model, couplings, scores, prunable_groups(couplings, coupled), min_keep,
                                   round_to, data)
    result = allocate_greedy(model, couplings, scores, metric, target, min_keep, round_to, coupled, fold,
                             lambda gi, before, after, _: curves[gi](after) - curves[gi](before))
    return result, [note]


def measured_curves(model, couplings, scores, groups, min_keep: float, round_to: int, data):
    """Each group's loss curve over its kept count, measured with the other groups whole:
    ({group index: _Curve}, a note saying what was measured)."""
    start = time.perf_counter()
    probe = _MaskedModel(model, couplings, data)
    widths = class_widths(couplings)
    runs = min(MAX_EVALUATIONS, MAC_BUDGET // max(cost(model).macs * probe.samples, 1))
    per_group = max(1, min(len(KEEP_FRACTIONS) + 1, int(runs) // max(len(groups), 1)))
    curves = {}
    for g in groups:
        floor, step = floor_of(g.width, min_keep), group_round_to(g, widths, round_to)
        keeps = _keeps(g.width, floor, step, per_group)
        order = removal_order([g], scores, "global", "raw")
        losses = [probe.loss(order[:g.width - k]) for k in keeps]
        curves[g.index] = _Curve([g.width] + keeps, [0.0] + losses)
    evaluations = sum(len(c.keeps) - 1 for c in curves.values())
    note = (f"sensitivity: {len(groups)} group(s), {evaluations} thinned model(s) measured on "
            f"{probe.samples} calibration sample(s) in {time.perf_counter() - start:.1f} s")
    return curves, note


def group_weights(model, couplings, scores, groups, min_keep: float, round_to: int, data=None):
    """Per-group sensitivity, scaled to mean 1, that weights the synexp objective
    (`--allocator synexp-weighted`): with calibration data, the measured output loss of the
    group thinned to half its width; without, the share of the group's score mass that its
    weaker half carries (a group whose weak half scores almost nothing loses little when
    thinned). Floored at WEIGHT_FLOOR so that no group is free to empty to its floor.
    Returns ({group index: weight}, notes)."""
    if data is not None:
        curves, note = measured_curves(model, couplings, scores, groups, min_keep, round_to, data)
        raw = {g.index: curves[g.index](g.width / 2) for g in groups}
    else:
        note = "synexp-weighted: data-free weights, the score share of each group's weaker half"
        raw = {g.index: _weak_half_share(scores[g.classes]) for g in groups}
    mean = float(np.mean(list(raw.values()))) if raw else 0.0
    if mean <= 0:
        return {gi: 1.0 for gi in raw}, [note]
    return {gi: max(v / mean, WEIGHT_FLOOR) for gi, v in raw.items()}, [note]


WEIGHT_FLOOR = 0.05


def _weak_half_share(values: np.ndarray) -> float:
    values = np.sort(np.maximum(np.asarray(values, dtype=np.float64), 0))
    total = values.sum()
    return float(values[:len(values) // 2].sum() / total) if total > 0 else 0.5


def _keeps(width: int, floor: int, step: int, limit: int) -> list[int]:
    """Kept counts to measure, widest first: the fractions, then the floor, rounded as the
    allocator rounds, below the full width; at most `limit` (the narrowest kept)."""
    keeps = sorted({rounded_keep(max(floor, round(f * width)), width, floor, step) for f in KEEP_FRACTIONS}
                   | {rounded_keep(floor, width, floor, step)}, reverse=True)
    keeps = [k for k in keeps if k < width]
    return keeps[-limit:] if len(keeps) > limit else keeps


class _Curve:
    """Loss as a function of the kept count: linear between measurements, flat above the
    widest, extended linearly below the narrowest; non-increasing in the count."""

    def __init__(self, keeps, losses):
        order = np.argsort(keeps)
        self.keeps = np.asarray(keeps, dtype=np.float64)[order]
        self.losses = np.maximum.accumulate(np.asarray(losses, dtype=np.float64)[order][::-1])[::-1]

    def __call__(self, k: float) -> float:
        if len(self.keeps) > 1 and k < self.keeps[0]:
            slope = (self.losses[0] - self.losses[1]) / (self.keeps[1] - self.keeps[0])
            return float(self.losses[0] + slope * (self.keeps[0] - k))
        return float(np.interp(k, self.keeps, self.losses))


class _MaskedModel:
    """The model with every feed-out input multiplied by a channel mask fed at run time."""

    def __init__(self, model, couplings, data):
        self.couplings = couplings
        masked = model.copy()
        self.masks, before = {}, {}
        users = {u.node.name: u for u in consumers(model, couplings)}
        for node in masked.graph.node:
            u = users.get(node.name)
            if u is None:
                continue
            name, out = f"{node.name}__sensitivity_mask", f"{u.tensor}__masked_{node.name}"
            ones = _mask_shape(np.ones(len(u.ids), bool), u.axis, len(model.shapes[u.tensor]),
                               layer_dtype(model, node))
            self.masks[name] = (u, ones)
            masked.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(ones.dtype), list(ones.shape)))
            before[node.name] = [onnx.helper.make_node("Mul", [u.tensor, name], [out], name=f"{node.name}__mask")]
            node.input[0] = out
        _rebuild(masked, before, {})
        self.sess = model_session(masked)
        data_inputs = [i for i in self.sess.get_inputs() if i.name not in self.masks]
        fixed = {i.shape[0] for i in data_inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
        self.batch = fixed.pop() if len(fixed) == 1 else None
        self.feeds = self._samples(data)
        self.samples = len(next(iter(self.feeds.values())))
        self.reference = self._run(None)

    def _samples(self, data) -> dict:
        parts, n = {}, 0
        for feeds in data.batches():
            for k, v in feeds.items():
                parts.setdefault(k, []).append(v[:SAMPLES - n])
            n += len(next(iter(feeds.values())))
            if n >= SAMPLES:
                break
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _run(self, removed):
        kept = None if removed is None else self.couplings.kept_fn(removed)
        masks = {name: ones if kept is None else (ones * _mask_shape(kept(u.ids), u.axis, ones.ndim, ones.dtype))
                 for name, (u, ones) in self.masks.items()}
        return [np.asarray(o, dtype=np.float64) for o in
                run_chunked(self.sess, self.feeds, self.batch, run=lambda f: self.sess.run(None, {**f, **masks}))]

    def loss(self, removed) -> float:
        """Σ over outputs of ‖a − b‖² / ‖a‖² over the samples, with `removed` classes masked."""
        out = self._run(np.asarray(removed).tolist())
        return float(sum(np.sum((a - b) ** 2) / max(np.sum(a ** 2), 1e-30)
                         for a, b in zip(self.reference, out) if a is not None and b is not None))
