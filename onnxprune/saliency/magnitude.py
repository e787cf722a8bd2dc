"""Magnitude baselines. Grouped saliency: a class's score sums the filters of every
feed-in layer that produces it (Torch-Pruning's and DFPC's grouped L1/L2). Classes with
no feed-in weights (rare) fall back to the feed-out weights that read them."""
from __future__ import annotations

import numpy as np

from ..channels import FEED_IN, FEED_OUT


def axis_norms(w: np.ndarray, axis: int, power: int = 1, chunk_bytes: int = 64 * 2**20) -> np.ndarray:
    """Σ |w|^power over every axis but `axis`, one entry per index of `axis`; computed in
    chunks along `axis` so a large (memory-mapped) weight is never copied whole."""
    n = w.shape[axis]
    step = max(1, int(chunk_bytes // max(w.nbytes // max(n, 1), 1)))
    out = np.empty(n)
    for start in range(0, n, step):
        part = np.abs(np.take(w, np.arange(start, min(n, start + step)), axis=axis))
        if power != 1:
            part = part.astype(np.float64) ** power
        out[start:start + part.shape[axis]] = np.moveaxis(part, axis, 0).reshape(part.shape[axis], -1) \
            .sum(axis=1, dtype=np.float64)
    return out


def _per_class(model, couplings, power: int) -> np.ndarray:
    totals = {role: np.zeros(couplings.n_classes) for role in (FEED_IN, FEED_OUT)}
    nodes = model.index().nodes
    for s in couplings.slices:
        if s.role not in totals:
            continue
        norms = axis_norms(model.inits[nodes[s.node].input[s.input]], s.axis, power)
        np.add.at(totals[s.role], couplings.class_of[s.ids], norms)
    scores = np.where(totals[FEED_IN] > 0, totals[FEED_IN], totals[FEED_OUT])
    return scores if power == 1 else np.sqrt(scores)


def l1(model, couplings, seed=0):
    return _per_class(model, couplings, 1)


def l2(model, couplings, seed=0):
    return _per_class(model, couplings, 2)


def random_scores(model, couplings, seed=0):
    return np.random.default_rng(seed).random(couplings.n_classes)
