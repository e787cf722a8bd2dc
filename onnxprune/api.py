"""The library entry points. `prune` runs the whole pipeline: load -> analyze -> score ->
allocate -> fold -> rewrite -> verify. `plan` stops after allocate and returns the Plan
that `prune` would apply; `apply_plan` rewrites by a given Plan; `analyze_model` stops
after the analysis. Every stage runs inside `progress.stage`, which times it (the report's
timings) and shows it on a terminal when the CLI asks for that.

Arguments are checked before any work: a wrong type or value is one OnnxPruneError
naming the argument, never a crash halfway through."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx

from . import passes
from .allocation import allocate_budget
from .budget import check_plan_classes, kept_whole_by_rounding
from .couplings import analyze
from .latency_model import TimingOptions
from .errors import OnnxPruneError
from .io import is_large
from .load import load
from .model import Model
from .pipeline import REWRITE_PASSES, Step, run_passes
from .arguments import (DEFAULT_RESIDUAL, Settings, check_data_options, check_flag, check_input_shapes,
                        check_needs_data, check_patterns, check_residual, check_source, settings, type_name)
from .plan import Plan, classes_from_plan, plan_from_classes
from .progress import enable as enable_progress, stage
from .recover import DEFAULT_SYNTHETIC_NOTE, DataOptions, batches_of, calibration_sets, default_data, recover_stage
from .report import PlanInfo, Report, group_table, model_stats
from .residual import gather_note
from .runtime import model_session, random_inputs
from .saliency import CalibrationData, needs_data, score
from .plan_choice import Trials, candidates, choose_plan, with_finer_steps
from .verify import DEFAULT_TOLERANCE, check, masking_oracle

log = logging.getLogger("onnxprune")


def rewrite(model: Model, couplings, removed_classes, folds=None) -> Model:
    """Rewrite stage: the passes, in order, on a copy of the model. `folds` come from
    passes.fold_removed_constants.plan_folds on the original model."""
    slim = model.copy()
    step = Step(couplings, couplings.kept_fn(removed_classes), folds or {},
                frozenset(passes.remove_dead_nodes.dead_nodes(model)))
    run_passes(slim, REWRITE_PASSES, step)
    return slim


def analyze_model(source: str | os.PathLike | onnx.ModelProto,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, exclude: Sequence[str] = (),
                  residual: str = DEFAULT_RESIDUAL):
    """Load and analyze a model: returns (Model, Couplings); changes nothing."""
    check_source(source)
    input_shapes, exclude = check_input_shapes(input_shapes), check_patterns(exclude)
    residual = check_residual(residual)
    with stage("load"):
        model = load(source, input_shapes)
    with stage("analyze"):
        return model, analyze(model, exclude, residual)


def prune(source: str | os.PathLike | onnx.ModelProto, ratio: float | None = None, *,
          target_macs: float | None = None, target_params: float | None = None, plan: Plan | None = None,
          criterion: str = "auto", seed: int = 0, scope: str | None = None, ranking: str | None = None,
          allocator: str | None = None, coupled: str | None = None, min_keep: float | str = 0.1,
          round_to: int | None = None, exclude: Sequence[str] = (),
          input_shapes: Mapping[str, Sequence[int]] | None = None, fold: str = "exact",
          verify: bool = False, tolerance: float = DEFAULT_TOLERANCE, calibration: object = None,
          calibration_limit: int | None = None, calibration_preprocess: str | None = None,
          eval_data: object = None, labels_key: str = "labels",
          recover: str = "auto", residual: str = DEFAULT_RESIDUAL, target_latency: float | None = None,
          timing: TimingOptions | None = None,
          speed_weight: float | None = None) -> tuple[onnx.ModelProto, Report]:
    """Prune a model (a path or a ModelProto, never modified). Returns (pruned ModelProto, Report).

    Budget, one of (default: ratio 0.3):
      ratio: fraction in [0, 1) of the prunable channel classes to remove.
      target_macs: fraction in (0, 1] of the original MACs to keep.
      target_params: fraction in (0, 1] of the original parameters to keep.
      target_latency: fraction in (0, 1] of the original's latency to keep, measured in
        onnxruntime where `timing` (an onnxprune.TimingOptions: provider, threads, batch,
        warm-up and timed runs, latency table path) says (docs/methods.md §6).
      plan: an onnxprune.Plan to apply instead of scoring (see `plan` and `apply_plan`).
    Options:
      criterion: saliency, one of onnxprune.saliency.CRITERIA ('l1', 'l2', 'bgsc', 'random', ...);
        'activation', 'fluctuation', 'heatmap' and 'lsq-aware' read `calibration`.
      seed: integer >= 0; seeds the 'random' criterion, the fold and the oracle's inputs.
      scope: 'local' (the same fraction in every group) or 'global' (one ranking); default
        'global' for bgsc, 'local' otherwise.
      ranking: with a global scope, 'raw' or 'normalized' scores; default 'normalized' for bgsc.
      allocator: 'auto' (default: candidate plans measured on held-out calibration samples, or
        without `calibration` on the synthetic images of the default recovery; 'rank' where
        there is nothing to measure on), 'rank', 'density', 'synexp', 'synexp-weighted',
        'sensitivity' or 'latency' (all but 'auto' and 'rank' need target_macs or
        target_params; 'sensitivity' also `calibration`;
        'synexp-weighted' and 'latency' measure group curves on `calibration` when given;
        'latency' also times the layers where `timing` says, docs/methods.md §6).
      speed_weight: with allocator 'latency', a fraction of the latency saved is worth W times
        the importance the importance-only plan removes (default 128; 0: that plan).
      coupled: 'all', 'only' (coupled groups only) or 'none' (uncoupled groups only).
      residual: 'coupled' (a residual Add's operands keep the same channels) or 'independent'
        (each branch keeps its own; the Add reads a branch that lacks some of the union's
        channels through Pad + Gather; docs/methods.md §2).
      min_keep: floor per group, a count >= 1 or a fraction in (0, 1).
      round_to: kept counts are multiples of this integer >= 1 (default: 16 on AVX-512 CPUs, else 8).
      exclude: node-name globs (a list, not a string) whose channels stay.
      input_shapes: {input name: shape} fixing dynamic dimensions.
      fold: 'exact', 'approx' or 'none': constants carried by removed channels.
      verify: run the masking oracle (report.oracle_passed tells the result).
      tolerance: the oracle's tolerance, a finite number >= 0.
    With data (docs/methods.md §5):
      calibration: unlabelled samples of the inputs — an .npz (arrays keyed by input name),
        an .npy (one input), a folder of images, an iterable of feed dicts or a
        CalibrationSet. Recovery fits on them; a fifth is held out to measure fidelity
        unless eval_data is given.
      calibration_limit: use the first N calibration samples.
      calibration_preprocess: preprocessing of an image folder (onnxprune/calibration.py).
      eval_data: held-out samples for the fidelity report (same forms as calibration).
      labels_key: the npz key of integer labels (adds accuracy to the fidelity report).
      recover: recovery methods after the exact rewrite: 'none' or a comma list of 'merge',
        'means', 'stats', 'lsq', 'fit' (run in that order; 'fit' needs torch); 'auto' is
        'lsq,fit' with calibration (the fit kept where the held-out outputs say it helps and
        where it can run: onnxprune/recover.py `auto_fit`); without, 'lsq' on synthetic images
        for an image model (`default_calibration`), else 'stats'. 'stats' is the fast
        data-free path.
    Bad arguments raise OnnxPruneError before any work. For models beyond protobuf's 2 GB,
    use `prune_model` and `onnxprune.io.save_model`, which never build the whole proto."""
    slim, report = prune_model(
        source, ratio, target_macs=target_macs, target_params=target_params, plan=plan,
        criterion=criterion, seed=seed, scope=scope, ranking=ranking, allocator=allocator,
        coupled=coupled, min_keep=min_keep, round_to=round_to, exclude=exclude,
        input_shapes=input_shapes, fold=fold, verify=verify, tolerance=tolerance, calibration=calibration,
        calibration_limit=calibration_limit, calibration_preprocess=calibration_preprocess,
        eval_data=eval_data, labels_key=labels_key, recover=recover, residual=residual,
        target_latency=target_latency, timing=timing, speed_weight=speed_weight)
    proto = slim.to_proto()
    if not checked_in_memory(slim) and not is_large(slim):
        check(proto)
    return proto, report


def checked_in_memory(slim: Model) -> bool:
    """Models saved with external data (large, or external in the input) are checked from
    their saved file by io.save_model: building a proto only to check it doubles the memory."""
    return not (is_large(slim) or slim.external_data)


def prune_model(source: str | os.PathLike | onnx.ModelProto, ratio: float | None = None, *,
                target_macs: float | None = None, target_params: float | None = None,
                plan: Plan | None = None, criterion: str = "auto", seed: int = 0, scope: str | None = None,
                ranking: str | None = None, allocator: str | None = None, coupled: str | None = None,
                min_keep: float | str = 0.1, round_to: int | None = None, exclude: Sequence[str] = (),
                input_shapes: Mapping[str, Sequence[int]] | None = None, fold: str = "exact",
                verify: bool = False, tolerance: float = DEFAULT_TOLERANCE, calibration: object = None,
                calibration_limit: int | None = None, calibration_preprocess: str | None = None,
                eval_data: object = None, labels_key: str = "labels", recover: str = "auto",
                check_output: bool = True, residual: str = DEFAULT_RESIDUAL, target_latency: float | None = None,
                timing: TimingOptions | None = None, speed_weight: float | None = None) -> tuple[Model, Report]:
    """`prune`, returning the pruned `Model` (graph + numpy weights) instead of a proto; the
    arguments are `prune`'s. `check_output=False` leaves the ONNX checker to
    `io.save_model(..., check=True)`, which runs it on the bytes it is about to write (the
    CLI: one serialisation instead of two).

    The pruned model is run once by onnxruntime (by the oracle with `verify`). If it cannot
    run while the input can, that is onnxprune's bug: a RuntimeError, not an OnnxPruneError."""
    s = settings(ratio=ratio, target_macs=target_macs, target_params=target_params, plan=plan,
                  criterion=criterion, seed=seed, scope=scope, ranking=ranking, allocator=allocator,
                  coupled=coupled, min_keep=min_keep, round_to=round_to, exclude=exclude,
                  input_shapes=input_shapes, fold=fold, verify=verify, tolerance=tolerance,
                  calibration=calibration, residual=residual, target_latency=target_latency, timing=timing,
                  speed_weight=speed_weight)
    check_flag("check_output", check_output)
    check_data_options(recover, calibration_limit, labels_key)
    check_needs_data(s, calibration)
    check_source(source)
    timings: dict = {}
    start = time.perf_counter()
    model, couplings = _load(source, s, timings)
    data = DataOptions(calibration, calibration_limit, calibration_preprocess, eval_data, labels_key, recover)
    s, removed, target, couplings, score_notes, trials, sets = _score_and_allocate(
        model, couplings, s, timings, data, allocator is not None)
    reused = trials.reuse(removed) if trials is not None else None   # auto's trial of this plan was the recovery
    if reused is not None:
        slim, folds, fold_stats = reused.rewritten
    elif target is not None and target.rewrite is not None:   # built and timed by the latency allocator
        slim, folds, fold_stats = target.rewrite
        target.rewrite = None
    else:
        slim, folds, fold_stats = _rewrite(model, couplings, removed, s, timings)
    with stage("verify", timings):
        if check_output and checked_in_memory(slim):
            check(slim.to_proto().SerializeToString())  # the checker would serialise a proto itself, more slowly
        oracle = run_pruned(model, couplings, removed, slim, folds, s.verify, s.seed)
    if reused is not None:
        slim, fidelity, unrecovered, recovery = reused.recovered
        timings.update(reused.timings)   # inside "allocate" already; listed as the stages they were
        if trials.options.calibration is not data.calibration:   # the data-free default's synthetic images
            recovery.setdefault("notes", []).insert(0, DEFAULT_SYNTHETIC_NOTE)
    else:
        slim, fidelity, unrecovered, recovery = recover_stage(model, couplings, removed, slim, folds, data, s.seed,
                                                              timings, sets)
    timings["total"] = round(time.perf_counter() - start, 4)
    fold_note = [fold_stats.note()] if removed and s.fold != "none" else []
    notes = (list(model.notes) + score_notes + fold_note + _residual_notes(couplings, removed)
             + _budget_notes(couplings, s, target, removed) + recovery.get("notes", []))
    options = _report_options(s, model)
    report = Report(options, model_stats(model), model_stats(slim), group_table(couplings, removed),
                    timings, oracle, notes, plan_from_classes(couplings, removed, options), s.tolerance,
                    fidelity, unrecovered, recovery)
    return slim, report


def plan(source: str | os.PathLike | onnx.ModelProto, ratio: float | None = None, *,
         target_macs: float | None = None, target_params: float | None = None, criterion: str = "auto",
         seed: int = 0, scope: str | None = None, ranking: str | None = None, allocator: str | None = None,
         coupled: str | None = None, min_keep: float | str = 0.1, round_to: int | None = None,
         exclude: Sequence[str] = (), input_shapes: Mapping[str, Sequence[int]] | None = None,
         fold: str = "exact", calibration: object = None, calibration_limit: int | None = None,
         calibration_preprocess: str | None = None, eval_data: object = None,
         residual: str = DEFAULT_RESIDUAL, target_latency: float | None = None,
         timing: TimingOptions | None = None, speed_weight: float | None = None) -> tuple[Plan, PlanInfo]:
    """Score and allocate without rewriting: returns (the Plan that `prune` with the same
    arguments would apply, PlanInfo). The arguments are `prune`'s (`fold` matters here too:
    a MAC or parameter target counts the biases that folding adds; the data criteria, the
    sensitivity allocator and synexp-weighted read `calibration`, less the fifth `prune` holds out unless
    `eval_data` is given; `target_latency` rewrites and times the candidate plans). Edit or inspect the
    plan, then `apply_plan` it."""
    s = settings(ratio=ratio, target_macs=target_macs, target_params=target_params, plan=None,
                  criterion=criterion, seed=seed, scope=scope, ranking=ranking, allocator=allocator,
                  coupled=coupled, min_keep=min_keep, round_to=round_to, exclude=exclude,
                  input_shapes=input_shapes, fold=fold, verify=False, tolerance=DEFAULT_TOLERANCE,
                  calibration=calibration, residual=residual, target_latency=target_latency, timing=timing,
                  speed_weight=speed_weight)
    check_data_options("auto", calibration_limit, "labels")
    check_needs_data(s, calibration)
    check_source(source)
    timings: dict = {}
    start = time.perf_counter()
    model, couplings = _load(source, s, timings)
    data = DataOptions(calibration, calibration_limit, calibration_preprocess, eval_data, "labels", "auto")
    s, removed, target, couplings, score_notes, _, _ = _score_and_allocate(model, couplings, s, timings, data,
                                                                         allocator is not None)
    timings["total"] = round(time.perf_counter() - start, 4)
    options = _report_options(s, model)
    info = PlanInfo(options, model_stats(model), group_table(couplings, removed), timings,
                    list(model.notes) + score_notes + _residual_notes(couplings, removed)
                    + _budget_notes(couplings, s, target, removed))
    return plan_from_classes(couplings, removed, options), info


def apply_plan(source: str | os.PathLike | onnx.ModelProto, plan: Plan, *, seed: int = 0,
               exclude: Sequence[str] = (), input_shapes: Mapping[str, Sequence[int]] | None = None,
               fold: str = "exact", verify: bool = False, tolerance: float = DEFAULT_TOLERANCE,
               residual: str = DEFAULT_RESIDUAL) -> tuple[onnx.ModelProto, Report]:
    """Rewrite `source` by `plan` (from `plan`, `Report.plan` or `Plan.from_json`). Returns
    (pruned ModelProto, Report). Pass the `seed`, `exclude`, `input_shapes`, `fold` and
    `residual` that made the plan to get exactly what `prune` would have produced."""
    if not isinstance(plan, Plan):
        raise OnnxPruneError(f"plan must be an onnxprune.Plan, got {type_name(plan)}")
    return prune(source, plan=plan, seed=seed, exclude=exclude, input_shapes=input_shapes, fold=fold,
                 verify=verify, tolerance=tolerance, residual=residual)


# -- stages ----------------------------------------------------------------------------------
def _load(source, s: "Settings", timings: dict):
    with stage("load", timings):
        model = load(source, s.input_shapes)
    with stage("analyze", timings):
        couplings = analyze(model, s.exclude, s.residual)
    log.debug("%d channel classes in %d groups (%d frozen)", couplings.n_classes, len(couplings.groups),
              sum(1 for g in couplings.groups if g.frozen))
    return model, couplings


def _choice_reads_data(s: "Settings", calibration) -> bool:
    """synexp-weighted and the latency allocator measure group curves on calibration data
    when there is some; `--allocator auto` measures its candidate plans on it."""
    measures = s.allocator in ("synexp-weighted", "latency") or s.target_latency is not None
    return s.plan is None and (needs_data(s.criterion) or s.allocator in ("sensitivity", "auto")
                               or (measures and calibration is not None))


def resolve_auto(s: "Settings", model, data: DataOptions, explicit: bool) -> tuple["Settings", DataOptions]:
    """(settings, the data `--allocator auto` measures its plans on). Real calibration data,
    or `--calib synthetic`, as given. Without data, the synthetic images the default
    recovery calibrates an image model on (`default_calibration`). Measured without data
    (benchmarks/RESULTS_accuracy.md, session 10): the worst of the 16 digits files at T 0.7
    and `--round-to` 8 went from 90.0 to 98.2 %, and PP-OCRv4 recognition at T 0.8 from 0 to
    87 % of characters read right. Where there is nothing to measure on (no data and
    `--recover` other than auto, or a model synthetic images cannot feed), the default is
    `rank`; an explicit `--allocator auto` is an error."""
    if s.allocator != "auto" or data.calibration is not None:
        return s, data
    if (choice_data := default_data(model, data)).calibration is not None:
        return s, choice_data
    if explicit:
        raise OnnxPruneError("--allocator auto measures its candidate plans on calibration data: give --calib "
                             "(real inputs, or 'synthetic' for an image model)")
    return replace(s, allocator="rank"), data


def _score_and_allocate(model, couplings, s: "Settings", timings: dict, data: DataOptions, explicit: bool):
    """`_choose` with `auto` resolved and the data it reads loaded; adds the (calibration,
    held-out) sets to `_choose`'s tuple. The data-free default's choice on synthetic images
    must not break a prune that works without it: if it fails, `rank` allocates, and a note
    says so."""
    s, choice_data = resolve_auto(s, model, data, explicit)
    try:
        sets = calibration_sets(model, choice_data, s.seed) if _choice_reads_data(s, choice_data.calibration) else None
        return _choose(model, couplings, s, timings, sets, choice_data) + (sets,)
    except OnnxPruneError:
        raise
    except Exception as e:
        if choice_data is data:
            raise
        s, removed, target, couplings, notes, _ = _choose(model, couplings, replace(s, allocator="rank"), timings)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return s, removed, target, couplings, notes + [f"--allocator auto on synthetic images could not run ({first}); "
                                                       "rank allocated"], None, None


def _score_data(model, sets):
    """The calibration part (never the held-out one) for the score and allocate stages."""
    return None if sets is None else CalibrationData(batches_of(model, sets[0]), len(sets[0]))


def _choose(model, couplings, s: "Settings", timings: dict, sets=None, options: DataOptions | None = None):
    """Score and allocate: (the settings with `--allocator auto` resolved, removed channel
    classes, TargetResult or None, the couplings with what the criterion could not score
    frozen, the criterion's and allocator's notes, auto's Trials or None). `sets`:
    (calibration, held-out) when the choice reads data; `options`: how the prune recovers
    (`--allocator auto` tries it)."""
    trials = None
    if s.plan is not None:
        with stage("allocate", timings):
            removed = classes_from_plan(couplings, s.plan)
            check_plan_classes(couplings, removed)
        return s, removed, None, couplings, [], trials
    data = _score_data(model, sets)
    with stage("score", timings):
        scored = score(model, couplings, s.criterion, s.seed, data)
        couplings = couplings.with_frozen(scored.frozen)   # what the criterion cannot score stays
    notes = [f"{s.criterion}: {n}" for n in scored.notes]

    def rewrite(removed):
        return _rewrite(model, couplings, removed, s)
    with stage("allocate", timings):
        if s.allocator == "auto":   # several allocations, measured (onnxprune/plan_choice.py)
            trials = Trials(model, couplings, sets, options, rewrite, s.seed)
            previous = enable_progress(False)   # the trials' own stages run inside this one

            def settings_of(c):
                return replace(s, allocator=c.allocator, coupled=c.coupled, ranking=c.ranking or s.ranking,
                               round_to=c.round_to or s.round_to)

            allocations = {}

            def allocate(c):   # each candidate's plan is made once
                if c not in allocations:
                    allocations[c] = allocate_budget(model, couplings, scored.values, settings_of(c), data, rewrite)
                return allocations[c]
            try:
                options = candidates(s.coupled, s.ranking, s.ratio is None)
                first_target = allocate(options[0])[1]
                options = with_finer_steps(options, first_target and first_target.finest_step)
                kept, (removed, target, allocator_notes), choice_notes = choose_plan(options, allocate, trials,
                                                                                     trials.how)
            finally:
                enable_progress(previous)
            s = settings_of(kept)
            allocator_notes = allocator_notes + choice_notes
        else:
            removed, target, allocator_notes = allocate_budget(model, couplings, scored.values, s, data, rewrite)
        check_plan_classes(couplings, removed)
    log.debug("removing %d of %d channel classes", len(removed), couplings.n_classes)
    return s, removed, target, couplings, notes + allocator_notes, trials


def _rewrite(model, couplings, removed, s: "Settings", timings: dict | None = None):
    """(pruned Model, folds, fold stats) of a plan: the fold and rewrite stages."""
    with stage("fold", timings):
        folds, fold_stats = _plan_folds(model, couplings, removed, s)
    with stage("rewrite", timings):
        return rewrite(model, couplings, removed, folds), folds, fold_stats


def _plan_folds(model, couplings, removed, s: "Settings"):
    """The fold runs the input model in onnxruntime: when that fails, say so as bad input."""
    try:
        return passes.fold_removed_constants.plan_folds(model, couplings, removed, s.fold, s.seed)
    except OnnxPruneError:
        raise
    except Exception:
        raise_if_input_fails(model, s.seed)
        raise


def run_pruned(model, couplings, removed, slim, folds, verify: bool, seed: int):
    """Run the pruned model once (the oracle does, with `verify`): an output onnxruntime
    cannot run is never returned. Returns the OracleResult or None."""
    try:
        if verify:
            return masking_oracle(model, couplings, removed, slim, folds, seed=seed)
        run_once(slim, seed)
        return None
    except OnnxPruneError:
        raise
    except Exception as e:
        raise_if_input_fails(model, seed)
        raise RuntimeError(f"onnxruntime cannot run the pruned model, though it runs the input model: "
                           f"{_first_line(e)}") from e


def run_once(model: Model, seed: int = 0) -> None:
    """Run a model once in onnxruntime on random inputs, as the oracle draws them."""
    sess = model_session(model)
    sess.run(None, random_inputs(model, np.random.default_rng(seed), sess))


def raise_if_input_fails(model: Model, seed: int) -> None:
    """A run failed: if onnxruntime cannot run the input model either, the input is at fault."""
    try:
        run_once(model, seed)
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot run the input model: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]


