"""Load stage: a file or a ModelProto -> a `Model`. Reads it safely (onnxprune/files.py),
checks it, fixes the input shapes, then runs the load passes (onnxprune/pipeline.py:
inlining, naming, constants, constant folding, shapes)."""
from __future__ import annotations

import os

import onnx
from onnx import numpy_helper

from .dtypes import refuse_unsupported, require_runnable
from .errors import OnnxPruneError
from .files import _check_input, _external_array, _read
from .graph import copy_fields
from .model import Model

MIN_OPSET = 11


def parse_input_shapes(specs) -> dict[str, tuple]:
    """['x:1,3,224,224', ...] -> {'x': (1, 3, 224, 224)}."""
    shapes = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise OnnxPruneError(f"bad --input-shape '{spec}': expected NAME:D1,D2,... "
                                 "with positive integers") from None
    return shapes


def load(source, input_shapes: dict | None = None, check: bool = True) -> Model:
    """Load stage. Canonicalises constants (numerics unchanged) and fixes static shapes."""
    proto, base, data = _read(source)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise OnnxPruneError(f"unsupported opset {opset}: onnxprune needs ai.onnx opset >= "
                             f"{MIN_OPSET} (convert with onnx.version_converter first)")
    if check:
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        # external data resolves against the model's folder, so such a model is checked from its path
        _check_input(proto if base is None else os.fspath(source) if external else data)
    del data
    refuse_unsupported(proto.graph)
    graph = _structure_of(proto.graph)
    inits = {t.name: _external_array(t, base, str(source)) if t.data_location == onnx.TensorProto.EXTERNAL
             else numpy_helper.to_array(t) for t in proto.graph.initializer}
    model = Model(graph, inits, {}, list(proto.opset_import), proto.ir_version,
                  {**{k: getattr(proto, k) for k in ("producer_name", "producer_version", "domain",
                                                     "model_version", "doc_string")},
                   "metadata_props": [(p.key, p.value) for p in proto.metadata_props]})
    model.functions = list(proto.functions)
    model.external_data = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    model.input_shapes = _fix_input_shapes(model, dict(input_shapes or {}))
    from .pipeline import LOAD_PASSES, run_passes
    run_passes(model, LOAD_PASSES)
    require_runnable(model)
    return model


def _structure_of(graph: onnx.GraphProto) -> onnx.GraphProto:
    """A copy of the graph without its initializers (copying them would double the memory)."""
    out = onnx.GraphProto()
    copy_fields(graph, out, skip="initializer")
    return out


def _fix_input_shapes(model: Model, given: dict) -> dict[str, tuple]:
    """Concrete shape of every graph input: from the model, or from --input-shape."""
    fixed = {}
    names = {i.name for i in model.graph.input}
    unknown = set(given) - names
    if unknown:
        raise OnnxPruneError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                             f"the model's inputs are {sorted(names - set(model.inits))}")
    for inp in model.graph.input:
        if inp.name in model.inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if inp.name in given:
            shape = given[inp.name]
            if len(shape) != len(dims):
                raise OnnxPruneError(f"--input-shape {inp.name} has rank {len(shape)}, the model "
                                     f"input has rank {len(dims)}")
            for d, s in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s:
                    raise OnnxPruneError(f"--input-shape {inp.name}:{','.join(map(str, shape))} "
                                         f"contradicts the model's fixed dimension {d.dim_value}")
            fixed[inp.name] = tuple(shape)
            continue
        shape = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif axis == 0:
                shape.append(1)  # a symbolic batch dimension does not change the analysis
            else:
                raise OnnxPruneError(
                    f"input '{inp.name}' has dynamic dimensions [{', '.join(dim_names(dims))}]; fix "
                    f"them with --input-shape {inp.name}:{','.join(suggested_dims(dims))}")
        fixed[inp.name] = tuple(shape)
    return fixed


def dim_names(dims) -> list[str]:
    return [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in dims]


def suggested_dims(dims) -> list[str]:
    """Keep fixed dimensions; batch 1, channels 3, and 224 for other dynamic ones."""
    out = []
    for axis, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(str(d.dim_value))
        else:
            out.append("1" if axis == 0 else "3" if axis == 1 and len(dims) == 4 else "224")
    return out


