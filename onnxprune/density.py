"""Per-group channel counts from layer densities (PreCrop, docs/methods.md §4), for a MAC or
parameter target; the saliency criterion only picks which channels fill each count.

PreCrop keeps what a structurally pruned network can learn by maximising Σ_l log p_l,
p_l being the fraction of layer l's weight that is kept, under the budget. In channel
terms a conv's density is the product of the kept fractions of its input and output
groups, so a group that many layers read or write (a residual stream) costs many log
terms per channel removed, and the optimum thins the intra-block channels first.

Solved greedily, which suits the exact, integer, rounded problem: repeatedly take the
step (one class, or the group's `round_to` step) whose removal loses the least Σ log p
per unit of the budget metric it saves, as previewed on the CostTracker, until the
target is met. A step only changes the priority of the groups sharing a weight with it.
The same greedy, with a step loss measured on data, is the sensitivity allocator
(onnxprune/sensitivity.py); started from the rounded continuous optimum of the same
program, it is the synexp allocator's repair (onnxprune/synexp.py).
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from .budget import (CostTracker, TargetResult, _base, _delta, _step, class_widths, closest_landing, floor_of,
                     group_round_to, metric_value, overshoots, prunable_groups, removal_order)
from .errors import OnnxPruneError


class Step(NamedTuple):
    """What a step loss sees of the step besides its group and counts."""
    chunk: list        # the channel classes it removes
    d_log: float       # its change of Σ log p, as the tracker previews it


def density_loss(gi, keep_before, keep_after, step: Step) -> float:
    """PreCrop's step loss: the Σ log p a step gives up."""
    return -step.d_log


def allocate_density(model, couplings, scores: np.ndarray, metric: str, target: float,
                     min_keep: float = 0.1, round_to: int = 1, coupled: str = "all",
                     fold: bool = True) -> TargetResult:
    return allocate_greedy(model, couplings, scores, metric, target, min_keep, round_to, coupled, fold, density_loss)


def allocate_greedy_budgets(model, couplings, scores: np.ndarray, budgets, min_keep: float, round_to: int,
                            coupled: str, fold: bool, step_loss, start=None) -> tuple[TargetResult, dict]:
    """`allocate_greedy` for each (metric, target) of `budgets` in turn, each pass starting
    where the last one stopped. Steps only remove, so every earlier budget stays met.
    Returns the last pass's result and {metric: fraction kept} of the final plan."""
    groups = prunable_groups(couplings, coupled)
    result = tracker = None
    for metric, target in budgets:
        if result is not None:
            kept = {g.index: g.width - len(result.removed.intersection(g.classes.tolist())) for g in groups}
            start = (lambda counts: lambda _tracker: counts)(kept)
        tracker = CostTracker(model, couplings, fold)
        result = allocate_greedy(model, couplings, scores, metric, target, min_keep, round_to, coupled, fold,
                                 step_loss, start, tracker)
    return result, {metric: getattr(tracker, metric) / _base(tracker, metric) if _base(tracker, metric) else 1.0
                    for metric, _ in budgets}