def _residual_notes(couplings, removed) -> list[str]:
    note = gather_note(couplings, couplings.kept_fn(removed))
    return [note] if note else []


def _budget_notes(couplings, s: "Settings", target, removed) -> list[str]:
    notes = []
    if target is not None and target.metric != "latency":   # the latency allocator's note says it, measured
        notes += [f"target {metric} {goal:g}: reached {kept:.4f}" for metric, (goal, kept) in target.earlier.items()]
        notes.append(f"target {target.metric} {target.target:g}: reached {target.achieved:.4f}"
                     + ("" if target.reached else " (not reachable within the group floors)"))
    if s.plan is None:
        # groups cut in finer steps to reach a cost target are in the allocator's note instead
        whole = [g for g in kept_whole_by_rounding(couplings, s.round_to, s.min_keep, s.coupled)
                 if not any(c in removed for c in g.classes.tolist())]
        if whole:
            widths = ", ".join(str(g.width) for g in whole[:8]) + (", ..." if len(whole) > 8 else "")
            notes.append(f"--round-to {s.round_to} keeps {len(whole)} group(s) whole "
                         f"(widths {widths}: no smaller multiple fits); --round-to 1 lets them shrink")
    return notes


def _report_options(s: "Settings", model: Model) -> dict:
    return {"criterion": s.criterion if s.plan is None else "plan", "ratio": s.ratio,
            "target_macs": s.target_macs, "target_params": s.target_params, "target_latency": s.target_latency,
            "scope": s.scope,
            "ranking": s.ranking, "allocator": s.allocator, "coupled": s.coupled, "min_keep": s.min_keep,
            **({"speed_weight": s.speed_weight} if s.allocator == "latency" else {}),
            "round_to": s.round_to, "fold": s.fold, "seed": s.seed, "residual": s.residual,
            "exclude": list(s.exclude), "input_shapes": {k: list(v) for k, v in model.input_shapes.items()}}
