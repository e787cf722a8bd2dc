"""Fidelity: how far a pruned model is from the original, measured on held-out inputs.

Both models run on the same batches; per output, running sums are kept and the outputs
dropped, so memory is bounded by one batch whatever the number of samples.

Per output, over samples (each sample's output flattened to a vector a for the original,
b for the pruned model):

* relative error ‖a − b‖ / ‖a‖ (the denominator floored at 1e-12), mean and max;
* cosine similarity ⟨a, b⟩ / (‖a‖‖b‖) (1 when both are zero), mean and min;
* the largest absolute difference, and the fraction of samples with identical outputs;
* top-1 agreement for classifier outputs, N×C with C > 1: the fraction of samples whose
  argmax agrees; for sequence outputs, N×T×C, the fraction of (sample, step) positions
  whose argmax over C agrees;
* with labels (one integer class per sample), the accuracy of both models on every N×C
  output with more classes than the largest label.

Samples where either model gives NaN or infinity are counted apart (`nonfinite`) and
left out of the error and cosine averages; they count as top-1 disagreements.
Axis 0 of every output must be the sample axis; an output without one is skipped with a
note. Models with a fixed batch size (often 1) are run in chunks of that size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from .calibration import CalibrationSet, load_calibration, model_inputs
from .errors import OnnxPruneError
from .model import Model
from .runtime import _ORT_TYPES, fixed_batch, model_session, run_chunked, session_from_parts

NORM_FLOOR = 1e-12
_PROTO_LIMIT = 1_800_000_000  # protobuf's 2 GB, with margin: larger protos go through runtime.py


# ---------------------------------------------------------------------------------------
# Per-output running sums
# ---------------------------------------------------------------------------------------
@dataclass
class OutputFidelity:
    """Running comparison of one output; the properties read the averages."""
    name: str
    sample_shape: tuple
    samples: int = 0
    nonfinite: int = 0
    identical: int = 0
    rel_error_sum: float = 0.0
    rel_error_max: float = 0.0
    cosine_sum: float = 0.0
    cosine_min: float = 1.0
    max_abs_error: float = 0.0
    top1_agree: int = 0
    top1_total: int = 0
    correct_original: int = 0
    correct_pruned: int = 0
    labelled: int = 0

    @property
    def is_classifier(self) -> bool:
        """N×C (or N×T×C, per step) with C > 1: top-1 agreement applies."""
        return len(self.sample_shape) in (1, 2) and self.sample_shape[-1] > 1

    @property
    def finite(self) -> int:
        return self.samples - self.nonfinite

    @property
    def mean_rel_error(self) -> float | None:
        return self.rel_error_sum / self.finite if self.finite else None

    @property
    def max_rel_error(self) -> float | None:
        return self.rel_error_max if self.finite else None

    @property
    def mean_cosine(self) -> float | None:
        return self.cosine_sum / self.finite if self.finite else None

    @property
    def min_cosine(self) -> float | None:
        return self.cosine_min if self.finite else None

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_agree / self.top1_total if self.top1_total else None

    @property
    def accuracy_original(self) -> float | None:
        return self.correct_original / self.labelled if self.labelled else None

    @property
    def accuracy_pruned(self) -> float | None:
        return self.correct_pruned / self.labelled if self.labelled else None

    def update(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one batch: a from the original, b from the pruned model, axis 0 = sample."""
        n = len(a)
        self.samples += n
        self.identical += int(sum(np.array_equal(x, y) for x, y in zip(a, b)))
        fa, fb = a.reshape(n, -1).astype(np.float64), b.reshape(n, -1).astype(np.float64)
        ok_a, ok_b = np.isfinite(fa).all(axis=1), np.isfinite(fb).all(axis=1)
        ok = ok_a & ok_b
        self.nonfinite += int(n - ok.sum())
        if ok.any():
            self._add_errors(fa[ok], fb[ok])
        if self.is_classifier:  # a NaN row has no meaningful argmax: it never agrees
            agree = (np.argmax(a, axis=-1) == np.argmax(b, axis=-1)).reshape(n, -1) & ok[:, None]
            self.top1_agree += int(agree.sum())
            self.top1_total += agree.size
        if labels is not None:
            self.labelled += n
            self.correct_original += int(((np.argmax(a, axis=-1) == labels) & ok_a).sum())
            self.correct_pruned += int(((np.argmax(b, axis=-1) == labels) & ok_b).sum())

    def _add_errors(self, fa: np.ndarray, fb: np.ndarray) -> None:
        diff = fa - fb
        na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
        rel = np.linalg.norm(diff, axis=1) / np.maximum(na, NORM_FLOOR)
        dot = np.einsum("ij,ij->i", fa, fb)
        both_zero = (na == 0) & (nb == 0)
        cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, np.finfo(np.float64).tiny))
        cos = np.clip(cos, -1.0, 1.0)  # rounding can step past 1 for equal vectors
        self.rel_error_sum += float(rel.sum())
        self.rel_error_max = max(self.rel_error_max, float(rel.max()))
        self.cosine_sum += float(cos.sum())
        self.cosine_min = min(self.cosine_min, float(cos.min()))
        self.max_abs_error = max(self.max_abs_error, float(np.abs(diff).max(initial=0.0)))

    def to_dict(self) -> dict:
        d = {"output": self.name, "sample_shape": list(self.sample_shape), "samples": self.samples,
             "nonfinite_samples": self.nonfinite, "identical_fraction": self.identical / max(self.samples, 1),
             "mean_rel_error": self.mean_rel_error, "max_rel_error": self.max_rel_error,
             "mean_cosine": self.mean_cosine, "min_cosine": self.min_cosine,
             "max_abs_error": self.max_abs_error if self.finite else None}
        if self.is_classifier:
            d["top1_agreement"] = self.top1_agreement
            d["top1_positions"] = self.top1_total
        if self.labelled:
            d.update(accuracy_original=self.accuracy_original, accuracy_pruned=self.accuracy_pruned,
                     labelled_samples=self.labelled)
        return d


