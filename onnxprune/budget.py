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
from dataclasses import dataclass

import numpy as np

from .couplings import Context
from .errors import OnnxPruneError

RANKINGS = ("raw", "normalized")
COUPLED = ("all", "only", "none")


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


def class_multiplicity(couplings) -> np.ndarray:
    """Channels each class stands for in one tensor: 1, except in the couplings of a
    grouped convolution or a channel shuffle, where a class is the same position in
    every group (G channels)."""
    mult = np.ones(couplings.n_classes, dtype=np.int64)
    for p in couplings.producers:
        cls, count = np.unique(couplings.class_of[p.ids], return_counts=True)
        mult[cls] = np.maximum(mult[cls], count)
    return mult


def group_round_to(group, multiplicity: np.ndarray, round_to: int) -> int:
    """The multiple the kept class count of `group` is rounded to.

    For a grouped conv the count is a width per conv group, and onnxruntime blocks that
    width: rounding it to round_to keeps a blocked grouped conv blocked. But a conv group
    narrower than round_to (RegNetY's 8, ResNeXt-50's 4 and 8) runs on the plain kernel
    whatever is kept, and rounding it to round_to would forbid pruning it at all, leaving
    the MAC budget to the dense layers around it. There we allow halves: measured at MAC
    targets 0.5 and 0.7, RegNetY-400MF ran 1.33x / 1.18x faster with those convs left
    whole and 1.59x / 1.27x with halves; ResNeXt-50 1.76x / 1.35x and 1.85x / 1.35x
    (benchmarks/RESULTS.md, section 5)."""
    if round_to <= 1 or group.width >= round_to or multiplicity[group.classes].max() <= 1:
        return round_to
    return max(1, group.width // 2)


def kept_whole_by_rounding(couplings, round_to: int, min_keep: float, coupled: str = "all") -> list:
    """Prunable groups that `round_to` keeps whole whatever the budget: no multiple of
    their rounding step lies between their floor and their width (a group of 8 under 16)."""
    multiplicity = class_multiplicity(couplings)
    whole = []
    for g in prunable_groups(couplings, coupled):
        step, floor = group_round_to(g, multiplicity, round_to), floor_of(g.width, min_keep)
        if step > 1 and rounded_keep(floor, g.width, floor, step) == g.width:
            whole.append(g)
    return whole


def is_coupled(group) -> bool:
    """Coupled channels: written by more than one layer (a residual stream, DFPC's DFCs
    with several feed-ins). A plain conv -> BN -> ReLU -> conv pair is not coupled."""
    return len(group.feed_in) > 1


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


def removal_order(groups, scores: np.ndarray, scope: str, ranking: str) -> np.ndarray:
    """All prunable classes, least important first."""
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
        keep = _keep_from_order(groups, removal_order(groups, scores, scope, ranking), couplings,
                                int(math.floor(ratio * sum(g.width for g in groups) + 1e-9)), min_keep)
    removed = set()
    multiplicity = class_multiplicity(couplings)
    for g in groups:
        k = rounded_keep(keep[g.index], g.width, floor_of(g.width, min_keep),
                         group_round_to(g, multiplicity, round_to))
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
class CostTracker:
    """Exact parameters and MACs of the pruned model as classes are removed one by one.

    Every weighted tensor's size is the product of its kept counts along the axes that
    hold channels; a layer's MACs are proportional to its weight's size (spatial sizes do
    not change). A removal updates only the tensors its class touches, so each step costs
    a few operations, and the tracked value equals what the rewritten model reports
    (a tensor shared by users that need different cuts is counted once)."""

    def __init__(self, model, couplings, fold: bool = True):
        from .cost import cost
        nodes = model.nodes_by_name()
        base = cost(model)
        self.params0, self.macs0 = base.params, base.macs
        uses: dict[tuple, dict] = {}
        for s in couplings.slices:
            uses.setdefault((s.node, s.input), {})[s.axis] = s.ids
        self.tensors, owner = [], {}
        axis_class, axis_index = [], []
        self.counts = []
        for (node_name, index), axes in uses.items():
            name = nodes[node_name].input[index]
            array = model.inits[name]
            counts_at = {}
            for axis, ids in axes.items():
                counts_at[axis] = len(self.counts)
                self.counts.append(len(ids))
                axis_class.append(couplings.class_of[ids])
                axis_index.append(np.full(len(ids), counts_at[axis]))
            is_owner = name not in owner and array.dtype.kind == "f"
            owner.setdefault(name, True)
            node = nodes[node_name]
            mac_weight = index == 1 and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
            macs = base.macs_by_node.get(node_name, 0) if mac_weight else 0
            fixed = int(np.prod([d for a, d in enumerate(array.shape) if a not in axes]))
            self.tensors.append({"axes": list(counts_at.values()), "fixed": fixed, "size0": int(array.size),
                                 "params": is_owner, "macs_per_element": macs / max(array.size, 1)})
        self.counts = np.array(self.counts, dtype=np.int64)
        # class -> (axis slot, positions removed); slot -> tensors using it
        classes = np.concatenate(axis_class) if axis_class else np.zeros(0, np.int64)
        slots = np.concatenate(axis_index) if axis_index else np.zeros(0, np.int64)
        n_slots = max(len(self.counts), 1)
        keys, hits = np.unique(classes * n_slots + slots, return_counts=True)
        self.incidence: dict[int, list] = {}
        for key, n in zip(keys.tolist(), hits.tolist()):
            self.incidence.setdefault(key // n_slots, []).append((key % n_slots, n))
        self.slot_tensors: dict[int, list] = {}
        for t, tensor in enumerate(self.tensors):
            for slot in tensor["axes"]:
                self.slot_tensors.setdefault(slot, []).append(t)
        self.sizes = np.array([self._size(t) for t in range(len(self.tensors))], dtype=np.float64)
        self.params, self.macs = float(self.params0), float(self.macs0)
        self.new_biases = self._new_biases(model, couplings, uses, nodes) if fold else []

    def _new_biases(self, model, couplings, uses, nodes):
        """Feed-out layers without a bias (and no BN after them to take the fold) gain one
        once any of their inputs is removed: [input slot, output slot or None, width, active]."""
        from passes.fold_removed_constants import FOLDABLE, following_batch_norm
        slot_of = {}
        for t, ((node_name, index), axes) in enumerate(uses.items()):
            for axis, slot in zip(axes, self.tensors[t]["axes"]):
                slot_of[(node_name, index, axis)] = slot
        out = []
        consumers = model.consumers()
        for (node_name, index), axes in uses.items():
            node = nodes[node_name]
            if node.op_type not in FOLDABLE or index != 1:
                continue
            if len(node.input) > 2 and node.input[2] or following_batch_norm(model, node, consumers) is not None:
                continue
            w = model.inits[node.input[1]]
            in_axis, out_axis = {"Conv": (1, 0), "ConvTranspose": (0, 1)}.get(
                node.op_type, (1, 0) if Context.attr(node, "transB") else (0, 1))
            if (node_name, 1, in_axis) not in slot_of:
                continue
            out.append([slot_of[(node_name, 1, in_axis)], slot_of.get((node_name, 1, out_axis)),
                        w.shape[out_axis], False])
        return out

    def _size(self, t, fewer=None) -> int:
        """Size of tensor t, with `fewer[slot]` entries less on its channel axes."""
        tensor = self.tensors[t]
        if fewer is None:
            return tensor["fixed"] * math.prod(int(self.counts[s]) for s in tensor["axes"])
        return tensor["fixed"] * math.prod(int(self.counts[s]) - fewer.get(s, 0) for s in tensor["axes"])

    def _slots(self, classes) -> dict[int, int]:
        """Channel-axis slot -> entries that removing `classes` takes from it."""
        slots: dict[int, int] = {}
        for cls in classes:
            for slot, n in self.incidence.get(cls, []):
                slots[slot] = slots.get(slot, 0) + n
        return slots

    def preview(self, classes) -> tuple[float, float, float]:
        """What removing `classes` would change, without removing them: (params, MACs, sum
        over the layers' weights of log(new size / old size)). Biases a fold would add are
        left out of the params; `remove` counts them."""
        slots = self._slots(classes)
        d_params = d_macs = d_log = 0.0
        for t in {t for slot in slots for t in self.slot_tensors[slot]}:
            tensor = self.tensors[t]
            new = self._size(t, slots)
            delta = new - self.sizes[t]
            if tensor["params"]:
                d_params += delta
            if tensor["macs_per_element"]:
                d_macs += delta * tensor["macs_per_element"]
                d_log += math.log(max(new, 1) / self.sizes[t])
        return d_params, d_macs, d_log

    def remove(self, cls: int) -> None:
        slots = self._slots([cls])
        for slot, n in slots.items():
            self.counts[slot] -= n
        touched = {t for slot in slots for t in self.slot_tensors[slot]}
        for bias in self.new_biases:  # a fold may create a bias: count it when it appears
            in_slot, out_slot, width, active = bias
            if out_slot in slots:
                bias[2] = width = width - slots[out_slot]
                if active:
                    self.params -= slots[out_slot]
            if in_slot in slots and not active:
                bias[3] = True
                self.params += width
        for t in touched:
            new = self._size(t)
            delta = new - self.sizes[t]
            self.sizes[t] = new
            if self.tensors[t]["params"]:
                self.params += delta
            self.macs += delta * self.tensors[t]["macs_per_element"]


@dataclass
class TargetResult:
    removed: set
    target: float
    metric: str
    achieved: float        # fraction of the original metric kept, as tracked
    reached: bool


def allocate_target(model, couplings, scores: np.ndarray, metric: str, target: float,
                    scope: str = "global", ranking: str = "raw", min_keep: float = 0.1,
                    round_to: int = 1, coupled: str = "all", fold: bool = True) -> TargetResult:
    """Remove classes in ranking order until `metric` ('macs' or 'params') is at most
    `target` times the original; the last removal is the one that crosses the target."""
    if not 0 < target <= 1:
        raise OnnxPruneError(f"--target-{metric} must be in (0, 1], got {target}")
    _check_options(scope, ranking, round_to)
    groups = prunable_groups(couplings, coupled)
    tracker = CostTracker(model, couplings, fold)
    base = tracker.macs0 if metric == "macs" else tracker.params0

    def value():
        return tracker.macs if metric == "macs" else tracker.params

    keep = {g.index: g.width for g in groups}
    floors = {g.index: floor_of(g.width, min_keep) for g in groups}
    in_group = {g.index: removal_order([g], scores, "global", "raw").tolist() for g in groups}
    multiplicity = class_multiplicity(couplings)
    steps = {g.index: group_round_to(g, multiplicity, round_to) for g in groups}
    removed: set[int] = set()

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
    class_cost = {g.index: -_delta(tracker, metric, [int(g.classes[0])]) for g in groups if steps[g.index] > 1}
    for c in removal_order(groups, scores, scope, ranking).tolist():
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
        # a step that would overshoot waits while smaller ones further down may fit
        elif (value() - 2 * len(chunk) * class_cost[gi] < goal - FINAL_STEP_SLACK * base
              and overshoots(tracker, metric, goal, chunk)):
            deferred.add(gi)
            continue
        apply(chunk)
    if value() > goal and deferred:
        apply(closest_landing(tracker, metric, goal, [c for gi in sorted(deferred) if (c := next_chunk(gi))]))
    achieved = value() / base if base else 1.0
    return TargetResult(removed, target, metric, achieved, achieved <= target + 1e-12)


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
    return (tracker.macs if metric == "macs" else tracker.params) + _delta(tracker, metric, chunk)


def _delta(tracker, metric, chunk) -> float:
    d_params, d_macs, _ = tracker.preview(chunk)
    return d_macs if metric == "macs" else d_params


def _base(tracker, metric) -> float:
    return tracker.macs0 if metric == "macs" else tracker.params0


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
