"""FTWT heat-map mass as a static criterion (docs/methods.md §3).

Per calibration sample and per activation tensor a layer reads (a feed-out's input):
z_j = max over positions of |x_j|, normalised over channels to ẑ; the channels kept on
that sample are the fewest, by ẑ descending, whose cumulative mass reaches r. A class's
score is its keep frequency over the samples, taken at the tensor where it is kept most
often (a residual stream is read at several points), plus its mean normalised mass
scaled below 1/N as a tie-break. Channels that are zero on every sample at every tensor
are *dead*: score 0, so they go first, and the report counts them."""
from __future__ import annotations

import numpy as np

from .data import channels_last, consumers, per_class, require_data, stream_original
from .scores import Scores

# r = 1 (every channel that fires counts; ties go by mean mass) met the accuracy bar in 10 of
# 16 digits cells after lsq, r = 0.9 in 8 (benchmarks/RESULTS_accuracy.md, criteria with data)
DEFAULT_MASS = 1.0


def heatmap(model, couplings, seed=0, data=None, mass: float = DEFAULT_MASS) -> Scores:
    data = require_data(data, "criterion 'heatmap'")
    tensors = {}
    for u in consumers(model, couplings):
        tensors.setdefault(u.tensor, (u.axis, u.ids))
    stats = {t: _TensorStats(ids) for t, (_, ids) in tensors.items()}

    def consume(values):
        for t, (axis, _) in tensors.items():
            stats[t].add(values[t], axis, mass)

    stream_original(model, tensors, data, consume)
    scores = np.zeros(couplings.n_classes)
    fired = np.zeros(couplings.n_classes, dtype=bool)
    seen = np.zeros(couplings.n_classes, dtype=bool)
    for s in stats.values():
        n = max(s.n, 1)
        value = s.kept / n + (s.mass / n) / (n + 1)   # mean mass ≤ 1: never reorders frequencies
        per_class(couplings, s.unique, value, scores, np.maximum)
        per_class(couplings, s.unique, s.fired, fired, np.logical_or)
        seen[couplings.class_of[s.unique]] = True
    dead = seen & ~fired
    scores[dead] = 0.0
    notes = [f"heat-map mass r={mass:g} over {len(tensors)} activation tensor(s), {data.size} calibration samples"]
    if dead.any():
        notes.append(_dead_note(couplings, dead, data.size))
    return Scores(scores, notes=notes)


heatmap.needs_data = True


class _TensorStats:
    """Per channel identity of one tensor: samples where it was kept, summed normalised
    mass, and whether it was ever nonzero."""

    def __init__(self, ids: np.ndarray):
        self.unique, self.inverse = np.unique(ids, return_inverse=True)
        k = len(self.unique)
        self.kept, self.mass, self.fired, self.n = np.zeros(k), np.zeros(k), np.zeros(k, bool), 0

    def add(self, x: np.ndarray, axis: int, r: float) -> None:
        ranking = MassRanking.of(x, axis, self.inverse, len(self.unique))
        self.kept += ranking.keep(r).sum(axis=0)
        self.mass += ranking.share.sum(axis=0)
        self.fired |= ranking.fired.any(axis=0)
        self.n += ranking.share.shape[0]


class MassRanking:
    """Per sample, the channels of one tensor ranked by normalised peak mass ẑ (`share`),
    so that the mask for any r is a comparison: the dynamic estimate (onnxprune/ftwt.py)
    asks for many r on the same samples."""

    def __init__(self, share: np.ndarray, fired: np.ndarray):
        self.share, self.fired = share, fired                          # (samples, channels)
        self.order = np.argsort(-share, axis=1, kind="stable")
        self.cumulative = np.cumsum(np.take_along_axis(share, self.order, axis=1), axis=1)

    @classmethod
    def of(cls, x: np.ndarray, axis: int, inverse: np.ndarray, k: int) -> "MassRanking":
        """`inverse[p]`: the channel (of k) at position p of the axis; a flattened channel
        (several positions) peaks at the max over its entries."""
        peaks = np.abs(channels_last(x, axis)).max(axis=1)            # (samples, positions on the axis)
        z = np.zeros((peaks.shape[0], k))
        np.maximum.at(z.T, inverse, peaks.T)
        total = z.sum(axis=1, keepdims=True)
        return cls(np.divide(z, total, out=np.zeros_like(z), where=total > 0), z > 0)

    def keep(self, r: float) -> np.ndarray:
        """(samples, channels) mask: the fewest channels by ẑ descending whose mass reaches
        r, among those that fired."""
        count = (self.cumulative < r - 1e-12).sum(axis=1) + 1
        keep = np.zeros_like(self.share, dtype=bool)
        np.put_along_axis(keep, self.order, np.arange(self.share.shape[1])[None, :] < count[:, None], axis=1)
        return keep & self.fired


def _dead_note(couplings, dead: np.ndarray, samples: int) -> str:
    where = {}
    for c in np.flatnonzero(dead).tolist():
        g = couplings.groups[int(couplings.group_of[c])]
        key = ", ".join(g.feed_in[:2]) + (", ..." if len(g.feed_in) > 2 else "") or f"group {g.index}"
        where[key] = where.get(key, 0) + 1
    parts = "; ".join(f"{n} after {k}" for k, n in sorted(where.items(), key=lambda kv: -kv[1])[:8])
    return (f"{int(dead.sum())} dead channel class(es): zero on all {samples} calibration samples, "
            f"scored lowest ({parts}{'; ...' if len(where) > 8 else ''})")