# ---------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------
@dataclass
class Fidelity:
    samples: int
    outputs: list[OutputFidelity]
    batch_size: int
    notes: list[str] = field(default_factory=list)

    def output(self, name: str) -> OutputFidelity:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    @property
    def max_rel_error(self) -> float | None:
        """The worst over outputs (None when no sample was finite)."""
        values = [o.max_rel_error for o in self.outputs if o.max_rel_error is not None]
        return max(values) if values else None

    @property
    def min_cosine(self) -> float | None:
        values = [o.min_cosine for o in self.outputs if o.min_cosine is not None]
        return min(values) if values else None

    @property
    def top1_agreement(self) -> float | None:
        """The lowest over classifier outputs, or None without one."""
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def to_dict(self) -> dict:
        return {"samples": self.samples, "batch_size": self.batch_size,
                "outputs": [o.to_dict() for o in self.outputs], "notes": list(self.notes)}

    def summary(self) -> str:
        """One paragraph for people."""
        parts = [f"Pruned against original on {self.samples} held-out sample(s)."]
        for o in self.outputs:
            parts.append(_output_sentence(o, len(self.outputs) > 1))
        parts += self.notes
        return " ".join(parts)

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, original, pruned) rows, the report table's columns."""
        rows = [("Fidelity", "Original", "Pruned"), ("Held-out samples", "", str(self.samples))]
        for o in self.outputs:
            p = f"{o.name}: "
            if o.nonfinite:
                rows.append((p + "NaN/inf samples", "", f"{o.nonfinite} of {o.samples}"))
            if o.finite:
                rows.append((p + "rel. error", "", f"mean {_rel(o.mean_rel_error)}, max {_rel(o.max_rel_error)}"))
                rows.append((p + "cosine", "", f"mean {o.mean_cosine:.4f}, min {o.min_cosine:.4f}"))
            if o.top1_agreement is not None:
                rows.append((p + "top-1 agreement", "", f"{o.top1_agreement:.1%} ({o.top1_agree}/{o.top1_total})"))
            if o.labelled:
                rows.append((p + "accuracy", f"{o.accuracy_original:.1%}", f"{o.accuracy_pruned:.1%}"))
        return rows

    def table(self) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out = [line]
        for k, r in enumerate(rows):
            out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
            if k == 0:
                out.append(line)
        out.append(line)
        return "\n".join(out)


