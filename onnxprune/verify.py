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
# The float32 rounding noise of the reference is measured in the same run (optimised vs
# unoptimised onnxruntime graph); a difference within this many times that noise passes.
NOISE_FACTOR = 4.0


def max_relative_difference(a_outputs, b_outputs, floor: float = MAGNITUDE_FLOOR) -> float:
    worst = 0.0
    for a, b in zip(a_outputs, b_outputs):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        if a.size == 0:
            continue
        scale = max(np.abs(a).max(), floor)
        worst = max(worst, float(np.abs(a - b).max() / scale))
    return worst


@dataclass
class OracleResult:
    max_rel_diff: float   # pruned model vs masked original
    noise: float          # masked original vs itself run without graph optimisations

    def passed(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return self.max_rel_diff <= max(tolerance, NOISE_FACTOR * self.noise)


def masking_oracle(model, couplings, removed_classes, slim, folds=None, samples: int = 2,
                   seed: int = 0) -> OracleResult:
    """Compare the pruned model (a Model) with the masked original on random inputs in [-1, 1]."""
    masked = masked_original(model, couplings, removed_classes, folds)
    rng = np.random.default_rng(seed)
    feeds = None
    outputs = {}
    # one session at a time: each holds (a view of) a full set of weights
    for key, which, optimize in (("reference", masked, True), ("unoptimized", masked, False),
                                 ("slim", slim, True)):
        sess = model_session(which, optimize=optimize)
        if feeds is None:
            feeds = [random_inputs(model, rng, sess) for _ in range(samples)]
        outputs[key] = [sess.run(None, f) for f in feeds]
        del sess
    worst = max(max_relative_difference(e, s) for e, s in zip(outputs["reference"], outputs["slim"]))
    noise = max(max_relative_difference(e, u) for e, u in zip(outputs["reference"], outputs["unoptimized"]))
    return OracleResult(worst, noise)


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
