"""Sweep: prune one model at several targets and tabulate what each one costs and keeps
(`onnxprune sweep`), so that a user can choose an operating point by looking.

Per target: the achieved MAC and parameter counts and fractions; the fidelity to the
original on held-out data (relative error, cosine, top-1 agreement, and accuracy with
labels), after recovery and, when recovery ran, before it; the wall time of the prune;
and with `bench`, the latency of every pruned model, timed in one alternating series with
the original (onnxprune/bench.py) so that all of them meet the same machine load.

Read once: the model (as a proto; a model with external data stays a path, so that each
prune memory-maps its weights instead of this function holding them) and the calibration
and evaluation data (CalibrationSets, which prune uses as they are, splitting off the same
held-out fifth at every target when no evaluation data is given). Not reused: prune loads
and analyses the model again at every target, because the public API has no entry point
that takes an analysed model; on the digits models that is ~0.03 s of a ~1 s prune.
"""
from __future__ import annotations

import json
import logging
import numbers
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from .api import prune_model
from .calibration import CalibrationSet, load_calibration, model_inputs
from .errors import OnnxPruneError
from .files import external_data_files, read_proto

log = logging.getLogger("onnxprune")
SCHEMA_VERSION = 1
METRICS = ("macs", "params")
_SET_BY_SWEEP = ("ratio", "target_macs", "target_params", "plan", "check_output")


def parse_targets(spec, flag: str = "--targets") -> list[float]:
    """'0.9,0.8,0.7' (or a sequence of numbers) -> fractions in (0, 1], largest first;
    errors name `flag`."""
    items = spec.split(",") if isinstance(spec, str) else spec
    try:
        items = list(items)
    except TypeError:
        raise OnnxPruneError(f"{flag} must be a comma list of fractions, got {spec!r}") from None
    values = []
    for item in items:
        try:
            if isinstance(item, bool) or not isinstance(item, (str, numbers.Real)):
                raise ValueError
            value = float(item)
        except ValueError:
            raise OnnxPruneError(f"{flag} must be a comma list of numbers, got {spec!r}") from None
        if not 0 < value <= 1:  # NaN fails this too
            raise OnnxPruneError(f"{flag} must be fractions in (0, 1], got {str(item).strip()}")
        values.append(value)
    if not values:
        raise OnnxPruneError(f"{flag} gives no target")
    if len(set(values)) < len(values):
        raise OnnxPruneError(f"{flag} repeats a target: {spec!r}")
    return sorted(values, reverse=True)


