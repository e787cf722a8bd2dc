"""FTWT budget before training (docs/methods.md §3): what the heat-map-mass masks of a
threshold r cost, as a dynamic model and as the static model that matches it.

A *gated layer* is an uncoupled channel group (one feed-in layer, no residual stream) whose
channels reach the layers after it through one activation tensor, one channel per position
of its axis 1. Per calibration sample, the mass mask at r keeps the fewest channels of that
tensor whose normalised peak mass reaches r (onnxprune/saliency/heatmap.py). Then:

* dynamic MACs: each sample's MACs with its own kept channels (the producing layer skips
  the others, the next layers skip reading them), averaged over the samples;
* static model of r: per layer, the channels with the highest keep frequency, as many as the
  expected kept fraction, rounded and floored as the allocators do (budget.py); its MACs
  are the exact tracked cost of that removal, which the rewrite then reports.

`Estimator.solve` bisects on r for a MAC target. Everything is on the original (ungated)
activations; onnxprune/gating.py fits the decision heads that emulate the dynamic model."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .budget import class_widths, floor_of, group_round_to, prunable_groups, rounded_keep
from .cost import CostTracker
from .plan import Plan, plan_from_classes
from .saliency.data import CalibrationData, consumers, stream_original
from .saliency.heatmap import MassRanking

NO_GATED_LAYER = ("the model has no plain channel group (one writing layer, no residual stream, read "
                  "through one activation with its channels on axis 1)")
DEFAULT_MASSES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BISECTION_STEPS = 40


@dataclass
class GatedLayer:
    group: int              # couplings group index
    feed_in: str            # the layer that writes the channels
    head_input: str         # what it reads: the decision head pools this
    tensor: str             # the activation the next layers read, channels on axis 1
    classes: np.ndarray     # channel class at each position of `tensor`'s axis 1
    rank: int               # rank of `tensor`


def gated_layers(model, couplings) -> list[GatedLayer]:
    """The layers a dynamic model can gate, in graph order (see the module docstring)."""
    readers: dict[int, set] = {}
    for u in consumers(model, couplings):
        for gi in np.unique(couplings.group_of[couplings.class_of[u.ids]]).tolist():
            readers.setdefault(gi, set()).add((u.tensor, u.axis))
    position = {n.name: i for i, n in enumerate(model.graph.node)}
    nodes = model.index().nodes
    out = []
    for g in prunable_groups(couplings, "none"):
        reads = readers.get(g.index, set())
        if len(g.feed_in) != 1 or g.feed_in[0] not in nodes or len(reads) != 1:
            continue
        (tensor, axis), = reads
        classes = couplings.class_of[np.asarray(couplings.tensors[tensor].ids)]
        shape = model.shapes.get(tensor)
        if axis != 1 or shape is None or len(shape) < 2 or len(np.unique(classes)) != len(classes) \
                or set(classes.tolist()) != set(g.classes.tolist()):
            continue  # a flattened or grouped layout: one mask entry would not be one channel
        out.append(GatedLayer(g.index, g.feed_in[0], nodes[g.feed_in[0]].input[0], tensor, classes, len(shape)))
    return sorted(out, key=lambda layer: position[layer.feed_in])


def rankings(model, layers: list[GatedLayer], data: CalibrationData) -> list[MassRanking]:
    """Each gated tensor's per-sample mass ranking on the calibration data (one pass)."""
    parts: dict[str, list] = {layer.tensor: [] for layer in layers}

    def consume(values):
        for layer in layers:
            width = len(layer.classes)
            parts[layer.tensor].append(MassRanking.of(values[layer.tensor], 1, np.arange(width), width))

    stream_original(model, list(parts), data, consume)
    return [MassRanking(np.concatenate([p.share for p in parts[layer.tensor]]),
                        np.concatenate([p.fired for p in parts[layer.tensor]])) for layer in layers]


@dataclass
class Point:
    """What one mass threshold r costs (MACs as fractions of the original's)."""
    mass: float
    kept: list[float]          # per gated layer: expected fraction of its channels kept
    dynamic_macs: float        # expected MACs of the dynamic model
    static_keep: list[int]     # per gated layer: channels the static model keeps
    static_macs: float         # MACs of that static model
    removed: set = field(default_factory=set, repr=False)   # its removed channel classes

    def to_dict(self) -> dict:
        return {"mass": self.mass, "kept": [round(k, 4) for k in self.kept],
                "dynamic_macs": round(self.dynamic_macs, 4), "static_keep": self.static_keep,
                "static_macs": round(self.static_macs, 4)}


