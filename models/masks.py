"""Masked copies of ONNX models, as training-time pruners export them: pruned channels are
zeroed, not removed (tests/test_shrink.py, benchmarks/shrink_masked.py).

Styles, each applied per layer to a fraction `rate` of its channels:
  * "random": random whole convolution filters zeroed;
  * "magnitude": the filters of smallest L1 norm zeroed (filter pruning);
  * "slimming": the BatchNormalization scales γ of smallest |γ| zeroed (network slimming;
    the shift β stays, as it does after sparsity training);
  * "bn": random BatchNormalization scales zeroed;
  * "inputs": random input channels of every convolution zeroed (channels a layer ignores);
  * "gemm": random input columns of every Gemm zeroed (features nobody reads).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

STYLES = ("random", "magnitude", "slimming", "bn", "inputs", "gemm")
_TARGET = {"random": "Conv", "magnitude": "Conv", "slimming": "BatchNormalization", "bn": "BatchNormalization",
           "inputs": "Conv", "gemm": "Gemm"}


def masked(proto: onnx.ModelProto, rate: float, styles=("random",), seed: int = 0) -> onnx.ModelProto:
    """A copy of `proto` with the channels `styles` choose zeroed (`proto` is unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        for style in styles:
            if node.op_type == _TARGET[style] and len(node.input) > 1 and node.input[1] in inits:
                t = inits[node.input[1]]
                a = numpy_helper.to_array(t).copy()
                _zero(a, rate, style, rng)
                t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out


def _zero(a: np.ndarray, rate: float, style: str, rng) -> None:
    if style in ("gemm", "inputs"):   # axis 1: Conv input channels; Gemm features (transB=1, as torch exports)
        if a.ndim >= 2:
            a[:, rng.random(a.shape[1]) < rate] = 0
        return
    n = a.shape[0]
    if style in ("random", "bn"):
        a[rng.random(n) < rate] = 0
        return
    size = np.abs(a.reshape(n, -1)).sum(axis=1)
    a[np.argsort(size, kind="stable")[:int(round(rate * n))]] = 0
