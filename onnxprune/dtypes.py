"""Floating-point types. onnxprune runs the model in onnxruntime (to score, to fold
constants and to verify), so it takes the float types that onnxruntime's CPU provider
computes in: float32, float16 and float64 (whether every operator has a float64 kernel is
checked per model at load: Conv has none). bfloat16 is refused: that provider runs no
bfloat16 Conv, Add, Relu or BatchNormalization.

Narrow models are scored and checked against a float32 replica (`float32_parts`): the
bound graph of bgsc would overflow float16, and the oracle measures how far float16
rounding alone moves the reference (verify.py).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import OnnxPruneError
from .runtime import require_kernels

FLOATS = {TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.FLOAT: np.dtype(np.float32),
          TensorProto.DOUBLE: np.dtype(np.float64)}
REFUSED = {TensorProto.BFLOAT16: "bfloat16"}
# A float16 result is rounded to within 2^-11 of its magnitude at every layer: an exact
# rewrite that sums fewer (zero-free) terms can land an ulp or two away from the reference
# on its largest output. The oracle never asks a narrow type for less than this many eps
# (float16: 3.9e-3); deeper nets are covered by the measured noise (verify.py).
ROUNDING_EPS = 4.0


def _graph_types(graph: onnx.GraphProto):
    """(element type, where) of every typed thing a graph declares, bodies included."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        yield vi.type.tensor_type.elem_type, f"tensor '{vi.name}'"
    for t in graph.initializer:
        yield t.data_type, f"initializer '{t.name}'"
    for n in graph.node:
        for a in n.attribute:
            if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT:
                yield a.i, f"{n.op_type} '{n.name}'"
            elif a.type == onnx.AttributeProto.TENSOR:
                yield a.t.data_type, f"{n.op_type} '{n.name}'"
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _graph_types(g)


def refuse_unsupported(graph: onnx.GraphProto) -> None:
    """One clear line for a model in a float type onnxruntime's CPU provider cannot run."""
    for elem, where in _graph_types(graph):
        if elem in REFUSED:
            raise OnnxPruneError(
                f"{REFUSED[elem]} models are not supported ({where} is {REFUSED[elem]}): onnxruntime's "
                f"CPU provider has no {REFUSED[elem]} Conv, and onnxprune runs the model to score, fold "
                f"and verify it; convert it to float16 or float32 first")


def float_types(model) -> set[np.dtype]:
    """The float types a Model computes in: its float weights, inputs, outputs and Cast targets."""
    found = {a.dtype for a in model.inits.values() if a.dtype in FLOATS.values()}
    found |= {FLOATS[e] for e, _ in _graph_types(model.graph) if e in FLOATS}
    return found


def require_runnable(model) -> None:
    """float16, float64 and integer-weight models: fail at load, in one line, where
    onnxruntime's CPU provider cannot run them (float32 models are taken to run, as before)."""
    kinds = sorted(t.name for t in float_types(model) - {np.dtype(np.float32)})
    kinds += sorted({a.dtype.name + "-weight" for a in model.inits.values()
                     if a.dtype.kind in "iu" and a.dtype.itemsize <= 2})
    if kinds:
        require_kernels(model, "/".join(kinds))


def narrowest(types) -> np.dtype:
    """The least precise of `types` (float32 when there is none)."""
    return max(types, key=lambda t: np.finfo(t).eps, default=np.dtype(np.float32))


def rounding_floor(dtype) -> float:
    """The smallest relative difference the oracle can ask of a model computing in `dtype`:
    a few eps below float32, nothing at float32 and above (their tolerance already allows
    far more than their rounding)."""
    eps = float(np.finfo(dtype).eps)
    return ROUNDING_EPS * eps if eps > np.finfo(np.float32).eps else 0.0


def is_narrow(dtype) -> bool:
    return np.finfo(dtype).eps > np.finfo(np.float32).eps


def _retype_declared(graph: onnx.GraphProto, target: int, sources) -> None:
    """In place: the declared types, Cast targets and typed constants of `graph` that are
    one of `sources` become `target`. Subgraph bodies keep their types."""
    np_type = onnx.helper.tensor_dtype_to_np_dtype(target)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type in sources:
            vi.type.tensor_type.elem_type = target
    for n in graph.node:
        for a in n.attribute:
            if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i in sources:
                a.i = target
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type in sources:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np_type), a.t.name))


def float32_parts(graph: onnx.GraphProto, inits: dict) -> tuple[onnx.GraphProto, dict]:
    """The same computation in float32: float weights, declared types, Cast targets and
    typed constants become float32. Subgraph bodies keep their types."""
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    _retype_declared(g, TensorProto.FLOAT, FLOATS)
    return g, {k: to_float32(v) for k, v in inits.items()}


def retyped(proto: onnx.ModelProto, target: int, source: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A copy of `proto` computing in `target` where it computed in `source`: weights,
    declared types (inputs and outputs included), Cast targets and typed constants. This is
    all a float16 conversion needs for the plain CNNs that the GPU latency study times
    (every operator has a float16 kernel there); values past float16's range become inf."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(target)
    for t in m.graph.initializer:
        if t.data_type == source:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np_type), t.name))
    _retype_declared(m.graph, target, {source})
    return m


def float32_model(model):
    """`model` itself when it computes in float32 only, else a float32 copy (weights upcast)."""
    if float_types(model) <= {np.dtype(np.float32)}:
        return model
    copy = model.copy()
    copy.graph, copy.inits = float32_parts(model.graph, model.inits)
    copy.touch()
    return copy


def to_float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype in FLOATS.values() and array.dtype != np.float32 else array
