"""Magnitude baselines. Grouped saliency: a class's score sums the filters of every
feed-in layer that produces it (Torch-Pruning's and DFPC's grouped L1/L2). Classes with
no feed-in weights (rare) fall back to the feed-out weights that read them."""
from __future__ import annotations

import numpy as np

from ..couplings import FEED_IN, FEED_OUT


def _per_class(model, couplings, power: int) -> np.ndarray:
    totals = {role: np.zeros(couplings.n_classes) for role in (FEED_IN, FEED_OUT)}
    nodes = model.nodes_by_name()
    for s in couplings.slices:
        if s.role not in totals:
            continue
        w = model.inits[nodes[s.node].input[s.input]]
        flat = np.moveaxis(np.asarray(w, dtype=np.float64), s.axis, 0).reshape(len(s.ids), -1)
        norms = (np.abs(flat) ** power).sum(axis=1)
        np.add.at(totals[s.role], couplings.class_of[s.ids], norms)
    scores = np.where(totals[FEED_IN] > 0, totals[FEED_IN], totals[FEED_OUT])
    return scores if power == 1 else np.sqrt(scores)


def l1(model, couplings, seed=0):
    return _per_class(model, couplings, 1)


def l2(model, couplings, seed=0):
    return _per_class(model, couplings, 2)


def random_scores(model, couplings, seed=0):
    return np.random.default_rng(seed).random(couplings.n_classes)
