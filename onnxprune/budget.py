"""Allocate stage: which channel classes to remove under a budget.

Budgets: `ratio` removes a fraction of the prunable classes; `target_macs` /
`target_params` keep a fraction of the model's MACs / parameters, reached by removing
classes one at a time in ranking order while tracking the exact cost of each removal.

Ranking across groups (`scope="global"`): `raw` is the faithful DFPC list (raw scores,
one global ranking); `normalized` divides each score by the mean score of its group
first, which removes the scale biases of raw scores (spatial size, number of members).
`scope="local"` removes the same fraction from every group. Every mode respects each
group's floor (`min_keep`) and never empties a group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .cost import CostTracker
from .errors import OnnxPruneError

RANKINGS = ("raw", "normalized")
COUPLED = ("all", "only", "none", "last")


def default_round_to() -> int:
    """The channel multiple that keeps onnxruntime's blocked (NCHWc) CPU convolutions on
    their fast path: its kernels work in blocks of 16 channels with AVX-512 and of 8 with
    AVX2, and a misaligned width sends a conv to the slow plain kernel with layout reorders
    around it — pruned models then run slower than the original (measured in
    benchmarks/results/latency_summary.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return 8
    return 16 if "avx512f" in flags else 8


def parse_min_keep(value) -> float:
    """An integer >= 1 is a channel count; a number in (0, 1) a fraction of the group."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OnnxPruneError(f"--min-keep must be a count >= 1 or a fraction in (0, 1), got {value!r}") from None
    if not (0 < v < 1 or (v >= 1 and v == int(v))):
        raise OnnxPruneError(f"--min-keep must be a count >= 1 or a fraction in (0, 1), got {value!r}")
    return v


def floor_of(width: int, min_keep: float) -> int:
    keep = math.ceil(min_keep * width) if min_keep < 1 else int(min_keep)
    return max(1, min(width, keep))


def rounded_keep(keep: int, width: int, floor: int, round_to: int) -> int:
    """Nearest multiple of round_to in [floor, width] (ties go up); width if there is none."""
    if round_to <= 1:
        return keep
    candidates = [m for m in range(round_to, width + 1, round_to) if m >= floor]
    if not candidates:
        return width
    return min(candidates, key=lambda m: (abs(m - keep), -m))


@dataclass(frozen=True)
class ClassWidths:
    """Channels each class stands for in one tensor. `count`: 1, except in the couplings of
    a grouped convolution or a channel shuffle, where a class is the same position in every
    group (G channels, strided), and for an attention head (head_dim channels, 3 x head_dim
    in a packed q/k/v projection). `block`: the shortest contiguous run of a class's channels
    in any tensor it is in: an attention head's head_dim (also when packed q, k and v give it
    three runs), 1 for a grouped conv's strided positions."""
    count: np.ndarray
    block: np.ndarray


def class_widths(couplings) -> ClassWidths:
    count = np.ones(couplings.n_classes, dtype=np.int64)
    block = np.full(couplings.n_classes, np.iinfo(np.int64).max)
    for p in couplings.producers:
        cls = couplings.class_of[p.ids]
        classes, n = np.unique(cls, return_counts=True)
        count[classes] = np.maximum(count[classes], n)
        starts = np.r_[0, np.flatnonzero(np.diff(cls)) + 1]   # runs of one class
        np.minimum.at(block, cls[starts], np.diff(np.r_[starts, len(cls)]))
    block[block == np.iinfo(np.int64).max] = 1
    return ClassWidths(count, block)


