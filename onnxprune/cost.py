"""Cost model: parameters and multiply-accumulates per node, from static shapes.
Used to report, and (with budget targets) to decide."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Cost:
    params: int                  # floating-point initializer elements
    macs: int                    # multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul
    macs_by_node: dict[str, int]


def node_macs(node, shapes, attr) -> int:
    op = node.op_type
    try:
        if op == "Conv":
            w = shapes[node.input[1]]
            return int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        if op == "ConvTranspose":
            w = shapes[node.input[1]]
            return int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
        if op == "Gemm":
            a = shapes[node.input[0]]
            k = a[0] if attr(node, "transA", 0) else a[1]
            return int(np.prod(shapes[node.output[0]])) * int(k)
        if op == "MatMul":
            return int(np.prod(shapes[node.output[0]])) * int(shapes[node.input[0]][-1])
    except (KeyError, IndexError):
        return 0
    return 0


def cost(model) -> Cost:
    from .couplings import Context
    params = sum(int(a.size) for a in model.inits.values() if a.dtype.kind == "f")
    by_node = {n.name: node_macs(n, model.shapes, Context.attr) for n in model.graph.node}
    return Cost(params, sum(by_node.values()), {k: v for k, v in by_node.items() if v})