def _rel(x: float) -> str:
    return f"{x:.2%}" if x >= 1e-3 else f"{x:.1e}"


def _output_sentence(o: OutputFidelity, named: bool) -> str:
    head = f"Output '{o.name}'" if named else "The output"
    facts = []
    if o.samples and o.identical == o.samples:
        facts.append("is identical on every sample")
    else:
        if o.nonfinite:
            facts.append(f"gives NaN or infinity on {o.nonfinite} of {o.samples} samples")
        if o.finite:
            facts.append(f"differs by {_rel(o.mean_rel_error)} on average (relative to the original's "
                         f"magnitude; at most {_rel(o.max_rel_error)}), with cosine similarity "
                         f"{o.mean_cosine:.4f} (lowest {o.min_cosine:.4f})")
        if o.top1_agreement is not None:
            where = "positions (sample, step)" if len(o.sample_shape) == 2 else "samples"
            facts.append(f"keeps the original's top-1 class on {o.top1_agreement:.1%} of {where} "
                         f"({o.top1_agree}/{o.top1_total})")
    if o.labelled:
        facts.append(f"scores {o.accuracy_pruned:.1%} accuracy on the labels against "
                     f"{o.accuracy_original:.1%} for the original")
    return f"{head} " + "; ".join(facts) + "."


# ---------------------------------------------------------------------------------------
# Running both models
# ---------------------------------------------------------------------------------------
class _Runner:
    """A session with its input dtypes and fixed batch size (None when dynamic)."""

    def __init__(self, model, what: str, threads: int):
        self.what = what
        self.sess = _session(model, what, threads)
        inputs = self.sess.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.dtypes = {i.name: _ORT_TYPES.get(i.type) for i in inputs}
        self.fixed_batch = fixed_batch(self.sess)
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: dict) -> list[np.ndarray]:
        """Outputs for a batch of any size (in chunks of the fixed batch size if there is one)."""
        feeds = {n: a.astype(self.dtypes[n], copy=False) if self.dtypes.get(n) else a for n, a in feeds.items()}
        return run_chunked(self.sess, feeds, self.fixed_batch, self._run)

    def _run(self, feeds):
        try:
            return self.sess.run(None, feeds)
        except Exception as e:
            raise OnnxPruneError(f"onnxruntime cannot run the {self.what} model on the data: "
                                 f"{str(e).splitlines()[0]}") from None


def _session(model, what: str, threads: int):
    import onnxruntime as ort
    try:
        if isinstance(model, Model):
            return model_session(model, threads=threads)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if isinstance(model, onnx.ModelProto):
            if model.functions or model.ByteSize() < _PROTO_LIMIT:
                return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
            inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
            return session_from_parts(model.graph, inits, model.opset_import, model.ir_version, threads=threads)
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise OnnxPruneError(f"{what} model not found: {path}")
        return ort.InferenceSession(path, opts, providers=providers)
    except OnnxPruneError:
        raise
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot load the {what} model: {str(e).splitlines()[0]}") from None


def _pair_outputs(orig: _Runner, pruned: _Runner, notes: list) -> list[tuple[int, int]]:
    """(original index, pruned index) per output: by name, or by position when the names
    differ but the counts match (a renamed export)."""
    if set(orig.output_names) == set(pruned.output_names):
        return [(i, pruned.output_names.index(n)) for i, n in enumerate(orig.output_names)]
    if len(orig.output_names) == len(pruned.output_names):
        notes.append(f"Outputs paired by position: {orig.output_names} with {pruned.output_names}.")
        return list(enumerate(range(len(orig.output_names))))
    raise OnnxPruneError(f"the models have different outputs: {orig.output_names} and {pruned.output_names}")


def _check_inputs(data: CalibrationSet, runner: _Runner) -> None:
    missing = [n for n in runner.input_names if n not in data.input_names]
    unknown = [n for n in data.input_names if n not in runner.input_names]
    if missing or unknown:
        raise OnnxPruneError(f"the data feeds {data.input_names}; the {runner.what} model takes "
                             f"{runner.input_names}")