def allocate_greedy(model, couplings, scores: np.ndarray, metric: str, target: float, min_keep: float,
                    round_to: int, coupled: str, fold: bool, step_loss, start=None, tracker=None) -> TargetResult:
    """Take the cheapest step, `step_loss(group index, kept before, kept after, Step)`
    per unit of the metric saved, until the target is met (the density allocator's loss is
    −Δ Σ log p; the sensitivity allocator's a measured fidelity curve; the latency
    allocator's the scores removed, per millisecond saved on a LatencyTracker). `start(tracker)`
    (group index -> kept count; default full width) says where the steps start from: the
    synexp allocator starts from its rounded continuous optimum."""
    if not 0 < target <= 1:
        raise OnnxPruneError(f"--target-{metric} must be in (0, 1], got {target}")
    groups = prunable_groups(couplings, coupled)
    tracker = tracker or CostTracker(model, couplings, fold)
    base = _base(tracker, metric)

    def value():
        return metric_value(tracker, metric)

    widths = class_widths(couplings)
    order = {g.index: removal_order([g], scores, "global", "raw").tolist() for g in groups}
    steps = {g.index: group_round_to(g, widths, round_to) for g in groups}
    floors = {g.index: floor_of(g.width, min_keep) for g in groups}
    keep = {g.index: g.width for g in groups}
    taken = {g.index: 0 for g in groups}   # classes of the group removed so far, in `order`

    def next_chunk(gi):
        step = _step(keep[gi], steps[gi])
        if keep[gi] - step < floors[gi]:
            return None
        return order[gi][taken[gi]:taken[gi] + step]

    def priority(gi):
        chunk = next_chunk(gi)
        if not chunk:
            return None
        preview = tracker.preview(chunk)
        saved = -_delta(tracker, metric, chunk, preview)
        return step_loss(gi, keep[gi], keep[gi] - len(chunk), Step(chunk, preview[2])) / saved if saved > 0 else None

    removed: set[int] = set()
    for gi, k in (start(tracker) if start else {}).items():
        for c in order[gi][:keep[gi] - k]:
            tracker.remove(c)
            removed.add(c)
        taken[gi], keep[gi] = keep[gi] - k, k
    neighbours = _groups_sharing_weights(tracker, couplings, groups)
    current, heap = {}, []

    def refresh(gi):
        current[gi] = priority(gi)
        if current[gi] is not None:
            heapq.heappush(heap, (current[gi], gi))

    for g in groups:
        refresh(g.index)
    deferred = set()

    def apply(gi, chunk):
        for c in chunk:
            tracker.remove(c)
            removed.add(c)
        keep[gi] -= len(chunk)
        taken[gi] += len(chunk)
        for h in neighbours[gi]:
            refresh(h)

    while heap and value() > target * base:
        p, gi = heapq.heappop(heap)
        if current.get(gi) != p:
            continue  # stale entry: the group's priority changed since it was pushed
        chunk = next_chunk(gi)
        # several classes, or one standing for several channels (an attention head): it may
        # overshoot and then waits while smaller steps of other groups may fit
        if (steps[gi] > 1 or start or widths.count[chunk].max() > 1) and \
                overshoots(tracker, metric, target * base, chunk):
            deferred.add(gi)
            continue
        apply(gi, chunk)
    if value() > target * base and deferred:
        chunks = {gi: c for gi in sorted(deferred) if (c := next_chunk(gi))}
        if chunks:
            best = closest_landing(tracker, metric, target * base, list(chunks.values()))
            apply(next(gi for gi, c in chunks.items() if c is best), best)
    achieved = value() / base if base else 1.0
    return TargetResult(removed, target, metric, achieved, achieved <= target + 1e-12)


def _groups_sharing_weights(tracker, couplings, groups) -> dict[int, list[int]]:
    """For each group, the groups (itself included) whose classes touch a weight it touches,
    counting the weights of the independent residual sums its classes feed (removing a
    branch's channel can remove the sum's)."""
    prunable = {g.index for g in groups}
    tensors_of = {}
    for g in groups:
        classes = set(g.classes.tolist())
        stack = list(classes)
        while stack:
            for d in tracker.derivation.users.get(stack.pop(), ()):
                if d not in classes:
                    classes.add(d)
                    stack.append(d)
        tensors_of[g.index] = {t for c in classes for slot, _ in tracker.incidence.get(c, [])
                               for t in tracker.slot_tensors[slot]}
    groups_of_tensor: dict[int, set] = {}
    for gi, tensors in tensors_of.items():
        for t in tensors:
            groups_of_tensor.setdefault(t, set()).add(gi)
    return {gi: sorted({h for t in tensors for h in groups_of_tensor[t]} & prunable | {gi})
            for gi, tensors in tensors_of.items()}
