"""Verify stage: the ONNX checker, an onnxruntime run, and the masking oracle.

The masking oracle builds, independently of the slicing code, the *original* model with
the weights that read removed channels set to zero (every feed-out layer's input slice).
Every path from a removed channel to an output goes through such a weight (the analysis
freezes anything else), so that model must compute what the pruned model computes.
"""
from __future__ import annotations

import numpy as np
import onnx

from .couplings import FEED_OUT
from .errors import OnnxPruneError
from .model import random_inputs

DEFAULT_TOLERANCE = 1e-4


def check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise OnnxPruneError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0]}") from None


def session(proto: onnx.ModelProto, providers=("CPUExecutionProvider",), threads: int = 0):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=list(providers))


def masked_original(model, couplings, removed_classes) -> onnx.ModelProto:
    """The original model with the feed-out weights of removed channels zeroed."""
    kept = couplings.kept_fn(removed_classes)
    nodes = model.nodes_by_name()
    masked = model.copy()
    masked_nodes = masked.nodes_by_name()
    for s in couplings.slices:
        if s.role != FEED_OUT:
            continue
        mask = kept(s.ids)
        if mask.all():
            continue
        source = nodes[s.node].input[s.input]
        private = f"{source}__oracle_{s.node}"   # per user: a shared weight may be read elsewhere
        w = np.array(masked.inits.get(private, masked.inits[source]), copy=True)
        shape = [1] * w.ndim
        shape[s.axis] = len(mask)
        w *= mask.reshape(shape).astype(w.dtype)
        masked.inits[private] = w
        masked_nodes[s.node].input[s.input] = private
    return masked.to_proto()


def max_relative_difference(a_outputs, b_outputs) -> float:
    worst = 0.0
    for a, b in zip(a_outputs, b_outputs):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        if a.size == 0:
            continue
        scale = max(np.abs(a).max(), 1e-12)
        worst = max(worst, float(np.abs(a - b).max() / scale))
    return worst


def masking_oracle(model, couplings, removed_classes, slim_proto, samples: int = 2, seed: int = 0) -> float:
    """Maximum relative difference between the pruned model and the masked original."""
    reference = session(masked_original(model, couplings, removed_classes))
    slim = session(slim_proto)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(samples):
        feeds = random_inputs(model, rng, reference)
        worst = max(worst, max_relative_difference(reference.run(None, feeds), slim.run(None, feeds)))
    return worst