@dataclass
class SweepRow:
    target: float
    macs: int
    params: int
    macs_fraction: float
    params_fraction: float
    prune_s: float
    report: object               # the prune's Report
    latency: object = None       # bench.Timing, with `bench`
    model: object = None         # the pruned Model, with `keep_models`

    @property
    def fidelity(self) -> dict | None:
        return _summary(self.report.fidelity)

    @property
    def fidelity_unrecovered(self) -> dict | None:
        return _summary(self.report.fidelity_unrecovered)

    def to_dict(self) -> dict:
        r = self.report
        d = {"target": self.target, "macs": self.macs, "params": self.params,
             "macs_fraction": self.macs_fraction, "params_fraction": self.params_fraction,
             "prune_s": round(self.prune_s, 4), "fidelity": self.fidelity,
             "fidelity_without_recovery": self.fidelity_unrecovered,
             "fidelity_per_output": None if r.fidelity is None else r.fidelity.to_dict()["outputs"],
             "fidelity_per_output_without_recovery": None if r.fidelity_unrecovered is None
             else r.fidelity_unrecovered.to_dict()["outputs"],
             "notes": [n for n in r.notes if not n.startswith("fidelity:")]}
        if self.latency is not None:
            t = self.latency
            d["latency"] = {"median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms, "speedup": t.speedup}
        return d


def _summary(fidelity) -> dict | None:
    """The worst output's numbers (one number per column of the table; the JSON has them all)."""
    if fidelity is None:
        return None
    outs = fidelity.outputs
    rel = [o.mean_rel_error for o in outs if o.mean_rel_error is not None]
    cos = [o.mean_cosine for o in outs if o.mean_cosine is not None]
    acc = [o.accuracy_pruned for o in outs if o.labelled]
    return {"samples": fidelity.samples, "mean_rel_error": max(rel) if rel else None,
            "mean_cosine": min(cos) if cos else None, "top1_agreement": fidelity.top1_agreement,
            "accuracy": min(acc) if acc else None}


@dataclass
class SweepResult:
    model: str                   # the input's file name, for titles
    metric: str                  # what the targets are fractions of: "macs" or "params"
    before: dict                 # the original's cost (report.before)
    rows: list[SweepRow]
    options: dict                # prune's options, less the target
    recovery: list[str]          # recovery methods run
    calibration: dict | None = None
    evaluation: dict | None = None
    bench: dict | None = None    # provider, threads, batch, warmup, runs
    original_latency: object = None
    notes: list[str] = field(default_factory=list)   # notes every target's prune gave

    @property
    def accuracy_original(self) -> float | None:
        for row in self.rows:
            acc = [o.accuracy_original for o in (row.report.fidelity.outputs if row.report.fidelity else [])
                   if o.labelled]
            if acc:
                return min(acc)
        return None

    def to_dict(self) -> dict:
        t = self.original_latency
        original = {"macs": self.before["macs"], "params": self.before["params"], "bytes": self.before["bytes"],
                    "accuracy": self.accuracy_original,
                    "latency": None if t is None else {"median_ms": t.median_ms, "p10_ms": t.p10_ms,
                                                       "p90_ms": t.p90_ms}}
        return {"schema_version": SCHEMA_VERSION, "model": self.model, "metric": self.metric,
                "options": self.options, "recovery": self.recovery, "calibration": self.calibration,
                "evaluation": self.evaluation, "bench": self.bench, "original": original,
                "notes": self.notes, "rows": [r.to_dict() for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        from .sweep_view import table
        return table(self)

    def plot_png(self) -> bytes:
        """The plot as PNG bytes (needs matplotlib)."""
        from .sweep_view import plot_png
        return plot_png(self)


def sweep(source, targets, *, metric: str = "macs", calibration=None, calibration_limit: int | None = None,
          calibration_preprocess: str | None = None, eval_data=None, labels_key: str = "labels",
          recover: str = "auto", bench: bool = False, provider: str = "cpu", threads: int = 1,
          batch: int = 1, warmup: int = 5, runs: int = 30, keep_models: bool = False,
          **options) -> SweepResult:
    """Prune `source` (a path or a ModelProto, never modified) at every target: a fraction
    of the MACs (`metric="macs"`) or of the parameters (`"params"`) to keep. The data
    arguments are `onnxprune.prune`'s; `options` are its other options (criterion, seed,
    scope, round_to, ...). With `bench`, the original and every pruned model are timed
    (bench.compare's provider, threads, batch, warmup, runs). `keep_models` keeps each
    pruned Model on its row (to save them). Bad arguments raise OnnxPruneError."""
    targets = parse_targets(targets)
    if metric not in METRICS:
        raise OnnxPruneError(f"the target kind must be one of {list(METRICS)}, got {metric!r}")
    clash = sorted(set(options) & set(_SET_BY_SWEEP))
    if clash:
        raise OnnxPruneError(f"sweep sets {clash} itself; give the targets instead")
    if bench:  # found out now, not after the pruning
        from .bench import check_options, require_provider
        check_options(provider, threads, batch, warmup, runs)
        require_provider(provider)
    model = _read_once(source)
    spec = _input_spec(model, options.get("input_shapes"))
    data = {}
    for key, value, limit in (("calibration", calibration, calibration_limit), ("eval_data", eval_data, None)):
        if value is not None and not isinstance(value, CalibrationSet):
            value = load_calibration(value, spec, limit=limit, preprocess=calibration_preprocess,
                                     labels_key=labels_key)
        data[key] = value
    rows = []
    for target in targets:
        start = time.perf_counter()
        slim, report = prune_model(model, **{f"target_{metric}": target}, **options,
                                   calibration_limit=calibration_limit,
                                   calibration_preprocess=calibration_preprocess, labels_key=labels_key,
                                   recover=recover, **data)
        elapsed = time.perf_counter() - start
        b, a = report.before, report.after
        rows.append(SweepRow(target, a["macs"], a["params"], a["macs"] / max(b["macs"], 1),
                             a["params"] / max(b["params"], 1), elapsed, report,
                             model=slim if keep_models or bench else None))
        log.info("target %g: kept %.3f of the %s, pruned in %.1f s", target,
                 getattr(rows[-1], f"{metric}_fraction"), "MACs" if metric == "macs" else "parameters", elapsed)
    first = rows[0].report
    used = {k: v for k, v in first.options.items() if k not in ("ratio", "target_macs", "target_params")}
    result = SweepResult(_name(source), metric, first.before, rows, used, first.recovery.get("methods", []),
                         first.recovery.get("calibration"), first.recovery.get("evaluation"),
                         notes=_common_notes(rows))
    if bench:
        _bench(result, model, provider, threads, batch, warmup, runs, options.get("input_shapes"))
        if not keep_models:
            for row in rows:
                row.model = None
    return result


def _bench(result: SweepResult, model, provider, threads, batch, warmup, runs, input_shapes) -> None:
    """One alternating series: the original and every pruned model, under the same load."""
    from .bench import compare
    names = ["original"] + [f"{result.metric} {row.target:g}" for row in result.rows]
    timings = compare([model] + [row.model.to_proto() for row in result.rows], provider, threads, batch,
                      warmup, runs, input_shapes=input_shapes or {}, names=names)
    result.original_latency = timings[0]
    for row, timing in zip(result.rows, timings[1:]):
        row.latency = timing
    result.bench = {"provider": provider, "threads": threads, "batch": batch, "warmup": warmup, "runs": runs}


def _read_once(source):
    if isinstance(source, onnx.ModelProto):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise OnnxPruneError(f"source must be a path or an onnx.ModelProto, got {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isfile(path) and external_data_files(path):
        return path
    return read_proto(path)


def _input_spec(model, input_shapes) -> dict:
    """{input: shape} that the data is checked against, with --input-shape's fixed sizes
    (a malformed value is left for prune to name)."""
    spec = model_inputs(model)
    if isinstance(input_shapes, Mapping):
        for name, shape in input_shapes.items():
            try:
                if name in spec:
                    spec[name] = tuple(int(d) for d in shape)
            except (TypeError, ValueError):
                pass
    return spec


def _name(source) -> str:
    return os.path.basename(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "model"


def _common_notes(rows: list[SweepRow]) -> list[str]:
    """Notes that every prune gave (model notes, groups kept whole by rounding): said once."""
    per_row = [set(r.report.notes) for r in rows]
    return [n for n in rows[0].report.notes if all(n in s for s in per_row[1:]) and not n.startswith("fidelity:")]