class Estimator:
    """Dynamic and static MACs of any r, from the rankings gathered once."""

    def __init__(self, model, couplings, layers: list[GatedLayer], ranks: list[MassRanking],
                 min_keep: float = 0.1, round_to: int = 1, fold: bool = True, samples: int | None = None):
        self.model, self.couplings, self.layers, self.ranks = model, couplings, layers, ranks
        self.tracker = CostTracker(model, couplings, fold)
        self.classes = np.concatenate([layer.classes for layer in layers]) if layers else np.zeros(0, np.int64)
        widths = class_widths(couplings)
        groups = {g.index: g for g in couplings.groups}
        self.rules = [(floor_of(len(layer.classes), min_keep),
                       group_round_to(groups[layer.group], widths, round_to)) for layer in layers]
        self.samples = ranks[0].share.shape[0] if ranks else (samples or 0)
        self.slots = self.tracker.slot_matrix(self.classes)

    def masks(self, r: float) -> list[np.ndarray]:
        return [rank.keep(r) for rank in self.ranks]

    def dynamic_macs(self, masks: list[np.ndarray]) -> float:
        """Mean MACs fraction over samples, each sample keeping its own `masks` rows."""
        if not self.layers:
            return 1.0
        removed = ~np.concatenate(masks, axis=1)
        return float(self.tracker.macs_without_each(self.slots, removed).mean() / self.tracker.macs0)

    def point(self, r: float) -> Point:
        masks = self.masks(r)
        removed, keeps, static = self.static(masks)
        return Point(r, [float(m.mean()) for m in masks], self.dynamic_macs(masks), keeps, static, removed)

    def static(self, masks: list[np.ndarray]) -> tuple[set, list[int], float]:
        """The static model of these masks: (removed classes, kept count per layer, MACs fraction)."""
        removed, keeps = set(), []
        for layer, rank, mask, (floor, step) in zip(self.layers, self.ranks, masks, self.rules):
            width = len(layer.classes)
            keep = rounded_keep(max(floor, int(round(mask.mean() * width))), width, floor, step)
            # keep frequency first; the mean mass (< 1 / samples) only breaks its ties
            score = mask.mean(axis=0) + rank.share.mean(axis=0) / (self.samples + 1)
            removed.update(layer.classes[np.argsort(score, kind="stable")[:width - keep]].tolist())
            keeps.append(keep)
        static = (self.tracker.macs0 + self.tracker.preview(sorted(removed))[1]) / self.tracker.macs0
        return removed, keeps, float(static)

    def solve(self, target: float, kind: str) -> float | None:
        """The largest r whose `kind` ('dynamic' or 'static') MACs fraction is at most
        `target`, by bisection (both grow with r); None when even r -> 0 stays above it."""
        def cost(r):
            masks = self.masks(r)
            return self.dynamic_macs(masks) if kind == "dynamic" else self.static(masks)[2]
        if cost(1.0) <= target:
            return 1.0
        lo, hi = 0.0, 1.0
        if cost(lo) > target:
            return None
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cost(mid) <= target else (lo, mid)
        return lo

    def static_plan(self, point: Point, meta=None) -> Plan:
        return plan_from_classes(self.couplings, point.removed, meta)

    def gated_share(self) -> float:
        """Fraction of the MACs in layers whose cost a gate changes (the most gating can save)."""
        if not self.layers:
            return 0.0
        everything = np.ones((1, len(self.classes)), dtype=bool)
        return float(1 - self.tracker.macs_without_each(self.slots, everything)[0] / self.tracker.macs0)


