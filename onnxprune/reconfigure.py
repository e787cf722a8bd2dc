"""PreConfig (`onnxprune reconfigure`, docs/methods.md §4): give an untrained model new
widths under a MAC and/or parameter budget, for the user to train from scratch.

    load -> analyze -> program -> widen -> narrow -> rewrite -> check

The program is the synexp allocator's (onnxprune/synexp.py): maximise Σ log layer density
over x_g = log(new width / width), one posynomial constraint per budget, with x_g ≤ log(u)
instead of x_g ≤ 0 when widening is allowed (`max_widen` u > 1) for the groups that can
grow exactly (passes/widen_groups.py). Groups the optimum widens are grown first (rounded
up to their step, never past u · width); on the wider model the density greedy starts from
the rounded narrow widths and removes steps until the MAC budget, then the parameter
budget, is met on the exact CostTracker (the second pass only removes, so the first budget
stays met). The result is measured on the written model; no accuracy is claimed.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from . import passes
from .api import rewrite, run_pruned
from .arguments import check_min_keep, _number, check_input_shapes, check_patterns, check_source, integer
from .budget import class_widths, floor_of, group_round_to, prunable_groups
from .cost import CostTracker, cost
from .couplings import analyze
from .density import allocate_greedy_budgets, density_loss
from .errors import InternalError, OnnxPruneError
from .load import load
from .pipeline import WIDEN_PASSES, Step, run_passes
from .progress import stage
from .report import model_stats
from .synexp import combined_program, program_variables, round_up, solve
from .verify import check

METRICS = ("macs", "params")


@dataclass
class ReconfigureReport:
    options: dict
    before: dict          # model_stats of the input
    after: dict           # ... of the written model
    achieved: dict        # metric -> its value over the input's, measured on the written model
    budgets_met: bool
    groups: list[dict]    # per group: width before and after, why it could not change or grow
    notes: list[str]
    timings: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        changed = [g for g in self.groups if g["channels_before"] != g["channels_after"]]
        lines = [f"{'group':>5}  {'before':>6} -> {'after':<6}  feed-in"]
        lines += [f"{g['group']:>5}  {g['channels_before']:>6} -> {g['channels_after']:<6}  "
                  f"{', '.join(g['feed_in'][:2])}{' ...' if len(g['feed_in']) > 2 else ''}" for g in changed]
        widened = sum(g["channels_after"] > g["channels_before"] for g in self.groups)
        lines.append(f"{len(changed)} of {len(self.groups)} groups changed ({widened} widened, "
                     f"{len(changed) - widened} narrowed)")
        for metric in METRICS:
            target = self.options[f"target_{metric}"]
            lines.append(f"{metric}: {self.before[metric]:,} -> {self.after[metric]:,} "
                         f"({self.achieved[metric]:.4f} of the input"
                         + (f", target {target:g})" if target is not None else ")"))
        return "\n".join(lines)


def reconfigure(source: str | os.PathLike | onnx.ModelProto, *, target_macs: float | None = None,
                target_params: float | None = None, max_widen: float = 1.0, round_to: int = 1, seed: int = 0,
                min_keep: float | str = 0.1, exclude: Sequence[str] = (),
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[onnx.ModelProto, ReconfigureReport]:
    """Re-distribute the widths of an untrained model (a path or a ModelProto, never modified)
    under `target_macs` and/or `target_params` (fractions of the input's; above 1 only with
    `max_widen` > 1). Groups may narrow to `min_keep` and, with `max_widen` u > 1, grow to
    u times their width; new weights are drawn as PyTorch initialises a fresh layer from
    numpy's Generator seeded with `seed`. `exclude` (node-name globs) and `input_shapes` are
    `onnxprune.prune`'s. Returns (ModelProto, ReconfigureReport)."""
    model, report = reconfigure_model(source, target_macs=target_macs, target_params=target_params,
                                      max_widen=max_widen, round_to=round_to, seed=seed, min_keep=min_keep,
                                      exclude=exclude, input_shapes=input_shapes)
    return model.to_proto(), report


def reconfigure_model(source, *, target_macs=None, target_params=None, max_widen=1.0, round_to=1, seed=0,
                      min_keep=0.1, exclude=(), input_shapes=None):
    """`reconfigure`, returning the `Model` (the CLI saves it with io.save_model)."""
    check_source(source)
    budgets, max_widen, round_to, seed, min_keep = _check(target_macs, target_params, max_widen, round_to, seed,
                                                          min_keep)
    timings: dict = {}
    input_shapes, exclude = check_input_shapes(input_shapes), check_patterns(exclude)
    start = time.perf_counter()
    with stage("load", timings):
        model = load(source, input_shapes)
    with stage("analyze", timings):
        couplings = analyze(model, exclude)
        cannot_grow = passes.widen_groups.blockers(model, couplings) if max_widen > 1 else {}
    with stage("allocate", timings):
        wider, narrower = _continuous_widths(model, couplings, budgets, max_widen, min_keep, round_to, cannot_grow)
    with stage("widen", timings):
        wide, wide_couplings = model, couplings
        if wider:
            wide = model.copy()
            run_passes(wide, WIDEN_PASSES, Step(couplings, widen=wider, rng=np.random.default_rng(seed)))
            wide_couplings = _same_groups(couplings, analyze(wide, exclude))
    with stage("narrow", timings):
        removed, reached = _narrow(model, wide, wide_couplings, budgets, narrower, min_keep, round_to)
    with stage("rewrite", timings):
        out = rewrite(wide, wide_couplings, removed)
    with stage("verify", timings):
        check(out.to_proto().SerializeToString())
        run_pruned(model, wide_couplings, removed, out, {}, False, seed)
    timings["total"] = round(time.perf_counter() - start, 4)
    before, after = model_stats(model), model_stats(out)
    achieved = {m: after[m] / before[m] if before[m] else 1.0 for m in METRICS}
    met = all(achieved[m] <= t + 1e-12 for m, t in budgets.items())
    notes = list(model.notes) + _notes(couplings, cannot_grow, budgets, met, reached)
    options = {"command": "reconfigure", "target_macs": budgets.get("macs"), "target_params": budgets.get("params"),
               "max_widen": max_widen, "round_to": round_to, "seed": seed, "min_keep": min_keep,
               "exclude": list(exclude), "input_shapes": {k: list(v) for k, v in model.input_shapes.items()}}
    report = ReconfigureReport(options, before, after, achieved, met,
                               _group_rows(couplings, wide_couplings, removed, cannot_grow), notes, timings)
    return out, report


