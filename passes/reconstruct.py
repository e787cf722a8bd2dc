"""Layer-wise least-squares reconstruction (docs/methods.md §5): every layer whose input
lost channels is refit, in closed form, so that its output on the calibration data —
computed from the already pruned and already repaired network — matches the original
network's output, with W₀ the layer's current (pruned, not yet refit) weights:

    min_W', b'  ‖ X' W' + b' − Y ‖² + λ ‖W' − W₀‖²

X' are the layer's input rows in the pruned model (im2col patches per conv group, feature
vectors for Gemm/MatMul), Y the original layer's output rows. XᵀX and XᵀY are accumulated
batch by batch (memory: (fan-in)² per layer, not activations × samples). Layers are refit
in graph order, in chunks: each chunk's inputs come from the network with every earlier
chunk already refit, so errors do not pile up layer after layer. Small models get one
chunk per layer; for big ones the number of chunks follows a compute budget, and a
memory budget for the accumulated sums. How many rows a layer takes, and in what precision,
is in docs/methods.md §5.3 ("Cost on big models").

Where the rows are too few for the fan-in, each output channel only gets an affine
correction (one scale, one shift) of its current value — the same statistics the
normal equations already hold.
"""
from __future__ import annotations

import math

import numpy as np

from onnxprune.graph import attr
from onnxprune.layer_data import (MAX_POSITIONS, Positions, bias, can_take_bias, groups_of, kept_outputs,
                                  n_positions, out_rows, positions_per_sample,
                                  refit_chunks, refit_targets, rows, set_bias, set_weight,
                                  set_weight_matrix, stream_pair, weight_matrix)

RIDGE = 1e-3            # λ relative to the mean diagonal of XᵀX (benchmarks/RESULTS_accuracy.md)
MIN_ROWS_PER_DIM = 2    # fewer rows than this per unknown: affine correction only
FLUSH_ROWS = 1024       # rows gathered per update of a layer's XᵀX


def run(model, step) -> None:
    if step.calibration is None:
        return
    targets = refit_targets(model, step.couplings, step.kept)
    if not targets:
        return
    errors, fallbacks = [], 0
    nodes = model.index().nodes
    nbytes = {t: system_bytes(nodes[t], model.inits[nodes[t].input[1]].shape) for t in targets}
    for chunk in refit_chunks(model, targets, step.calibration_size, nbytes.get):
        systems = _accumulate(model, step, chunk)
        nodes = model.index().nodes
        for name in chunk:
            before, after, affine = _solve_and_write(model, nodes[name], systems[name])
            errors.append((before, after))
            fallbacks += affine
        model.touch()
    before = float(np.median([e[0] for e in errors]))
    after = float(np.median([e[1] for e in errors]))
    step.notes.append(f"reconstruct: {len(targets)} layer(s) refit by least squares on "
                      f"{step.calibration_size} calibration samples; median relative output error "
                      f"{before:.3f} -> {after:.3f}" + (f"; {fallbacks} with an affine correction only "
                                                        "(too few rows)" if fallbacks else ""))


class NormalEquations:
    """XᵀX, XᵀY and what the errors need, for one conv group of one layer."""

    def __init__(self, w_current: np.ndarray):
        dim, width = w_current.shape
        self.w = w_current                      # the layer's current matrix (inputs, outputs)
        self.g = np.zeros((dim + 1, dim + 1))   # last row/column: the bias
        self.xy = np.zeros((dim + 1, width))
        self.yy = np.zeros(width)
        self.n = 0
        self._held, self._rows = [], 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Rows are held until there are FLUSH_ROWS of them: each update rewrites all of
        XᵀX, which for a wide layer costs as much as the products of a few hundred rows."""
        self._held.append((x, y))
        self._rows += x.shape[0]
        if self._rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """The held rows into the sums. The products run in the rows' precision (float32:
        half the time of float64, over at most a few thousand rows) and are summed in float64."""
        if not self._held:
            return
        x, y = (np.concatenate(parts) for parts in zip(*self._held))
        self._held, self._rows = [], 0
        dim = x.shape[1]
        self.g[:dim, :dim] += x.T @ x           # x.T @ x: numpy computes one triangle (syrk)
        sx = x.sum(axis=0, dtype=np.float64)
        self.g[:dim, dim] += sx
        self.g[dim, :dim] += sx
        self.g[dim, dim] += x.shape[0]
        self.xy[:dim] += x.T @ y
        y = y.astype(np.float64)
        self.xy[dim] += y.sum(axis=0)
        self.yy += np.einsum("ij,ij->j", y, y)
        self.n += x.shape[0]

    @property
    def ysum(self) -> np.ndarray:
        return self.xy[-1]

    def nbytes(self) -> int:
        return self.g.nbytes + self.xy.nbytes


def system_bytes(node, w_shape) -> int:
    """What a layer's NormalEquations hold (float64), before they are made."""
    groups = groups_of(node)
    if node.op_type == "Conv":
        dim, width = int(np.prod(w_shape[1:])), w_shape[0] // groups
    else:
        dim, width = (w_shape[1], w_shape[0]) if node.op_type == "Gemm" and attr(node, "transB", 0) else w_shape
    return 8 * groups * (dim + 1) * (dim + 1 + width)


