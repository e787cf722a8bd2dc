"""Reconstruction-aware criterion `lsq-aware` (docs/methods.md §5.4): what removing a channel
costs *after* the consumer's least-squares refit (passes/reconstruct.py), in the optimal
brain surgeon form.

A consumer computes Y = X W (+ b) on rows X (im2col patches for a conv, features for
Gemm / MatMul). With the Gram matrix H = XᵀX + λ (ridge; the bias column unregularised),
forcing the block B of rows of W that read channel c to zero and refitting every other
row raises Σ ‖X W' − X W‖² + λ‖W' − W‖² by

    cost_c = tr( W_Bᵀ ((H⁻¹)_BB)⁻¹ W_B )

(B: the k×k taps of the channel in a conv, the entries of a flattened channel in a Gemm).
Costs are per row and summed over the class's consumers. A channel that its neighbours
can rebuild costs little even when it is large. H accumulates batch by batch from the
original model; consumers whose fan-in is too large for a dense H, or that the refit
does not handle, get the no-refit cost E[x²]·‖W‖² instead (a note counts them)."""
from __future__ import annotations

import numpy as np

from ..graph import attr
from ..layer_data import (REFITTABLE, Moments, Positions, channel_rows, groups_of, n_positions,
                          rows, weight_matrix)
from ..passes.reconstruct import RIDGE
from .data import consumers, per_class, require_data, stream_original
from .scores import Scores

MAX_DIM = 4096              # fan-in above which H (dim² float64) is not built
POSITIONS = 64              # output positions per sample in H: a ranking needs fewer rows than a refit
GRAM_BYTES = 512 * 2 ** 20  # Gram matrices held during one pass over the data


def lsq_aware(model, couplings, seed=0, data=None) -> Scores:
    data = require_data(data, "criterion 'lsq-aware'")
    users = consumers(model, couplings)
    exact = [u for u in users if _refittable(model, u.node)]
    rest = [u for u in users if u not in exact]
    scores = np.zeros(couplings.n_classes)
    for chunk in _chunks(model, exact):
        grams = _accumulate(model, chunk, data)
        for u in chunk:
            for g, gram in enumerate(grams[u.node.name]):
                costs, row_ids = block_costs_of(model, u, g, gram)
                per_class(couplings, row_ids, costs, scores)
    if rest:
        _energy_costs(model, couplings, rest, data, scores)
    notes = [f"{len(exact)} consumer(s) scored after a least-squares refit on {data.size} calibration samples"]
    if rest:
        notes.append(f"{len(rest)} consumer(s) ({', '.join(u.node.name for u in rest[:4])}"
                     f"{', ...' if len(rest) > 4 else ''}) without a refit model: E[x²]·‖W‖² instead")
    return Scores(scores, notes=notes)


lsq_aware.needs_data = True


def removal_costs(gram: np.ndarray, w: np.ndarray, blocks: list[np.ndarray], ridge: float = RIDGE,
                  bias: bool = True) -> np.ndarray:
    """Per block of rows of `w` (inputs, outputs): the rise of ‖X W' − X W‖² + λ‖W' − W‖²
    when the block is zeroed and the other rows (and the bias, last row/column of `gram`
    when `bias`) are refit. λ = ridge × the mean diagonal of the inputs' Gram."""
    dim = w.shape[0]
    gram = gram if bias else gram[:dim, :dim]
    lam = ridge * max(np.trace(gram[:dim, :dim]) / max(dim, 1), 1e-12)
    h = gram + np.diag(np.r_[np.full(dim, lam), np.zeros(gram.shape[0] - dim)])
    try:
        hinv = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        hinv = np.linalg.pinv(h)
    out = np.empty(len(blocks))
    for k, b in enumerate(blocks):
        wb = w[b]
        out[k] = float(np.sum(wb * np.linalg.solve(hinv[np.ix_(b, b)], wb)))
    return out


def block_costs_of(model, u, g: int, gram) -> tuple[np.ndarray, np.ndarray]:
    """(cost per channel identity of conv group g, those identities), per row."""
    g_sum, n = gram
    w = weight_matrix(u.node, u.weight, g)
    taps = w.shape[0] // _group_inputs(u) if u.node.op_type == "Conv" else 1
    per = _group_inputs(u)
    ids = u.ids[g * per:(g + 1) * per] if u.node.op_type == "Conv" else u.ids
    row_ids = np.repeat(ids, taps)
    unique, inverse = np.unique(row_ids, return_inverse=True)
    blocks = [np.flatnonzero(inverse == k) for k in range(len(unique))]
    costs = removal_costs(g_sum, w, blocks, bias=u.node.op_type != "MatMul")
    return costs / max(n, 1), unique


def _group_inputs(u) -> int:
    return len(u.ids) // groups_of(u.node)


def _refittable(model, node) -> bool:
    if node.op_type not in REFITTABLE or node.input[1] not in model.inits:
        return False
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return False
    w = model.inits[node.input[1]]
    if node.op_type == "MatMul" and w.ndim != 2:
        return False
    return _dim(model, node) <= MAX_DIM


def _dim(model, node) -> int:
    w = model.inits[node.input[1]]
    if node.op_type == "Conv":
        return int(np.prod(w.shape[1:]))
    return int(weight_matrix(node, w, 0).shape[0])


def _chunks(model, users):
    """Consumers in passes whose Gram matrices fit GRAM_BYTES together."""
    chunk, size = [], 0
    for u in users:
        need = groups_of(u.node) * (_dim(model, u.node) + 1) ** 2 * 8
        if chunk and size + need > GRAM_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(u)
        size += need
    if chunk:
        yield chunk


def _accumulate(model, users, data) -> dict:
    """Per consumer and conv group: [Σ x̃ x̃ᵀ with x̃ = [x; 1], rows]."""
    positions = Positions(POSITIONS)
    grams = {u.node.name: [[np.zeros((_dim(model, u.node) + 1,) * 2), 0] for _ in range(groups_of(u.node))]
             for u in users}

    def consume(values):
        for u in users:
            x = values[u.tensor]
            out_shape = (x.shape[0],) + tuple(model.shapes[u.node.output[0]][1:])
            picked = positions.pick(n_positions(u.node, out_shape))
            w_shape = model.inits[u.node.input[1]].shape
            for g, acc in enumerate(grams[u.node.name]):
                r = rows(u.node, x, w_shape, g, picked)
                ra = np.hstack([r, np.ones((r.shape[0], 1))])
                acc[0] += ra.T @ ra
                acc[1] += r.shape[0]

    stream_original(model, [u.tensor for u in users], data, consume)
    return grams


def _energy_costs(model, couplings, users, data, scores) -> None:
    moments = {u.tensor: Moments() for u in users}
    axis_of = {u.tensor: u.axis for u in users}
    stream_original(model, moments, data,
                    lambda values: [m.add(channel_rows(values[t], axis_of[t])) for t, m in moments.items()])
    for u in users:
        m = moments[u.tensor]
        per_class(couplings, u.ids, m.ss / max(m.n, 1) * u.energy, scores)
