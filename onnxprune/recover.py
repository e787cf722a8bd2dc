"""Recover stage (docs/methods.md §5): after the exact rewrite has been verified, change the
surviving weights to win back fidelity on calibration data. Runs the recovery passes of
onnxprune/pipeline.py that are asked for, in their fixed order."""
from __future__ import annotations

from dataclasses import dataclass, replace

import os

import numpy as np

import onnx

from .calibration import CalibrationSet, load_calibration
from .errors import OnnxPruneError
from .fidelity import compare_models
from .io import is_large
from .passes import fit_outputs, remove_dead_nodes
from .passes.fold_removed_constants import add_to_bias
from .pipeline import RECOVERY_PASSES, Step, run_passes
from .progress import stage
from .synthetic import SYNTHETIC, fits_without_options

METHODS = tuple(RECOVERY_PASSES)


def parse_methods(spec) -> tuple[str, ...]:
    """'lsq' / 'means,stats' / ('stats', 'lsq') / 'none' -> the methods, in pipeline order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in RECOVERY_PASSES]
    if unknown:
        raise OnnxPruneError(f"unknown recovery method(s) {unknown}; choose from {list(METHODS)} or 'none'")
    return tuple(m for m in METHODS if m in names)


def recover(original, slim, couplings, removed_classes, calibration, size: int, methods, folds=None):
    """Returns a recovered copy of `slim` (a Model) and the notes the passes wrote.
    `calibration()` returns a fresh iterator of feed dicts; `size` is its sample count."""
    methods = parse_methods(methods)
    out = slim.copy()
    if not methods or not removed_classes:
        return out, []
    step = Step(couplings, couplings.kept_fn(removed_classes), dict(folds or {}), original=original,
                calibration=calibration, calibration_size=size)
    run_passes(out, [RECOVERY_PASSES[m] for m in methods], step)
    _biases_into_batch_norm(out, slim)
    # the weights and biases recovery replaced are read by no one now: drop them (and only them)
    remove_dead_nodes.run(out, Step(dead_in_input=frozenset(remove_dead_nodes.dead_nodes(out))))
    return out, step.notes


def _biases_into_batch_norm(model, before) -> None:
    """A bias recovery gave a layer that had none goes into the BatchNormalization right
    after it (mean -= bias, exact: the fold pass's own rule), so no parameter is added there."""
    had_bias = {n.name for n in before.graph.node if len(n.input) > 2 and n.input[2]}
    for node in model.graph.node:
        if node.name in had_bias or len(node.input) < 3 or not node.input[2] or node.op_type != "Conv":
            continue
        if model.index().sole_user(node.output[0], "BatchNormalization") is None:
            continue
        delta = np.asarray(model.inits[node.input[2]])
        del node.input[2]
        add_to_bias(model, node, delta, "recovered")   # no bias now: it lands in the BN's mean
    model.touch()


DEFAULT_SYNTHETIC_NOTE = ("no calibration data: recovered on synthetic images (1/f noise) by default; "
                          "--calib gives real inputs, --recover stats the fast BN-statistics recovery, "
                          "--recover none the bare exact rewrite")


def default_calibration(model, calibration, recover: str):
    """What recovery calibrates on when the user gives nothing: with `recover="auto"`, an image
    model gets synthetic images (input range fitted to its first BatchNormalization, else
    pixels in [0, 1]). On the 16 trained digits files that kept 97.6-99.8 % accuracy at 80 %
    of the MACs where BN-statistics recovery alone kept 82-99.8 % (benchmarks/RESULTS_accuracy.md).
    `recover="stats"` is the fast data-free path; other models keep it, and so do models over
    2 GB (a calibration run there costs minutes and several times the model's size in memory:
    `--calib synthetic` asks for it)."""
    if calibration is None and recover == "auto" and fits_without_options(model) and not is_large(model):
        return SYNTHETIC
    return calibration


def default_data(model, data: "DataOptions") -> "DataOptions":
    """`data` with the calibration the recovery will use: without calibration data, an
    image model's synthetic images (`default_calibration`)."""
    calibration = default_calibration(model, data.calibration, data.recover)
    return data if calibration is data.calibration else replace(data, calibration=calibration)


# With real calibration data, `auto` also tries mean compensation and keeps whichever
# leaves the held-out outputs closer to the original's. On the digits models lsq wins by far
# (means alone: 45-70 %); on PP-OCRv4 recognition lsq fits the convolutions' pre-activation
# outputs and wrecks the model (0.149 character accuracy at 80 % of the MACs) where means
# keeps it at 0.991 (benchmarks/RESULTS_accuracy.md, "PP-OCRv4 ... session 6").
AUTO_ALTERNATIVE = "means"


def default_methods(with_data: bool) -> str:
    """What `recover="auto"` runs. With calibration data, the least-squares refit: on the
    trained digits models it kept 98-99.8 % accuracy where plain pruning kept ~10 %, far
    ahead of statistics correction and mean compensation (benchmarks/RESULTS_accuracy.md);
    then the end-to-end fit where it can run (`auto_fit`). Without data, statistics
    correction from the BatchNormalization statistics (a no-op on models without BN):
    0.10-0.45 -> 0.90-0.98 at 80 % of the MACs on the same models."""
    return "lsq,fit" if with_data else "stats"


def why_auto_does_not_fit(model, samples: int, synthetic: bool) -> str | None:
    """Why `recover="auto"` leaves the end-to-end fit out ("" on synthetic images: not
    measured there, nothing to report); None where it runs it."""
    return "" if synthetic else fit_outputs.cannot_fit(model, samples)


def auto_fit(methods: tuple, model, samples: int, synthetic: bool, allowed: bool = True):
    """`recover="auto"`'s methods without the end-to-end fit where it does not run
    (`why_auto_does_not_fit`: synthetic images, no torch, an operator torch lacks, over its
    budget; the returned note says which) or where the caller does not allow it (the trials
    of `--allocator auto`: the fit runs once, on the plan kept). Returns (methods, note or None)."""
    if "fit" not in methods:
        return methods, None
    reason = why_auto_does_not_fit(model, samples, synthetic) if allowed else ""
    if reason is None:
        return methods, None
    return tuple(m for m in methods if m != "fit"), (f"fit_outputs: not run ({reason})" if reason else None)


# -- the recover stage of prune ------------------------------------------------------
@dataclass(frozen=True)
class DataOptions:
    """The data arguments of prune: calibration for recovery, held-out for fidelity."""
    calibration: object
    limit: int | None
    preprocess: str | None
    eval_data: object
    labels_key: str
    recover: str
    end_to_end: bool = True   # auto may run the end-to-end fit (plan_choice's trials say False)


# Samples per onnxruntime run while collecting statistics.
CALIBRATION_BATCH = 32


def recover_stage(model, couplings, removed, slim, folds, data: DataOptions, seed: int, timings: dict,
                  sets=None, original_outputs: dict | None = None):
    """With calibration data: run the recovery passes (after the oracle checked the exact
    rewrite) and measure fidelity on held-out samples, without and with recovery.
    `sets`: (calibration, held-out) when the score stage has loaded them already (without
    data: the synthetic ones, when `--allocator auto` chose on them);
    `original_outputs`: a dict shared by calls on the same held-out set (compare_models).
    Returns (model, fidelity, fidelity before recovery or None, recovery info).
    Without data, an image model calibrates on synthetic images (`default_calibration`)."""
    synthetic = default_data(model, data)
    if not removed or synthetic is data:
        return _recover_stage(model, couplings, removed, slim, folds, data, seed, timings, sets, original_outputs)
    try:
        out = _recover_stage(model, couplings, removed, slim, folds, synthetic, seed, timings, sets,
                             original_outputs)
        out[3]["notes"].insert(0, DEFAULT_SYNTHETIC_NOTE)
    except Exception as e:   # our default must not break a prune that works without it: say so, fall back
        out = _recover_stage(model, couplings, removed, slim, folds, data, seed, timings)
        out[3].setdefault("notes", []).insert(0, "recovery on synthetic images could not run "
                                              f"({str(e).strip().splitlines()[0][:200]}); BN statistics only")
    return out


def _recover_stage(model, couplings, removed, slim, folds, data: DataOptions, seed: int, timings: dict,
                   sets=None, original_outputs: dict | None = None):
    methods = parse_methods(default_methods(data.calibration is not None) if data.recover == "auto"
                            else data.recover)
    if data.calibration is None:
        return _recover_without_data(model, couplings, removed, slim, folds, data, methods, timings)
    with stage("recover", timings):
        calib, held = sets or calibration_sets(model, data, seed)
        fit_note = None
        if data.recover == "auto":
            methods, fit_note = auto_fit(methods, model, len(calib), calib.describe()["kind"] == SYNTHETIC,
                                         data.end_to_end)
        tries = [methods]
        if data.recover == "auto" and calib.describe()["kind"] != SYNTHETIC:
            tries.append(parse_methods(AUTO_ALTERNATIVE))
        if data.recover == "auto" and "fit" in methods:   # auto keeps the fit only where it helps
            tries.append(tuple(m for m in methods if m != "fit"))
        recovered = _recover_all(model, slim, couplings, removed, batches_of(model, calib), len(calib), tries, folds)
    with stage("evaluate", timings):
        kept = {} if original_outputs is None else original_outputs   # the original's outputs, computed once
        before = compare_models(model, slim, held, labels=held.labels, original_outputs=kept) if methods else None
        measured = [compare_models(model, rec, held, labels=held.labels, original_outputs=kept)
                    for rec, _ in recovered]
    if held.describe()["kind"] == SYNTHETIC:   # say so: these numbers are not about real inputs
        for f in [before] + measured:
            if f is not None:
                f.notes.append("The held-out samples are synthetic images (1/f noise), not real inputs: "
                               "give --eval-data to measure on real ones.")
    errors = [np.inf if (e := held_out_error(f)) is None else e for f in measured]
    best = int(np.argmin(errors))   # the first on ties: the default
    (slim_rec, notes), after = recovered[best], measured[best]
    if fit_note:
        notes = notes + [fit_note]
    if best:
        notes = notes + [f"recovery: {', '.join(tries[best])} kept instead of {', '.join(methods)}, which left "
                         f"the held-out outputs further from the original's (mean relative error "
                         f"{held_out_error(measured[0]):.1%} against {held_out_error(after):.1%})"]
        methods = tries[best]
    if calib.describe()["kind"] == SYNTHETIC:   # which input range they were given, and why
        notes = [f"calibration: {calib.describe()['source']}"] + notes
    info = {"methods": list(methods), "calibration": calib.describe(), "evaluation": held.describe(),
            "notes": notes + [f"fidelity: {after.summary()}"]}
    worse = _worse(after, before)
    if worse and data.recover == "auto":   # our choice made it worse: do not hand that back
        info.update(methods=[], rejected={"methods": list(methods), "fidelity": after.to_dict()},
                    notes=notes + [f"recovery ({', '.join(methods)}) made the held-out outputs worse ({worse}): "
                                   "the model is returned without it", f"fidelity: {before.summary()}"])
        return slim, before, None, info
    if worse:
        info["notes"].append(f"recovery ({', '.join(methods)}) made the held-out outputs worse ({worse})")
    return slim_rec, after, before, info


def _recover_all(model, slim, couplings, removed, batches, size: int, tries: list, folds) -> list:
    """`recover` for each method tuple of `tries`. The end-to-end fit starts from the other
    methods' result, so `lsq,fit` and `lsq` share one refit."""
    done = {}

    def run(methods):
        if methods not in done:
            base = tuple(m for m in methods if m != "fit")
            if base == methods or not base:
                done[methods] = recover(model, slim, couplings, removed, batches, size, methods, folds)
            else:
                first, notes = run(base)
                fitted, more = recover(model, first, couplings, removed, batches, size, ("fit",), folds)
                done[methods] = (fitted, notes + more)
        return done[methods]
    return [run(m) for m in tries]


def held_out_error(f) -> float | None:
    """Held-out mean relative error, averaged over outputs (None when no output has one)."""
    values = [o.mean_rel_error for o in f.outputs if o.mean_rel_error is not None]
    return float(np.mean(values)) if values else None


def _worse(after, before) -> str | None:
    """'mean relative error a -> b' when recovery raised the held-out outputs' mean relative
    error (averaged over outputs), else None."""
    if before is None:
        return None
    e_before, e_after = held_out_error(before), held_out_error(after)
    if e_before is None or e_after is None or e_after <= e_before:
        return None
    return f"mean relative error {e_before:.1%} -> {e_after:.1%}"


def _recover_without_data(model, couplings, removed, slim, folds, data: DataOptions, methods, timings):
    """Data-free recovery (from BatchNormalization statistics); fidelity when eval_data is given."""
    if "lsq" in methods:
        raise OnnxPruneError("recovery 'lsq' needs calibration data (--calib)")
    notes = []
    if methods:
        with stage("recover", timings):
            slim_rec, notes = recover(model, slim, couplings, removed, None, 0, methods, folds)
    else:
        slim_rec = slim
    if data.eval_data is None:
        return slim_rec, None, None, ({"methods": list(methods), "notes": notes} if methods or notes else {})
    with stage("evaluate", timings):
        held = _load(data.eval_data, model, data)
        kept = {}
        before = compare_models(model, slim, held, labels=held.labels, original_outputs=kept) if methods else None
        after = compare_models(model, slim_rec, held, labels=held.labels, original_outputs=kept)
    return slim_rec, after, before, {"methods": list(methods), "evaluation": held.describe(),
                                     "notes": notes + [f"fidelity: {after.summary()}"]}


def _load(source, model, data: DataOptions):
    if isinstance(source, CalibrationSet):
        return source
    # --calib-preprocess describes images; arrays held out next to synthetic calibration are fed as they are
    images = isinstance(source, (str, os.PathLike)) and os.path.isdir(source)
    return load_calibration(source, model, preprocess=data.preprocess if images else None,
                            labels_key=data.labels_key)


def batches_of(model, calib: CalibrationSet):
    """() -> a fresh iterator of calibration batches, typed as the model's inputs."""
    dtypes = _input_dtypes(model)
    return lambda: calib.batches(CALIBRATION_BATCH, dtypes)


def calibration_sets(model, data: DataOptions, seed: int):
    """(calibration, held-out): eval_data when given (sharing no sample), else a fifth of the
    calibration samples held out. Calibration samples never measure fidelity."""
    calib = data.calibration if isinstance(data.calibration, CalibrationSet) else load_calibration(
        data.calibration, model, limit=data.limit, preprocess=data.preprocess, labels_key=data.labels_key)
    if data.eval_data is None:
        return calib.split(HELD_OUT_FRACTION, seed)
    held = _load(data.eval_data, model, data)
    if calib.overlap(held):
        raise OnnxPruneError(f"the evaluation data shares {calib.overlap(held)} sample(s) with the "
                             "calibration data; give disjoint sets")
    return calib, held


HELD_OUT_FRACTION = 0.2


def _input_dtypes(model) -> dict:
    out = {}
    for inp in model.graph.input:
        if inp.name not in model.inits:
            out[inp.name] = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    return out