def _labels(data: CalibrationSet, labels) -> np.ndarray | None:
    if labels is None:
        return data.labels
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise OnnxPruneError(f"labels must be {len(data)} non-negative integer classes, one per sample, "
                             f"got {labels.dtype} of shape {labels.shape}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def compare_models(original, pruned, data: CalibrationSet, *, batch_size: int = 32, labels=None,
                   threads: int = 0, original_outputs: dict | None = None) -> Fidelity:
    """Fidelity of `pruned` to `original` (paths, ModelProtos or onnxprune Models) on `data`,
    which must not be the calibration samples. `labels` (one int class per sample)
    default to the data's own. `original_outputs`, a dict passed to several calls with the
    same original, data and batch size, keeps the original's outputs so they are computed
    once (up to ORIGINAL_OUTPUT_BYTES of them)."""
    if len(data) == 0:
        raise OnnxPruneError("no held-out samples to compare the models on")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise OnnxPruneError(f"batch size must be a positive integer, got {batch_size!r}")
    orig, slim = _Runner(original, "original", threads), _Runner(pruned, "pruned", threads)
    for runner in (orig, slim):
        _check_inputs(data, runner)
    notes: list[str] = []
    pairs = _pair_outputs(orig, slim, notes)
    labels = _labels(data, labels)
    accs: dict[int, OutputFidelity] = {}
    skipped: set[int] = set()
    start = 0
    for b, feeds in enumerate(data.batches(batch_size)):
        n = len(next(iter(feeds.values())))
        a_out, b_out = _original_run(orig, feeds, b, original_outputs), slim.run(feeds)
        batch_labels = None if labels is None else labels[start:start + n]
        start += n
        for k, (i, j) in enumerate(pairs):
            if k in skipped:
                continue
            name, a, b = orig.output_names[i], a_out[i], b_out[j]
            why = _not_comparable(a, b, n)
            if why:
                notes.append(f"Output '{name}' {why}: not compared.")
                skipped.add(k)
                accs.pop(k, None)
                continue
            acc = accs.setdefault(k, OutputFidelity(name, tuple(a.shape[1:])))
            acc.update(a, b, batch_labels if _labels_fit(labels, a) else None)
    outputs = [accs[k] for k in sorted(accs)]
    if labels is not None and not any(o.labelled for o in outputs):
        notes.append("The labels fit no N×C output (one with more classes than the largest label): "
                     "no accuracy.")
    return Fidelity(len(data), outputs, batch_size, notes)


ORIGINAL_OUTPUT_BYTES = 256 << 20


def _original_run(orig: _Runner, feeds, b: int, kept: dict | None) -> list:
    if kept is not None and b in kept:
        return kept[b]
    out = orig.run(feeds)
    if kept is not None and sum(a.nbytes for v in [*kept.values(), out] for a in v if a is not None) \
            <= ORIGINAL_OUTPUT_BYTES:
        kept[b] = out
    return out


def _not_comparable(a, b, n: int) -> str | None:
    if a is None or b is None or a.ndim == 0 or a.shape[0] != n:
        shape = "?" if a is None else list(a.shape)
        return f"has no sample axis (shape {shape} for {n} samples)"
    if a.shape != b.shape:
        return f"has shape {list(a.shape)} in the original and {list(b.shape)} in the pruned model"
    return None


def _labels_fit(labels, a: np.ndarray) -> bool:
    """Labels apply to an N×C output with more classes than the largest label."""
    return labels is not None and a.ndim == 2 and a.shape[1] > 1 and a.shape[1] > int(labels.max())


def evaluate(original, pruned, data, *, batch_size: int = 32, limit: int | None = None, preprocess=None,
             labels_key: str | None = None, threads: int = 0) -> Fidelity:
    """`compare_models` with the data given as a path (or any `load_calibration` source),
    read for the original model's inputs. A `labels_key` that is given must be in the
    data; without one, labels are read from 'labels' when present."""
    if not isinstance(data, CalibrationSet):
        data = load_calibration(data, model_inputs(original), limit=limit, preprocess=preprocess,
                                labels_key=labels_key or "labels")
    if labels_key is not None and data.labels is None:
        raise OnnxPruneError(f"the evaluation data has no labels under '{labels_key}'")
    return compare_models(original, pruned, data, batch_size=batch_size, threads=threads)
