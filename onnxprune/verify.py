"""Verify stage: the ONNX checker, an onnxruntime run, and the masking oracle.

The masking oracle builds, independently of the slicing code, the *original* model with
the weights that read removed channels set to zero (every feed-out layer's input slice).
Every path from a removed channel to an output goes through such a weight (the analysis
freezes anything else), so that model must compute what the pruned model computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .dtypes import float32_model, float_types, is_narrow, narrowest, rounding_floor, to_float32
from .errors import OnnxPruneError
from .masking import mask_feed_out_inputs
from .runtime import model_session, random_inputs, run_named

DEFAULT_TOLERANCE = 1e-4


def check(proto) -> None:
    """Full ONNX check of a ModelProto (or its serialised bytes)."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise OnnxPruneError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0]}") from None


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
    max_rel_diff: float   # pruned model vs masked original
    noise: float          # masked original vs itself unoptimised (and vs float32, for float16)
    dtype: str = "float32"    # the least precise float type the model computes in

    def threshold(self, tolerance: float = DEFAULT_TOLERANCE) -> float:
        """What the difference must stay within: the tolerance, the type's rounding floor
        (dtypes.rounding_floor: float16 cannot match to 1e-4), or 4x the measured noise."""
        return max(tolerance, rounding_floor(self.dtype), NOISE_FACTOR * self.noise)

    def passed(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return self.max_rel_diff <= self.threshold(tolerance)


def masking_oracle(model, couplings, removed_classes, slim, folds=None, samples: int = 2,
                   seed: int = 0) -> OracleResult:
    """Compare the pruned model (a Model) with the masked original on random inputs in [-1, 1]."""
    masked = masked_original(model, couplings, removed_classes, folds)
    dtype = narrowest(float_types(model))
    runs = [("reference", masked, True), ("unoptimized", masked, False), ("slim", slim, True)]
    if is_narrow(dtype):
        runs.append(("float32", float32_model(masked), True))
    rng = np.random.default_rng(seed)
    feeds = None
    outputs = {}
    # one session at a time: each holds (a view of) a full set of weights
    for key, which, optimize in runs:
        sess = model_session(which, optimize=optimize)
        if feeds is None:
            feeds = [random_inputs(model, rng, sess) for _ in range(samples)]
        fed = [{k: to_float32(v) for k, v in f.items()} for f in feeds] if key == "float32" else feeds
        outputs[key] = [sess.run(None, f) for f in fed]
        del sess
    worst = _worst(outputs["reference"], outputs["slim"])
    noise = max(_worst(outputs["reference"], outputs[k]) for k in ("unoptimized", "float32") if k in outputs)
    return OracleResult(worst, noise, dtype.name)


def _worst(expected, got) -> float:
    return max(max_relative_difference(e, g) for e, g in zip(expected, got))


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
