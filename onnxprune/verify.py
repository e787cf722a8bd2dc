"""Verify stage: the ONNX checker, an onnxruntime run, and the masking oracle.

The masking oracle builds, independently of the slicing code, the *original* model with
the weights that read removed channels set to zero (every feed-out layer's input slice).
Every path from a removed channel to an output goes through such a weight (the analysis
freezes anything else), so that model must compute what the pruned model computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .dtypes import float32_model, float_types, is_narrow, narrowest, rounding_floor, to_float32
from .errors import InternalError
from .masking import mask_feed_out_inputs
from .runtime import (model_session, ort_reason, quiet, random_inputs, run_named, symbolic_batch_inputs,
                      symbolic_size_inputs)

DEFAULT_TOLERANCE = 1e-4


def check(proto) -> None:
    """Full ONNX check of a pruned ModelProto (or its serialised bytes). The input passed the
    same check when it was loaded, so a failure here is our bug."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise InternalError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0]}") from None


def masked_original(model, couplings, removed_classes, folds=None):
    """The original model with the removed channels masked at every feed-out layer's input
    (equivalent to zeroing the weights that read them), and the folded constants of removed
    channels (computed on the original) added to the biases."""
    from .passes.fold_removed_constants import add_to_bias

    masked = mask_feed_out_inputs(model, couplings, couplings.kept_fn(removed_classes))
    nodes = masked.index().nodes
    for name, fold in (folds or {}).items():
        add_to_bias(masked, nodes[name], fold.delta, "oracle")
    return masked


# Outputs are compared relative to their largest magnitude, but never to less than this:
# a saturated sigmoid (1e-8) would otherwise turn one rounding step into a 100 % difference.
MAGNITUDE_FLOOR = 1e-3
# The rounding noise of the reference is measured in the same run (optimised vs unoptimised
# onnxruntime graph; for float16, also vs its float32 replica); a difference within this
# many times that noise passes.
NOISE_FACTOR = 4.0
# Where the model's batch is symbolic, the oracle also runs at this batch size (or at 1 when
# the analysis already used it): the analysis saw one batch size, the model claims any.
OTHER_BATCH = 2
# Where other input dimensions are symbolic (an image's height and width, a text line's
# width), the oracle also runs with them this many times the analysed size: a rewrite that
# baked an analysed size into the graph fails there (PP-OCRv4's token count, session 8).
OTHER_SIZE_FACTOR = 2
ANALYSED = (None, None)   # a run's (batch, (position, factor) grown): here the analysed shapes


def max_relative_difference(a_outputs, b_outputs, floor: float = MAGNITUDE_FLOOR) -> float:
    worst = 0.0
    for a, b in zip(a_outputs, b_outputs):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        # the same overflow in both (float16: inf, or nan from inf - inf) is no difference
        differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
        if not differ.any():
            continue
        if not (np.isfinite(a[differ]).all() and np.isfinite(b[differ]).all()):
            return float("inf")
        finite = np.abs(a[np.isfinite(a)])
        scale = max(finite.max() if finite.size else 0.0, floor)
        worst = max(worst, float(np.abs(a[differ] - b[differ]).max() / scale))
    return worst