def _check(target_macs, target_params, max_widen, round_to, seed, min_keep):
    budgets = {m: v for m, v in (("macs", _number("--target-macs", target_macs)),
                                 ("params", _number("--target-params", target_params))) if v is not None}
    if not budgets:
        raise OnnxPruneError("reconfigure needs --target-macs and/or --target-params")
    max_widen = _number("--max-widen", max_widen)
    if not (1 <= max_widen < math.inf):
        raise OnnxPruneError(f"--max-widen must be a number >= 1, got {max_widen}")
    for metric, value in budgets.items():
        flag = f"--target-{metric}"
        if not (0 < value < math.inf):
            raise OnnxPruneError(f"{flag} must be a positive fraction of the input's {metric}, got {value}")
        if value > 1 and max_widen == 1:
            raise OnnxPruneError(f"{flag} {value:g} > 1 needs --max-widen > 1 (without it groups only narrow)")
    return (budgets, max_widen, integer("--round-to", round_to, least=1), integer("--seed", seed, least=0),
            check_min_keep(min_keep))


def _continuous_widths(model, couplings, budgets, max_widen, min_keep, round_to, cannot_grow):
    """The program's optimum, rounded: (group -> wider class count, group -> narrower count)."""
    tracker = CostTracker(model, couplings, fold=False)
    widths = class_widths(couplings)
    variables = program_variables(prunable_groups(couplings), min_keep)
    hi = np.array([0.0 if g.index in cannot_grow else math.log(max_widen) for g in variables])
    x = solve(combined_program(tracker, variables, list(budgets.items()), min_keep, hi=hi))
    wider, narrower = {}, {}
    for g, xg in zip(variables, x.tolist()):
        step = group_round_to(g, widths, round_to)
        width = g.width * math.exp(xg)
        if width > g.width + 1e-9:
            grown = min(math.ceil(math.ceil(width - 1e-9) / step) * step, int(max_widen * g.width + 1e-9))
            if grown > g.width:
                wider[g.index] = grown
                continue
        narrower[g.index] = round_up(min(width, g.width), g.width, floor_of(g.width, min_keep), step)
    return wider, narrower


def _same_groups(couplings, wide_couplings):
    """The wider model's analysis, checked to have the same groups in the same order (the
    widening adds channels, never nodes): group indices carry over."""
    same = len(couplings.groups) == len(wide_couplings.groups) and all(
        (a.feed_in, a.feed_out, a.frozen) == (b.feed_in, b.feed_out, b.frozen)
        for a, b in zip(couplings.groups, wide_couplings.groups))
    if not same:
        raise InternalError("the widened model's channel groups differ from the input's")
    return wide_couplings


def _narrow(model, wide, couplings, budgets, narrower, min_keep, round_to):
    """Classes to remove from the wider model: start at the rounded narrow widths, then the
    density greedy for each budget in turn. Returns (removed classes, {metric: fraction of the
    input's kept})."""
    base, base_wide = cost(model), cost(wide)
    scale = {m: (getattr(base_wide, m) / getattr(base, m) if getattr(base, m) else 1.0) for m in budgets}
    relative = [(m, min(t / scale[m], 1.0) if scale[m] else 1.0) for m, t in budgets.items()]  # of the wide model's
    result, kept = allocate_greedy_budgets(wide, couplings, np.zeros(couplings.n_classes), relative, min_keep,
                                           round_to, "all", False, density_loss, lambda tracker: dict(narrower))
    return result.removed, {m: kept[m] * scale[m] for m in budgets}


def _group_rows(couplings, wide_couplings, removed, cannot_grow) -> list[dict]:
    rows = []
    for g, w in zip(couplings.groups, wide_couplings.groups):
        after = w.width - len(removed.intersection(w.classes.tolist()))
        rows.append({"group": g.index, "channels_before": g.width, "channels_after": int(after),
                     "feed_in": g.feed_in, "feed_out": g.feed_out, "frozen": g.frozen,
                     "cannot_grow": cannot_grow.get(g.index)})
    return rows


def _notes(couplings, cannot_grow, budgets, met, reached) -> list[str]:
    notes = []
    frozen = sum(1 for g in couplings.groups if g.frozen)
    if frozen:
        notes.append(f"{frozen} groups are frozen (as for pruning) and keep their width")
    if cannot_grow:
        reasons = sorted(set(cannot_grow.values()))
        notes.append(f"{len(cannot_grow)} groups can narrow but not grow: {'; '.join(reasons)}")
    if not met:
        notes.append("budget not reached: every group is at its floor (--min-keep) or frozen; tracked "
                     + ", ".join(f"{m} {reached[m]:.4f} of the input's (target {t:g})" for m, t in budgets.items()))
    return notes