def _accumulate(model, step, chunk) -> dict:
    nodes = model.index().nodes
    positions = Positions(MAX_POSITIONS)
    systems, limits = {}, {}
    for name in chunk:
        node = nodes[name]
        w = model.inits[node.input[1]].astype(np.float64)
        systems[name] = [NormalEquations(weight_matrix(node, w, g)) for g in range(groups_of(node))]
        limits[name] = positions_per_sample(systems[name][0].w.shape[0], step.calibration_size)

    def consume(slim_values, original_values):
        for name in chunk:
            node = nodes[name]
            x = slim_values[node.input[0]]
            y = kept_outputs(step.couplings, step.kept, node, original_values[node.output[0]])
            picked = positions.pick(n_positions(node, y.shape), limits[name])
            w_shape = model.inits[node.input[1]].shape
            for g, system in enumerate(systems[name]):
                system.add(rows(node, x, w_shape, g, picked), out_rows(node, y, g, picked))

    stream_pair(model, step.original, [nodes[n].input[0] for n in chunk],
                [nodes[n].output[0] for n in chunk], step.calibration, consume)
    for group_systems in systems.values():
        for system in group_systems:
            system.flush()
    return systems


def _solve_and_write(model, node, systems) -> tuple[float, float, bool]:
    """Refit one layer; returns its relative output error before and after, and whether
    only the affine correction was possible."""
    w = model.inits[node.input[1]].astype(np.float64)
    width_total = sum(s.xy.shape[1] for s in systems)
    b_now = bias(model, node, width_total)
    new_w, new_b, err_before, err_after, affine = w, [], 0.0, 0.0, False
    spread = 0.0
    for g, s in enumerate(systems):
        b_g = b_now[g * s.xy.shape[1]:(g + 1) * s.xy.shape[1]] if b_now is not None else np.zeros(s.xy.shape[1])
        current = np.vstack([s.w, b_g[None, :]])
        spread += float((s.yy - s.ysum ** 2 / max(s.n, 1)).sum())
        err_before += _sse(s, current)
        if s.n >= MIN_ROWS_PER_DIM * s.g.shape[0]:
            solution = _ridge(s, with_bias=can_take_bias(node))
        else:
            solution, affine = _affine(s), True
        err_after += _sse(s, solution)
        new_w = set_weight_matrix(node, new_w, g, solution[:-1])
        new_b.append(solution[-1])
    set_weight(model, node, new_w)
    if can_take_bias(node):
        set_bias(model, node, np.concatenate(new_b), model.inits[node.input[1]].dtype)
    return relative_error(err_before, spread), relative_error(err_after, spread), affine


def relative_error(sse: float, spread: float) -> float:
    """sqrt(SSE / spread). Both come from the normal equations (yy - 2 m·xy + m·G·m), where
    cancellation can leave an exact fit a tiny negative SSE: that is zero error."""
    return math.sqrt(max(sse, 0.0) / max(spread, 1e-30))


def _sse(s: NormalEquations, m: np.ndarray) -> float:
    """Σ ‖X m − Y‖² from the accumulated sums (m includes the bias row)."""
    return float(s.yy.sum() - 2 * np.sum(m * s.xy) + np.sum(m * (s.g @ m)))


def _ridge(s: NormalEquations, with_bias: bool) -> np.ndarray:
    """The ridge solution pulled toward the layer's current weights, not toward zero: where
    the calibration rows say little (few samples, synthetic images), the pruned layer keeps
    what it had rather than shrinking."""
    dim = s.g.shape[0] - 1
    lam = RIDGE * max(np.trace(s.g[:dim, :dim]) / max(dim, 1), 1e-12)
    a = s.g + np.diag(np.r_[np.full(dim, lam), 0.0])
    rhs = s.xy + np.vstack([lam * s.w, np.zeros((1, s.w.shape[1]))])
    if not with_bias:   # MatMul: no bias to write; solve without the ones column
        sol = _solve(a[:dim, :dim], rhs[:dim])
        return np.vstack([sol, np.zeros((1, sol.shape[1]))])
    return _solve(a, rhs)


def _solve(a, b):
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def _affine(s: NormalEquations) -> np.ndarray:
    """y ≈ a·(z + b) + c per output channel, with z = X W_current: the sums of z, z² and y·z
    come from XᵀX and XᵀY, so no pass computes z."""
    n, dim = max(s.n, 1), s.w.shape[0]
    xx = s.g[:dim, :dim]
    sz = s.g[dim, :dim] @ s.w
    szz = np.einsum("ij,ij->j", s.w, xx @ s.w)
    syz = np.einsum("ij,ij->j", s.w, s.xy[:dim])
    var_z = szz / n - (sz / n) ** 2
    cov = syz / n - (sz / n) * (s.ysum / n)
    a = np.where(var_z > 1e-12, cov / np.maximum(var_z, 1e-12), 1.0)
    c = s.ysum / n - a * sz / n
    return np.vstack([s.w * a[None, :], c[None, :]])
