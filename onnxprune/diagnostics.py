"""Per-group diagnostics for `onnxprune analyze --criterion C`.

Maximum Score Disagreement (MSD, DFPC's motivation for grouped saliency), in our
rank-based form: score the channels of a group once per feed-in layer (L1 of that
layer's filters), turn each feed-in's scores into normalised ranks in [0, 1]
(0 = least important), and take, per channel, the largest minus the smallest rank
over the feed-ins. A group's MSD is the maximum over its channels (its mean is also
given). 0 means every feed-in orders the channels alike; 1 means some channel is the
least important for one feed-in and the most important for another. Groups with one
feed-in have no disagreement (None).
"""
from __future__ import annotations

import numpy as np

from .channels import FEED_IN
from .saliency.magnitude import axis_norms


def score_disagreement(model, couplings) -> dict[int, tuple[float, float]]:
    nodes = model.index().nodes
    per_group: dict[int, dict[str, np.ndarray]] = {}
    for s in couplings.slices:
        if s.role != FEED_IN:
            continue
        norms = axis_norms(model.inits[nodes[s.node].input[s.input]], s.axis)
        classes = couplings.class_of[s.ids]
        for g in np.unique(couplings.group_of[classes]).tolist():
            group = couplings.groups[g]
            totals = np.zeros(couplings.n_classes)
            np.add.at(totals, classes, norms)
            per_group.setdefault(g, {})[s.node] = totals[group.classes]
    out = {}
    for g, by_layer in per_group.items():
        if len(by_layer) < 2 or couplings.groups[g].width < 2:
            continue
        ranks = np.stack([_normalised_ranks(v) for v in by_layer.values()])
        spread = ranks.max(axis=0) - ranks.min(axis=0)
        out[g] = (float(spread.max()), float(spread.mean()))
    return out


def _normalised_ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1)


def group_diagnostics(model, couplings, scores: np.ndarray) -> list[dict]:
    msd = score_disagreement(model, couplings)
    rows = []
    for g in couplings.groups:
        s = scores[g.classes]
        rows.append({"group": g.index, "width": g.width, "frozen": g.frozen, "feed_in": g.feed_in,
                     "feed_out": g.feed_out,
                     "score_min": float(s.min()), "score_median": float(np.median(s)),
                     "score_max": float(s.max()),
                     "msd_max": msd.get(g.index, (None, None))[0], "msd_mean": msd.get(g.index, (None, None))[1]})
    return rows
