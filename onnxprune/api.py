"""The library entry points: `prune` runs the whole pipeline, `analyze_model` stops after
the analysis. Stages: load -> analyze -> score -> allocate -> rewrite -> verify."""
from __future__ import annotations

import time

from . import passes
from .budget import (allocate, allocate_target, check_plan_classes, default_round_to, kept_whole_by_rounding,
                     parse_min_keep)
from .couplings import analyze
from .density import allocate_density
from .errors import OnnxPruneError
from .io import is_large
from .model import Model, load
from .pipeline import REWRITE_PASSES, Step, run_passes
from .plan import Plan, classes_from_plan, plan_from_classes
from .report import Report, group_table, model_stats
from .saliency import score
from .runtime import model_session
from .verify import DEFAULT_TOLERANCE, check, masking_oracle


def rewrite(model: Model, couplings, removed_classes, folds=None) -> Model:
    """Rewrite stage: the passes, in order, on a copy of the model. `folds` come from
    passes.fold_removed_constants.plan_folds on the original model."""
    slim = model.copy()
    step = Step(couplings, couplings.kept_fn(removed_classes), folds or {},
                frozenset(passes.remove_dead_nodes.dead_nodes(model)))
    run_passes(slim, REWRITE_PASSES, step)
    return slim


def analyze_model(source, input_shapes=None, exclude=()):
    model = load(source, input_shapes)
    return model, analyze(model, tuple(exclude))


# Defaults per criterion: BGSC scores are comparable across groups (one bound, in the same
# units everywhere), so it ranks globally, as DFPC does; magnitudes are not, so the
# baselines thin every group by the same fraction.
DEFAULT_SCOPE = {"bgsc": "global", "bgsc-position": "global"}
DEFAULT_RANKING = {"bgsc": "normalized", "bgsc-position": "raw"}
# rank: one ranking of channel classes decides how many each group keeps and which;
# density: PreCrop layer densities decide how many, the criterion which (onnxprune/density.py)
ALLOCATORS = ("rank", "density")


def prune(source, ratio: float | None = None, **options):
    """Prune a model (path or ModelProto). Returns (pruned ModelProto, Report).

    The budget is one of: `ratio` (fraction of prunable channel classes, default 0.3),
    `target_macs` or `target_params` (fraction of the original to keep), or a `plan`.
    The input is never modified. For models beyond protobuf's 2 GB, use `prune_model`
    and `onnxprune.io.save_model`, which never build the whole proto."""
    slim, report = prune_model(source, ratio, **options)
    proto = slim.to_proto()
    if not checked_in_memory(slim) and not is_large(slim):
        check(proto)
    return proto, report


def checked_in_memory(slim: Model) -> bool:
    """Models saved with external data (large, or external in the input) are checked from
    their saved file by io.save_model: building a proto only to check it doubles the memory."""
    return not (is_large(slim) or slim.external_data)