@dataclass
class OracleResult:
    max_rel_diff: float   # pruned model vs masked original, worst over the batch sizes run
    noise: float          # masked original vs itself unoptimised (and vs float32, for float16)
    dtype: str = "float32"    # the least precise float type the model computes in
    batches: tuple = ()       # symbolic batch sizes compared, e.g. (1, 2); () if the batch is fixed
    notes: list = field(default_factory=list)   # batch sizes that could not be compared, and why

    def threshold(self, tolerance: float = DEFAULT_TOLERANCE) -> float:
        """What the difference must stay within: the tolerance, the type's rounding floor
        (dtypes.rounding_floor: float16 cannot match to 1e-4), or 4x the measured noise."""
        return max(tolerance, rounding_floor(self.dtype), NOISE_FACTOR * self.noise)

    def passed(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return self.max_rel_diff <= self.threshold(tolerance)


def masking_oracle(model, couplings, removed_classes, slim, folds=None, samples: int = 2,
                   seed: int = 0) -> OracleResult:
    """Compare the pruned model (a Model) with the masked original on random inputs in [-1, 1],
    at the analysed shapes and, where the model leaves them symbolic, at another batch size
    and with each other open dimension at OTHER_SIZE_FACTOR times its analysed size."""
    masked = masked_original(model, couplings, removed_classes, folds)
    dtype = narrowest(float_types(model))
    runs = {"reference": (masked, True), "unoptimized": (masked, False), "slim": (slim, True)}
    if is_narrow(dtype):
        runs["float32"] = (float32_model(masked), True)
    positions = sorted({p for open_dims in symbolic_size_inputs(model).values() for p in open_dims})
    variants = ([ANALYSED] + ([(_other_batch(model), None)] if symbolic_batch_inputs(model) else [])
                + [(None, (p, OTHER_SIZE_FACTOR)) for p in positions])
    outputs = _outputs(model, runs, variants, samples, seed)
    worst, noise, checked, notes, refused = 0.0, 0.0, [], [], []
    for variant in variants:
        ref, pruned = outputs["reference"][variant], outputs["slim"].get(variant)
        if isinstance(ref, Exception):
            # The masks broadcast over every axis but the channels', whose width the layer's
            # weight fixes: only the original itself can fail here. The model's batch or size
            # is symbolic but it runs at the analysed shapes only; nothing to compare.
            said = f"oracle: the original model does not run {_where(model, variant)} ({ort_reason(ref)})"
            if variant[1] is None:
                notes.append(f"{said}; compared at batch {_batch_of(model, None)} only")
            else:   # said below only when no other size ran either
                refused.append(said)
            continue
        checked.append(variant)
        if isinstance(pruned, Exception):
            notes.append(f"oracle: the pruned model does not run {_where(model, variant)}, the original does "
                         f"({ort_reason(pruned)})")
            worst = float("inf")
            continue
        worst = max(worst, _worst(ref, pruned))
        for key in ("unoptimized", "float32"):
            other = outputs.get(key, {}).get(variant)
            if other is not None and not isinstance(other, Exception):
                noise = max(noise, _worst(ref, other))
    batched = [v for v in variants if v[1] is None]
    batch_sizes = tuple(_batch_of(model, v[0]) for v in checked if v[1] is None) if len(batched) > 1 else ()
    grown = [v[1][0] for v in checked if v[1]]
    if grown:
        notes.append(f"oracle: also compared with input dimension(s) {grown} at {OTHER_SIZE_FACTOR}x the analysed "
                     "size (symbolic in the model)")
    if refused and not grown:
        notes += [f"{n}; compared at the analysed size only" for n in refused]
    return OracleResult(worst, noise, dtype.name, batch_sizes, notes)


def _where(model, variant) -> str:
    batch, grow = variant
    if grow:
        return f"with input dimension {grow[0]} at {grow[1]}x the analysed size"
    return f"at batch {_batch_of(model, batch)}"


def compare_models(reference, other, samples: int = 2, seed: int = 0) -> float:
    """max relative difference (as the oracle measures it) between two models with the same
    inputs and outputs, on random inputs in [-1, 1] at the analysed batch size."""
    rng = np.random.default_rng(seed)
    first = model_session(reference)
    feeds = [random_inputs(reference, rng, first) for _ in range(samples)]
    expected = _run(first, feeds)
    del first
    got = _run(model_session(other), feeds)
    for result in (expected, got):
        if isinstance(result, Exception):
            raise result
    return _worst(expected, got)


def _outputs(model, runs, variants, samples, seed):
    """{run: {(batch, size factor): outputs per sample, or the exception}}, one session at a
    time (each holds a view of a full set of weights). Only at the analysed shapes does a
    failure of the compared models raise; the float32 replica only measures noise."""
    rng = np.random.default_rng(seed)
    feeds, outputs = {}, {}
    for key, (which, optimize) in runs.items():
        sess = model_session(which, optimize=optimize)
        for variant in variants:
            if variant not in feeds:
                feeds[variant] = [random_inputs(model, rng, sess, *variant) for _ in range(samples)]
            if isinstance(outputs.get("reference", {}).get(variant), Exception):
                continue
            got = _run(sess, feeds[variant], to32=key == "float32")
            if isinstance(got, Exception) and variant == ANALYSED and key != "float32":
                raise got
            outputs.setdefault(key, {})[variant] = got
        del sess
    return outputs


def _run(sess, feeds, to32=False):
    """Outputs on every feed, or the exception onnxruntime raised (not logged: it is reported)."""
    if to32:
        feeds = [{k: to_float32(v) for k, v in f.items()} for f in feeds]
    try:
        return [sess.run(None, f, quiet()) for f in feeds]
    except Exception as e:  # noqa: BLE001 - onnxruntime's error types vary by version
        return e


def _worst(expected, got) -> float:
    return max(max_relative_difference(e, g) for e, g in zip(expected, got))


def _other_batch(model) -> int:
    return OTHER_BATCH if _batch_of(model, None) != OTHER_BATCH else 1


def _batch_of(model, batch) -> int:
    """The batch size a run used: `batch`, or the analysed one (None)."""
    if batch is not None:
        return batch
    return next(model.input_shapes[n][0] for n in sorted(symbolic_batch_inputs(model)))


def first_mismatch(model, couplings, removed_classes, slim, folds=None,
                   tolerance: float = DEFAULT_TOLERANCE):
    """Debugging aid: the first tensor (in graph order) whose kept channels differ between
    the masked original and the pruned model (a Model), as (tensor name, relative difference)."""
    kept = couplings.kept_fn(removed_classes)
    reference = masked_original(model, couplings, removed_classes, folds)
    survivors = {o for n in slim.graph.node for o in n.output}
    names = [o for n in model.graph.node for o in n.output if o in couplings.tensors and o in survivors]
    ref, pruned = model_session(reference, outputs=names), model_session(slim, outputs=names)
    feeds = random_inputs(model, np.random.default_rng(0), ref)
    a, b = run_named(ref, feeds), run_named(pruned, feeds)
    for t in names:
        cmap = couplings.tensors[t]
        expected = np.compress(kept(cmap.ids), a[t], axis=cmap.axis)
        diff = max_relative_difference([expected], [b[t]])
        if diff > tolerance:
            return t, diff
    return None
