"""The SynExp allocator (`--allocator synexp`, docs/methods.md §4): per-group channel counts
from PreCrop's convex program, solved in channel space, then rounded and repaired.

Variables x_g = log(kept fraction of group g), log(floor_g / width_g) ≤ x_g ≤ 0. Every
weighted tensor of the CostTracker has a size fixed · Π_axes count_axis, and an axis count
is n_fixed + Σ_g n_ag · exp(x_g) (most axes belong to one group; a Concat's consumer reads
several). Expanding the products makes the model's MACs (or parameters) a posynomial in
exp(x): a sum of positive coefficients times exp(b · x), convex in x. A grouped conv's
class stands for G channels (n_ag counts them), a depthwise weight has one channel axis, so
its group is counted once. The objective Σ_l w_l log p_l is linear in x: log p_l is the
sum over the layer's channel axes of log(count / count0), which for an axis fed by several
groups is bounded below by the count-weighted mean of their x_g (Jensen; exact for one).

The program is solved by a log-barrier Newton method (a few dozen dense n × n solves, n the
number of groups), then the kept counts are rounded up to each group's `round_to` step and
the density allocator's greedy (onnxprune/density.py) removes steps from there until the
exact tracked budget is met: the same objective, started from the continuous optimum
instead of from full width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .budget import class_widths, floor_of, group_round_to, prunable_groups
from .cost import CostTracker
from .density import allocate_greedy_budgets, density_loss


@dataclass
class Program:
    """maximise a · x  s.t.  Σ_k coef_k exp(expo_k · x) ≤ budget (and each constraint of
    `also`, the same form: a second budget), lo ≤ x ≤ hi. `hi` is 0 (no group grows) unless
    given; PreConfig (onnxprune/reconfigure.py) lets groups widen up to log(max widening)."""
    a: np.ndarray         # (n,) objective weights, ≥ 0
    coef: np.ndarray      # (T,) posynomial coefficients, > 0
    expo: np.ndarray      # (T, n) exponents (non-negative integers)
    budget: float
    lo: np.ndarray        # (n,) log of the floors' kept fractions, < 0
    hi: np.ndarray | None = None   # (n,) log of the widest allowed fractions, ≥ 0
    also: tuple = ()      # further constraints, each (coef, expo, budget)

    def cost(self, x: np.ndarray) -> float:
        return float(self.coef @ np.exp(self.expo @ x))

    def constraints(self) -> list[tuple]:
        return [(self.coef, self.expo, self.budget), *self.also]

    def upper(self) -> np.ndarray:
        return np.zeros(len(self.a)) if self.hi is None else np.asarray(self.hi, dtype=np.float64)

    def fits(self, x: np.ndarray, strictly: bool = False) -> bool:
        costs = [(float(c @ np.exp(e @ x)), b) for c, e, b in self.constraints()]
        return all(v < b if strictly else v <= b for v, b in costs)


def allocate_synexp(model, couplings, scores: np.ndarray, metric: str, target: float, min_keep: float = 0.1,
                    round_to: int = 1, coupled: str = "all", fold: bool = True, weights=None,
                    also: tuple | None = None):
    """Returns the TargetResult; `weights` maps group index -> objective weight (default 1).
    `also` = (metric, target): a second budget. Both are constraints of the program; the
    greedy repair then meets the first and, from there, removes more until the second is met
    too (it only removes, so the first stays met). The result is the last budget's; its
    `earlier` says where the first one ended."""
    groups = prunable_groups(couplings, coupled)
    widths = class_widths(couplings)

    def start(tracker):
        keep = synexp_keep(tracker, groups, metric, target, min_keep, weights, also)
        return {g.index: round_up(keep[g.index], g.width, floor_of(g.width, min_keep),
                                   group_round_to(g, widths, round_to)) for g in groups}

    def loss(gi, keep_before, keep_after, step):
        return density_loss(gi, keep_before, keep_after, step) * _weight(weights, gi)

    budgets = [(metric, target)] + ([also] if also is not None else [])
    result, kept = allocate_greedy_budgets(model, couplings, scores, budgets, min_keep, round_to, coupled, fold,
                                           loss, start)
    result.earlier = {m: (t, kept[m]) for m, t in budgets[:-1]}
    return result


def synexp_keep(tracker: CostTracker, groups, metric: str, target: float, min_keep: float,
                weights=None, also: tuple | None = None) -> dict:
    """The continuous optimum on a tracker with nothing removed: group index -> kept class
    count (a float). `also` = (metric, target): a second budget constraint."""
    variables = program_variables(groups, min_keep)
    x = solve(combined_program(tracker, variables, [(metric, target)] + ([also] if also else []), min_keep, weights))
    keep = {g.index: float(g.width) for g in groups}
    keep.update({g.index: g.width * math.exp(x[i]) for i, g in enumerate(variables)})
    return keep


def program_variables(groups, min_keep: float) -> list:
    """The groups the program can move: those with room above their floor."""
    return [g for g in groups if floor_of(g.width, min_keep) < g.width]


def combined_program(tracker: CostTracker, variables, budgets, min_keep: float, weights=None, hi=None) -> Program:
    """One program for several (metric, target) budgets: the first is the constraint every
    program has, the others go to `also`; `hi` (log of the widest fraction per variable)
    lets groups grow."""
    first, *others = [build_program(tracker, variables, m, t, min_keep, weights) for m, t in budgets]
    return Program(first.a, first.coef, first.expo, first.budget, first.lo, hi,
                   tuple((p.coef, p.expo, p.budget) for p in others))


def build_program(tracker: CostTracker, groups, metric: str, target: float, min_keep: float,
                  weights=None) -> Program:
    """The program for `groups` (the variables, in order) on a tracker with nothing removed;
    the cost of every other channel is a constant."""
    var_of_group = {g.index: i for i, g in enumerate(groups)}
    n_slots = len(tracker.counts)
    # per axis slot: channels that each variable's classes hold on it; the rest stay
    parts = [dict() for _ in range(n_slots)]
    for g in groups:
        for cls in g.classes.tolist():
            for slot, n in tracker.incidence.get(cls, []):
                parts[slot][var_of_group[g.index]] = parts[slot].get(var_of_group[g.index], 0) + n
    a = np.zeros(len(groups))
    terms: dict[tuple, float] = {}
    fixed_cost = tracker.params0 if metric == "params" else tracker.macs0
    for tensor in tracker.tensors:
        per_element = (1.0 if tensor["params"] else 0.0) if metric == "params" else tensor["macs_per_element"]
        if tensor["macs_per_element"]:
            for slot in tensor["axes"]:
                for v, n in parts[slot].items():
                    a[v] += _weight(weights, groups[v].index) * n / tracker.counts[slot]
        if not per_element:
            continue
        fixed_cost -= per_element * tensor["size0"]
        expansion = {(): per_element * tensor["fixed"]}
        for slot in tensor["axes"]:
            rest = tracker.counts[slot] - sum(parts[slot].values())
            grown: dict[tuple, float] = {}
            for key, c in expansion.items():
                if rest:
                    grown[key] = grown.get(key, 0.0) + c * rest
                for v, n in parts[slot].items():
                    k = tuple(sorted(key + (v,)))
                    grown[k] = grown.get(k, 0.0) + c * n
            expansion = grown
        for key, c in expansion.items():
            terms[key] = terms.get(key, 0.0) + c
    fixed_cost += terms.pop((), 0.0)
    keys = list(terms)
    expo = np.zeros((len(keys), len(groups)))
    for row, key in enumerate(keys):
        np.add.at(expo[row], list(key), 1.0)
    base = tracker.params0 if metric == "params" else tracker.macs0
    lo = np.array([math.log(floor_of(g.width, min_keep) / g.width) for g in groups])
    return Program(a, np.array([terms[k] for k in keys]), expo, target * base - fixed_cost, lo)


def solve(p: Program, gap: float = 1e-9) -> np.ndarray:
    """Log-barrier Newton method. Returns the floors when even they exceed a budget, the
    upper bounds (full width unless widening is allowed) when they fit; otherwise x with
    a · x within `gap` · Σa of the optimum."""
    n = len(p.a)
    hi = p.upper()
    if n == 0 or p.fits(hi):
        return hi.copy()
    if any(b <= 0 for _, _, b in p.constraints()) or not p.fits(p.lo, strictly=True):
        return p.lo.copy()
    gs = [_Posynomial(c / b, e) for c, e, b in p.constraints()]   # each constraint becomes g(x) ≤ 1
    a = p.a / max(p.a.sum(), 1e-300)
    s = 0.5                       # a strictly feasible start between the floors and full width
    while any(g.terms(s * p.lo).sum() >= 1 for g in gs):
        s = (1 + s) / 2
    x = s * p.lo
    t = 1.0

    def phi(z):
        slacks = [1 - g.terms(z).sum() for g in gs]
        if min(slacks) <= 0 or np.any(z <= p.lo) or np.any(z >= hi):
            return math.inf
        return -t * (a @ z) - sum(math.log(v) for v in slacks) - np.log(z - p.lo).sum() - np.log(hi - z).sum()

    while True:
        for _ in range(100):
            grad = -t * a - 1 / (x - p.lo) + 1 / (hi - x)
            hess = np.zeros((n, n))
            for g in gs:
                e = g.terms(x)
                slack = 1 - e.sum()
                dg = g.gradient(e)
                grad += dg / slack
                hess += np.outer(dg, dg) / slack ** 2 + g.hessian(e) / slack
            hess[np.diag_indices(n)] += 1 / (x - p.lo) ** 2 + 1 / (hi - x) ** 2
            step = _cholesky_solve(hess, -grad)
            decrement = -grad @ step
            if decrement < 1e-8:   # λ²/2t bounds the centering error: negligible; rounding stalls below
                break
            size = 1.0
            if decrement < 0.1:   # close to the centre: full steps (kept feasible) converge
                while phi(x + size * step) == math.inf:   # quadratically; φ's rounding at large t
                    size /= 2                              # would stall a sufficient-decrease test
            else:
                f0 = phi(x)
                while phi(x + size * step) > f0 - 0.25 * size * decrement:
                    size /= 2
            x = x + size * step
        if (2 * n + len(gs)) / t < gap:
            return x
        t *= 50


class _Posynomial:
    """Σ_k coef_k exp(expo_k · x) with a sparse exponent matrix (a term has two or three
    groups): its terms, gradient and Hessian by index sums rather than dense products,
    which BLAS threads make slow on a loaded machine."""

    def __init__(self, coef, expo):
        self.coef, self.n = coef, expo.shape[1]
        self.rows, self.cols = np.nonzero(expo)
        self.vals = expo[self.rows, self.cols]
        pairs = [(r, i * self.n + j, expo[r, i] * expo[r, j])
                 for r, row in enumerate(expo) for i in np.flatnonzero(row) for j in np.flatnonzero(row)]
        self.pair_term, self.pair_index, self.pair_val = (np.array(v) for v in zip(*pairs))

    def terms(self, x):
        return self.coef * np.exp(np.bincount(self.rows, self.vals * x[self.cols], len(self.coef)))

    def gradient(self, e):
        return np.bincount(self.cols, self.vals * e[self.rows], self.n)

    def hessian(self, e):
        flat = np.bincount(self.pair_index, self.pair_val * e[self.pair_term], self.n * self.n)
        return flat.reshape(self.n, self.n)


def _cholesky_solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve for a symmetric positive definite matrix. LAPACK's Cholesky of a 100 x 100
    matrix takes microseconds, while np.linalg.solve's threaded LU took 20 ms on a loaded
    2-core machine; the two triangular solves are short row loops."""
    lower = np.linalg.cholesky(matrix)
    n = len(rhs)
    y = np.empty(n)
    for i in range(n):
        y[i] = (rhs[i] - lower[i, :i] @ y[:i]) / lower[i, i]
    x = np.empty(n)
    for i in reversed(range(n)):
        x[i] = (y[i] - lower[i + 1:, i] @ x[i + 1:]) / lower[i, i]
    return x


def round_up(keep: float, width: int, floor: int, step: int) -> int:
    """The smallest count the greedy can stand on at or above `keep`: a multiple of the
    step (or the full width), never below the floor."""
    k = max(math.ceil(keep - 1e-9), floor)
    if step > 1:
        k = math.ceil(k / step) * step
    return min(k, width)


def _weight(weights, gi) -> float:
    return 1.0 if weights is None else weights[gi]
