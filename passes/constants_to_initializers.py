"""Constant nodes become initializers, so that every rule reads constants one way."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.graph import is_default_domain, replace_nodes


def run(model, step) -> None:
    outputs = set(model.output_names)
    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and is_default_domain(n) and n.output[0] not in outputs:
            model.inits[n.output[0]] = constant_value(n)
        else:
            keep.append(n)
    replace_nodes(model.graph, keep)


def constant_value(node) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    raise OnnxPruneError(f"Constant node {node.name} has an unsupported attribute {a.name}")