@dataclass
class Estimate:
    points: list[Point]
    layers: list[GatedLayer]
    samples: int
    gated_share: float
    target: dict | None = None    # {"macs", "dynamic": Point or None, "static": Point or None}

    def to_dict(self) -> dict:
        target = None
        if self.target is not None:
            target = {"macs": self.target["macs"],
                      **{k: (p.to_dict() if p else None) for k, p in self.target.items() if k != "macs"}}
        return {"samples": self.samples, "gated_share": round(self.gated_share, 4),
                "layers": [{"feed_in": layer.feed_in, "tensor": layer.tensor, "width": len(layer.classes)}
                           for layer in self.layers],
                "points": [p.to_dict() for p in self.points], "target": target}

    def table(self) -> str:
        if not self.layers:
            return f"no layer can be gated: {NO_GATED_LAYER}"
        lines = [f"{len(self.layers)} gated layer(s) hold {self.gated_share:.1%} of the MACs; "
                 f"{self.samples} calibration samples; MACs as fractions of the original's",
                 f"{'r':>8s} {'kept':>6s} {'dynamic':>8s} {'static':>8s}  per layer: expected kept fraction/static "
                 f"channels (widths {' '.join(str(len(layer.classes)) for layer in self.layers)})"]
        for p in self.points:
            per_layer = " ".join(f"{k:.2f}/{n}" for k, n in zip(p.kept, p.static_keep))
            lines.append(f"{_r(p.mass):>8s} {_mean_kept(p, self.layers):6.3f} {p.dynamic_macs:8.4f} "
                         f"{p.static_macs:8.4f}  {per_layer}")
        if self.target is not None:
            for kind in ("dynamic", "static"):
                p = self.target[kind]
                lines.append(f"target MACs {self.target['macs']:g} ({kind}): " + (
                    f"r = {_r(p.mass)}, dynamic {p.dynamic_macs:.4f}, static {p.static_macs:.4f}" if p else
                    "not reachable by gating these layers (every mask at one channel stays above it)"))
        return "\n".join(lines)


def _mean_kept(point: Point, layers) -> float:
    """Expected kept fraction over all gated channels."""
    widths = [len(layer.classes) for layer in layers]
    return sum(k * w for k, w in zip(point.kept, widths)) / max(sum(widths), 1)


def _r(mass: float) -> str:
    return f"{mass:.4f}".rstrip("0").rstrip(".") if mass < 1 else "1"


def estimate(estimator: Estimator, masses=DEFAULT_MASSES, target_macs: float | None = None) -> Estimate:
    target = None
    if target_macs is not None:
        target = {"macs": target_macs}
        for kind in ("dynamic", "static"):
            r = estimator.solve(target_macs, kind)
            target[kind] = None if r is None else estimator.point(r)
    return Estimate([estimator.point(r) for r in masses], estimator.layers, estimator.samples,
                    estimator.gated_share(), target)


def build_estimator(source, calibration, *, calibration_limit: int | None = None,
                    calibration_preprocess: str | None = None, input_shapes=None, min_keep=0.1,
                    round_to: int | None = None, eval_data=None, labels_key: str = "labels"):
    """Load, analyze and gather the rankings: (Model, Couplings, calibration CalibrationSet,
    held-out CalibrationSet or None, Estimator). `calibration` and `eval_data` take what
    prune's do; all the calibration samples are used (nothing is held out of them)."""
    from .api import analyze_model
    from .arguments import check_min_keep, integer
    from .budget import default_round_to
    from .calibration import load_calibration
    from .errors import OnnxPruneError
    from .recover import DataOptions, batches_of, calibration_sets
    if calibration is None:
        raise OnnxPruneError("the FTWT estimate needs calibration data (--calib / calibration=)")
    min_keep = check_min_keep(min_keep)
    round_to = default_round_to() if round_to is None else integer("--round-to", round_to, least=1)
    model, couplings = analyze_model(source, input_shapes)
    if eval_data is None:
        calib, held = load_calibration(calibration, model, limit=calibration_limit,
                                       preprocess=calibration_preprocess, labels_key=labels_key), None
    else:   # checked to share no sample with the calibration data
        calib, held = calibration_sets(model, DataOptions(calibration, calibration_limit, calibration_preprocess,
                                                          eval_data, labels_key, "auto"), 0)
    layers = gated_layers(model, couplings)
    ranks = rankings(model, layers, CalibrationData(batches_of(model, calib), len(calib))) if layers else []
    return model, couplings, calib, held, Estimator(model, couplings, layers, ranks, min_keep, round_to,
                                                    samples=len(calib))
