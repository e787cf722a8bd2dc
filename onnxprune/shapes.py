"""Static shapes of every tensor: ONNX shape inference first, one onnxruntime run for the
tensors it leaves unknown."""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import OnnxPruneError
from .graph import set_dims
from .runtime import model_session, random_inputs
from .model import Model


def infer_static_shapes(model: Model) -> dict[str, tuple]:
    """Static shape of every tensor: onnx shape inference first, onnxruntime for the rest."""
    shapes = {name: tuple(a.shape) for name, a in model.inits.items()}
    shapes.update(model.input_shapes)
    g = copy.deepcopy(model.graph)
    del g.value_info[:]
    for inp in g.input:
        if inp.name in model.input_shapes:
            set_dims(inp, model.input_shapes[inp.name])
    # Large weights enter as typed inputs (no data): inference needs their shapes only,
    # and this keeps the proto far below protobuf's 2 GB limit.
    declared = {i.name for i in g.input}
    small = []
    for name, a in model.inits.items():
        if a.size <= 64 and a.dtype.kind in "iu":
            small.append(numpy_helper.from_array(a, name))
        elif name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
    g.initializer.extend(small)
    m = onnx.helper.make_model(g, opset_imports=model.opset_imports)
    m.ir_version = model.ir_version
    try:
        inferred = shape_inference.infer_shapes(m, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                shapes.setdefault(vi.name, tuple(d.dim_value for d in dims))
    except Exception:
        pass
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_shapes_from_onnxruntime(model, missing))
    return shapes


def _shapes_from_onnxruntime(model: Model, names) -> dict[str, tuple]:
    """Run the model once on random inputs with the missing tensors as extra outputs."""
    try:
        sess = model_session(model, optimize=False, outputs=names)
        values = sess.run(list(names), random_inputs(model, np.random.default_rng(0), sess))
    except Exception as e:
        raise OnnxPruneError(f"cannot determine tensor shapes: shape inference is incomplete and "
                             f"onnxruntime cannot run the model ({str(e).splitlines()[0][:200]})") from None
    # sequence-typed outputs (SplitToSequence) have no tensor shape: their users get frozen
    return {n: tuple(v.shape) for n, v in zip(names, values) if hasattr(v, "shape")}