def group_round_to(group, widths: ClassWidths, round_to: int) -> int:
    """The multiple the kept class count of `group` is rounded to.

    A class that is a contiguous block of channels (an attention head of head_dim) keeps
    its tensors' widths multiples of round_to at every count that is a multiple of
    round_to / gcd(round_to, block): heads of 64 channels are removed one at a time.

    For a grouped conv the count is a width per conv group, and onnxruntime blocks that
    width: rounding it to round_to keeps a blocked grouped conv blocked. But a conv group
    narrower than round_to (RegNetY's 8, ResNeXt-50's 4 and 8) runs on the plain kernel
    whatever is kept, and rounding it to round_to would forbid pruning it at all, leaving
    the MAC budget to the dense layers around it. There we allow halves: measured at MAC
    targets 0.5 and 0.7, RegNetY-400MF ran 1.33x / 1.18x faster with those convs left
    whole and 1.59x / 1.27x with halves; ResNeXt-50 1.76x / 1.35x and 1.85x / 1.35x
    (benchmarks/RESULTS.md, section 5)."""
    block = int(widths.block[group.classes].min()) if len(group.classes) else 1
    if round_to > 1 and block > 1:
        return round_to // math.gcd(round_to, block)
    if round_to <= 1 or group.width >= round_to or widths.count[group.classes].max() <= 1:
        return round_to
    return max(1, group.width // 2)


def kept_whole_by_rounding(couplings, round_to: int, min_keep: float, coupled: str = "all") -> list:
    """Prunable groups that `round_to` keeps whole whatever the budget: no multiple of
    their rounding step lies between their floor and their width (a group of 8 under 16)."""
    widths = class_widths(couplings)
    whole = []
    for g in prunable_groups(couplings, coupled):
        step, floor = group_round_to(g, widths, round_to), floor_of(g.width, min_keep)
        if step > 1 and rounded_keep(floor, g.width, floor, step) == g.width:
            whole.append(g)
    return whole


def is_coupled(group) -> bool:
    """Coupled channels: written by more than one layer (a residual stream, DFPC's DFCs
    with several feed-ins), or, with independent residual branches, one branch of a
    residual stream. A plain conv -> BN -> ReLU -> conv pair is not coupled."""
    return len(group.feed_in) > 1 or group.residual


def prunable_groups(couplings, coupled: str = "all"):
    if coupled not in COUPLED:
        raise OnnxPruneError(f"coupled must be one of {COUPLED}, got {coupled!r}")
    groups = [g for g in couplings.groups if g.frozen is None and g.width > 1]
    if coupled == "only":
        return [g for g in groups if is_coupled(g)]
    if coupled == "none":
        return [g for g in groups if not is_coupled(g)]
    return groups


def _check_options(scope, ranking, round_to):
    if scope not in ("local", "global"):
        raise OnnxPruneError(f"--scope must be 'local' or 'global', got {scope!r}")
    if ranking not in RANKINGS:
        raise OnnxPruneError(f"--ranking must be one of {RANKINGS}, got {ranking!r}")
    if round_to < 1:
        raise OnnxPruneError(f"--round-to must be >= 1, got {round_to}")


def phases(groups, coupled: str) -> list:
    """The groups in the order they are thinned: coupled="last" puts every coupled group
    (a residual stream) in a second phase after the others; otherwise one phase."""
    if coupled != "last":
        return [groups]
    return [[g for g in groups if not is_coupled(g)], [g for g in groups if is_coupled(g)]]


def removal_order(groups, scores: np.ndarray, scope: str, ranking: str, coupled: str = "all") -> np.ndarray:
    """All prunable classes, least important first. With coupled="last", every class of the
    uncoupled groups comes before any class of a coupled one (a residual stream is thinned
    only once the blocks' own channels are at their floors)."""
    if coupled == "last":
        return np.concatenate([removal_order(p, scores, scope, ranking) for p in phases(groups, coupled)])
    if not groups:
        return np.zeros(0, np.int64)
    classes = np.concatenate([g.classes for g in groups])
    if scope == "local":
        # rank within the group as a fraction of its width: groups are thinned evenly
        key = np.concatenate([_rank_fraction(scores[g.classes]) for g in groups])
    elif ranking == "raw":
        key = scores[classes]
    else:
        key = np.concatenate([scores[g.classes] / max(scores[g.classes].mean(), 1e-30) for g in groups])
    return classes[np.argsort(key, kind="stable")]


def _rank_fraction(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(1, len(values) + 1)
    return ranks / len(values)


def allocate(couplings, scores: np.ndarray, ratio: float, scope: str = "local",
             min_keep: float = 0.1, round_to: int = 1, ranking: str = "raw",
             coupled: str = "all") -> set[int]:
    """Remove a fraction `ratio` of the prunable classes."""
    if not 0 <= ratio < 1:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    _check_options(scope, ranking, round_to)
    groups = prunable_groups(couplings, coupled)
    if scope == "local":
        keep = {g.index: max(floor_of(g.width, min_keep), g.width - int(math.floor(ratio * g.width + 1e-9)))
                for g in groups}
    else:
        keep = _keep_from_order(groups, removal_order(groups, scores, scope, ranking, coupled), couplings,
                                int(math.floor(ratio * sum(g.width for g in groups) + 1e-9)), min_keep)
    removed = set()
    widths = class_widths(couplings)
    for g in groups:
        k = rounded_keep(keep[g.index], g.width, floor_of(g.width, min_keep),
                         group_round_to(g, widths, round_to))
        order = g.classes[np.argsort(scores[g.classes], kind="stable")]
        removed.update(order[:g.width - k].tolist())
    return removed


def _keep_from_order(groups, order, couplings, n_remove, min_keep) -> dict[int, int]:
    keep = {g.index: g.width for g in groups}
    floors = {g.index: floor_of(g.width, min_keep) for g in groups}
    removed = 0
    for c in order.tolist():
        if removed >= n_remove:
            break
        gi = int(couplings.group_of[c])
        if keep[gi] > floors[gi]:
            keep[gi] -= 1
            removed += 1
    return keep


# -- budget targets ------------------------------------------------------------------------
@dataclass
class TargetResult:
    removed: set
    target: float
    metric: str
    achieved: float        # fraction of the original metric kept, as tracked
    reached: bool
    earlier: dict = field(default_factory=dict)   # budgets met before this one: metric -> (target, kept)
    # (pruned Model, folds, fold stats) of this plan when the allocator built them to time it
    # (--target-latency), so that prune does not rewrite the same plan again
    rewrite: tuple | None = None
    # the step the plan went down to where `round_to` could not reach the target (reach_at_finer_steps)
    finest_step: int | None = None


def allocate_target(model, couplings, scores: np.ndarray, metric: str, target: float,
                    scope: str = "global", ranking: str = "raw", min_keep: float = 0.1,
                    round_to: int = 1, coupled: str = "all", fold: bool = True,
                    start: frozenset = frozenset()) -> TargetResult:
    """Remove classes in ranking order until `metric` ('macs' or 'params') is at most
    `target` times the original; the last removal is the one that crosses the target.
    `start`: classes already removed (a plan to continue, see `reach_at_finer_steps`)."""
    if not 0 < target <= 1:
        raise OnnxPruneError(f"--target-{metric} must be in (0, 1], got {target}")
    _check_options(scope, ranking, round_to)
    groups = prunable_groups(couplings, coupled)
    tracker = CostTracker(model, couplings, fold)
    base = tracker.macs0 if metric == "macs" else tracker.params0

    def value():
        return tracker.macs if metric == "macs" else tracker.params

    removed: set[int] = set()
    for c in sorted(start):
        if c not in tracker.removed:   # a derived class may already have gone with its source
            tracker.remove(c)
        removed.add(c)
    keep = {g.index: g.width - sum(1 for c in g.classes.tolist() if c in removed) for g in groups}
    floors = {g.index: floor_of(g.width, min_keep) for g in groups}
    in_group = {g.index: removal_order([g], scores, "global", "raw").tolist() for g in groups}
    widths = class_widths(couplings)
    steps = {g.index: group_round_to(g, widths, round_to) for g in groups}

    def next_chunk(gi):
        step = _step(keep[gi], steps[gi])
        if keep[gi] - step < floors[gi]:
            return None
        return [k for k in in_group[gi] if k not in removed][:step]

    def apply(chunk):
        for k in chunk:
            tracker.remove(k)
            removed.add(k)
        keep[int(couplings.group_of[chunk[0]])] -= len(chunk)

    goal = target * base
    deferred = set()   # groups whose next step would overshoot the target
    # a class's cost only falls as other groups shrink: twice its first cost bounds it, so
    # the exact preview is only needed once a step could reach below the target
    class_cost = {g.index: -_delta(tracker, metric, [int(g.classes[0])]) for g in groups}
    # coupled="last": the streams' classes are a second phase, entered only when the blocks'
    # own channels cannot reach the target (they never just fill the last gap)
    for phase in phases(groups, coupled):
        for c in removal_order(phase, scores, scope, ranking).tolist():
            if value() <= goal:
                break
            if c in removed:
                continue
            gi = int(couplings.group_of[c])
            chunk = next_chunk(gi)
            if chunk is None:
                continue
            if steps[gi] == 1:
                chunk = [c]
            # with round_to, a step removes the group's `step` least important remaining classes;
            # a step that would overshoot (that, or one class standing for many channels: an
            # attention head) waits while smaller ones further down may fit
            if (value() - 2 * len(chunk) * class_cost[gi] < goal - FINAL_STEP_SLACK * base
                    and overshoots(tracker, metric, goal, chunk)):
                deferred.add(gi)
                continue
            apply(chunk)
        if value() > goal and deferred:
            steps_left = [c for gi in sorted(deferred) if (c := next_chunk(gi))]
            if steps_left:
                apply(closest_landing(tracker, metric, goal, steps_left))
            deferred.clear()
    achieved = value() / base if base else 1.0
    return TargetResult(removed, target, metric, achieved, achieved <= target + 1e-12)


def reach_at_finer_steps(model, couplings, scores: np.ndarray, result: TargetResult, scope: str = "global",
                         ranking: str = "raw", min_keep: float = 0.1, round_to: int = 1,
                         coupled: str = "all", fold: bool = True) -> tuple[TargetResult, list[str]]:
    """A cost target is a limit and `round_to` a preference: where the rounded steps stop
    above the target (every 16-wide group of the digits ResNets at 16 keeps 0.526 of the
    MACs, against a target of 0.5), the plan goes on in halved steps, in ranking order,
    until the target is met or the floors stop it. The groups that end off the rounding
    are named in the note: they may leave onnxruntime's blocked kernels."""
    step = round_to
    while not result.reached and step > 1 and result.metric in ("macs", "params"):
        step //= 2
        result = replace(allocate_target(model, couplings, scores, result.metric, result.target, scope, ranking,
                                         min_keep, step, coupled, fold, frozenset(result.removed)),
                         earlier=result.earlier)
    if step == round_to:
        return result, []
    result = replace(result, finest_step=step)
    widths = class_widths(couplings)
    off = []
    for g in prunable_groups(couplings, coupled):
        kept = sum(1 for c in g.classes.tolist() if c not in result.removed)
        if kept < g.width and kept % group_round_to(g, widths, round_to):
            off.append(f"{kept}/{g.width}")
    return result, [f"--round-to {round_to} cannot reach target {result.metric} {result.target:g}; "
                    f"continued in steps of {step}: {len(off)} group(s) off the rounding (kept "
                    + ", ".join(off[:8]) + (", ..." if len(off) > 8 else "") + ")"]


# A step may take the metric below the target by this fraction of the original before
# smaller steps further down the ranking are tried first.
FINAL_STEP_SLACK = 0.01


def overshoots(tracker, metric: str, goal: float, chunk) -> bool:
    """Whether removing `chunk` would take the metric more than FINAL_STEP_SLACK below
    `goal`: a coarse `round_to` step of a wide or much-used group. Asking for 0.9 of the
    MACs of a small model could otherwise return 0.5."""
    return _after(tracker, metric, chunk) < goal - FINAL_STEP_SLACK * _base(tracker, metric)


def closest_landing(tracker, metric: str, goal: float, chunks: list) -> list:
    """Of steps that all overshoot, the one that lands closest to `goal`."""
    return max(chunks, key=lambda c: _after(tracker, metric, c))


def _after(tracker, metric, chunk) -> float:
    return metric_value(tracker, metric) + _delta(tracker, metric, chunk)


def _delta(tracker, metric, chunk, preview=None) -> float:
    """The change of `metric` that removing `chunk` makes; `preview`: the tracker's
    preview of it, when the caller has it already."""
    if metric == "latency":   # a LatencyTracker (onnxprune/latency_alloc.py)
        return tracker.preview_latency(chunk)
    d_params, d_macs, _ = preview or tracker.preview(chunk)
    return d_macs if metric == "macs" else d_params


def metric_value(tracker, metric: str) -> float:
    """The tracked value of 'macs', 'params' or (a LatencyTracker's) 'latency'."""
    return getattr(tracker, metric)


def _base(tracker, metric) -> float:
    return getattr(tracker, f"{metric}0")


def _step(keep: int, round_to: int) -> int:
    if round_to <= 1:
        return 1
    return keep % round_to or round_to


def check_plan_classes(couplings, removed: set[int]) -> None:
    """A plan may not empty a group: its producers would have no output channels."""
    for g in couplings.groups:
        if g.width and all(c in removed for c in g.classes.tolist()):
            raise OnnxPruneError(f"the plan removes every channel of group {g.index} "
                                 f"(feed-in {', '.join(g.feed_in[:3])}); keep at least one")