def prune_model(source, ratio: float | None = None, *, criterion: str = "l1", seed: int = 0,
                scope: str | None = None, ranking: str | None = None, target_macs: float | None = None,
                target_params: float | None = None, coupled: str = "all", min_keep=0.1,
                round_to: int | None = None, exclude=(), input_shapes=None, plan: Plan | None = None,
                verify: bool = False, tolerance: float = DEFAULT_TOLERANCE, fold: str = "exact",
                allocator: str = "rank", check_output: bool = True):
    """`prune`, returning the pruned `Model` (graph + numpy weights) instead of a proto.
    `check_output=False` leaves the ONNX checker to `io.save_model(..., check=True)`, which
    runs it on the bytes it is about to write (the CLI: one serialisation instead of two)."""
    timings = {}
    t = start = time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 4)
        t = now

    min_keep = parse_min_keep(min_keep)
    budgets = [b for b in (ratio, target_macs, target_params, plan) if b is not None]
    if len(budgets) > 1:
        raise OnnxPruneError("give one budget: --ratio, --target-macs, --target-params or --plan")
    if not budgets:
        ratio = 0.3
    if ratio is not None and not 0 <= ratio < 1:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    if allocator not in ALLOCATORS:
        raise OnnxPruneError(f"--allocator must be one of {ALLOCATORS}, got {allocator!r}")
    if allocator == "density" and target_macs is None and target_params is None:
        raise OnnxPruneError("--allocator density needs a cost budget: --target-macs or --target-params")
    round_to = default_round_to() if round_to is None else round_to
    scope = scope or DEFAULT_SCOPE.get(criterion, "local")
    ranking = ranking or DEFAULT_RANKING.get(criterion, "raw")
    model = load(source, input_shapes)
    lap("load")
    couplings = analyze(model, tuple(exclude))
    lap("analyze")
    target, score_notes = None, []
    if plan is not None:
        removed = classes_from_plan(couplings, plan)
    else:
        scored = score(model, couplings, criterion, seed)
        couplings = couplings.with_frozen(scored.frozen)   # what the criterion cannot score stays
        scores, score_notes = scored.values, [f"{criterion}: {n}" for n in scored.notes]
        lap("score")
        if ratio is not None:
            removed = allocate(couplings, scores, ratio, scope, min_keep, round_to, ranking, coupled)
        else:
            metric, fraction = ("macs", target_macs) if target_macs is not None else ("params", target_params)
            if allocator == "density":
                target = allocate_density(model, couplings, scores, metric, fraction, min_keep, round_to,
                                          coupled, fold != "none")
            else:
                target = allocate_target(model, couplings, scores, metric, fraction, scope, ranking,
                                         min_keep, round_to, coupled, fold != "none")
            removed = target.removed
    check_plan_classes(couplings, removed)
    lap("allocate")
    if fold not in passes.fold_removed_constants.MODES:
        raise OnnxPruneError(f"--fold must be one of {passes.fold_removed_constants.MODES}, got {fold!r}")
    folds, fold_stats = passes.fold_removed_constants.plan_folds(model, couplings, removed, fold, seed)
    lap("fold")
    slim = rewrite(model, couplings, removed, folds)
    lap("rewrite")
    if check_output and checked_in_memory(slim):
        check(slim.to_proto().SerializeToString())  # the checker would serialise a proto itself, more slowly
    try:  # the pruned model must run in onnxruntime; with --verify the oracle runs it
        if verify:
            oracle = masking_oracle(model, couplings, removed, slim, folds, seed=seed)
        else:
            oracle = None
            model_session(slim)
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot run the pruned model: {str(e).splitlines()[0]}") from None
    lap("verify")
    timings["total"] = round(time.perf_counter() - start, 4)
    notes = list(model.notes) + score_notes + ([fold_stats.note()] if removed and fold != "none" else [])
    if target is not None:
        notes.append(f"target {target.metric} {target.target:g}: reached {target.achieved:.4f}"
                     + ("" if target.reached else " (not reachable within the group floors)"))
    if plan is None:
        whole = kept_whole_by_rounding(couplings, round_to, min_keep, coupled)
        if whole:
            widths = ", ".join(str(g.width) for g in whole[:8]) + (", ..." if len(whole) > 8 else "")
            notes.append(f"--round-to {round_to} keeps {len(whole)} group(s) whole whatever the budget "
                         f"(widths {widths}: no smaller multiple fits); --round-to 1 lets them shrink")
    options = {"criterion": criterion if plan is None else "plan", "ratio": ratio,
               "target_macs": target_macs, "target_params": target_params, "scope": scope,
               "ranking": ranking, "allocator": allocator, "coupled": coupled, "min_keep": min_keep,
               "round_to": round_to, "fold": fold, "seed": seed, "exclude": list(exclude),
               "input_shapes": {k: list(v) for k, v in model.input_shapes.items()}}
    report = Report(options, model_stats(model), model_stats(slim), group_table(couplings, removed),
                    timings, oracle, notes, plan_from_classes(couplings, removed, options),
                    tolerance)
    return slim, report
