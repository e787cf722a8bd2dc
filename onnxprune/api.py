"""The library entry points: `prune` runs the whole pipeline, `analyze_model` stops after
the analysis. Stages: load -> analyze -> score -> allocate -> rewrite -> verify."""
from __future__ import annotations

import time

import passes

from .budget import allocate, check_plan_classes, parse_min_keep
from .couplings import analyze
from .errors import OnnxPruneError
from .model import Model, load
from .plan import Plan, classes_from_plan, plan_from_classes
from .report import Report, group_table, model_stats
from .saliency import score
from .runtime import model_session
from .verify import DEFAULT_TOLERANCE, check, masking_oracle


def rewrite(model: Model, couplings, removed_classes, folds=None) -> Model:
    """Rewrite stage: the passes, in order, on a copy of the model. `folds` come from
    passes.fold_removed_constants.plan_folds on the original model."""
    slim = model.copy()
    kept = couplings.kept_fn(removed_classes)
    passes.slice_initializers.run(slim, couplings.slices, kept)
    passes.update_attributes.run(slim, couplings.edits, kept)
    passes.fold_removed_constants.run(slim, folds or {}, couplings, kept)
    passes.remove_dead_nodes.run(slim)
    passes.infer_shapes.run(slim)
    return slim


def analyze_model(source, input_shapes=None, exclude=()):
    model = load(source, input_shapes)
    return model, analyze(model, tuple(exclude))


def prune(source, ratio: float = 0.3, *, criterion: str = "l1", seed: int = 0, scope: str = "local",
          min_keep=0.1, round_to: int = 1, exclude=(), input_shapes=None, plan: Plan | None = None,
          verify: bool = False, tolerance: float = DEFAULT_TOLERANCE, fold: str = "exact"):
    """Prune a model (path or ModelProto). Returns (pruned ModelProto, Report).
    The input is never modified."""
    timings = {}
    t = start = time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 4)
        t = now

    min_keep = parse_min_keep(min_keep)
    if not 0 <= ratio < 1:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    model = load(source, input_shapes)
    lap("load")
    couplings = analyze(model, tuple(exclude))
    lap("analyze")
    if plan is None:
        scores = score(model, couplings, criterion, seed)
        lap("score")
        removed = allocate(couplings, scores, ratio, scope, min_keep, round_to)
    else:
        removed = classes_from_plan(couplings, plan)
    check_plan_classes(couplings, removed)
    lap("allocate")
    if fold not in passes.fold_removed_constants.MODES:
        raise OnnxPruneError(f"--fold must be one of {passes.fold_removed_constants.MODES}, got {fold!r}")
    folds, fold_stats = passes.fold_removed_constants.plan_folds(model, couplings, removed, fold, seed)
    lap("fold")
    slim = rewrite(model, couplings, removed, folds)
    proto = slim.to_proto()
    lap("rewrite")
    check(proto)
    try:
        sess = model_session(slim)
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot load the pruned model: {str(e).splitlines()[0]}") from None
    del sess
    oracle = masking_oracle(model, couplings, removed, slim, folds, seed=seed) if verify else None
    lap("verify")
    timings["total"] = round(time.perf_counter() - start, 4)
    notes = list(model.notes) + ([fold_stats.note()] if removed and fold != "none" else [])
    options = {"ratio": ratio, "fold": fold, "criterion": criterion if plan is None else "plan", "seed": seed,
               "scope": scope, "min_keep": min_keep, "round_to": round_to, "exclude": list(exclude),
               "input_shapes": {k: list(v) for k, v in model.input_shapes.items()}}
    report = Report(options, model_stats(model), model_stats(slim), group_table(couplings, removed),
                    timings, oracle, notes, plan_from_classes(couplings, removed, options),
                    tolerance)
    return proto, report
