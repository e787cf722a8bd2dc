"""Graph utilities every other module may use; this module imports nothing of onnxprune.

Attribute access, opset lookup, a producer/consumer index built once per unchanged graph,
and the small editing helpers (set an attribute, give a node its own shape constant,
replace the node list) that rules, passes and verification share.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node` (decoded by onnx), or `default`."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def opset_version(opset_imports, default: int = 13) -> int:
    """The ai.onnx opset a model imports."""
    return next((o.version for o in opset_imports if o.domain in DEFAULT_DOMAINS), default)


def is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names that the bodies of an If/Loop/Scan node read, outer-scope tensors included."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names |= subgraph_reads(n)
    return names


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def set_dims(vi: onnx.ValueInfoProto, shape, exact_rank: bool = False) -> None:
    """Give a value info the static `shape` (with `exact_rank`, also its rank)."""
    if exact_rank:
        vi.type.tensor_type.shape.ClearField("dim")
        for _ in shape:
            vi.type.tensor_type.shape.dim.add()
    for d, s in zip(vi.type.tensor_type.shape.dim, shape):
        d.ClearField("dim_param")
        d.dim_value = s


def copy_fields(source, target, skip: str) -> None:
    """Copy every set field of a protobuf message but `skip` (the initializers: copying them
    would double the memory of a large model)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        slot = getattr(target, field.name)
        if hasattr(slot, "extend"):
            slot.extend(value)
        elif hasattr(slot, "CopyFrom"):
            slot.CopyFrom(value)
        else:
            setattr(target, field.name, value)


def replace_nodes(graph: onnx.GraphProto, nodes) -> None:
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def set_input_constant(node: onnx.NodeProto, model, index: int, value: np.ndarray) -> None:
    """Give `node` its own copy of a constant input (a shape, sizes, bounds): other nodes
    may share the original."""
    name = f"{node.name}__{index}_pruned"
    model.inits[name] = value
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


@dataclass
class GraphIndex:
    """Who writes and who reads each tensor, and each node by name. Built once for a graph
    that is not being edited (`Model.index()` caches it; the pass pipeline drops the cache
    after every pass)."""
    nodes: dict[str, onnx.NodeProto]
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> "GraphIndex":
        nodes, producers, consumers = {}, {}, {}
        for n in graph.node:
            nodes[n.name] = n
            for o in n.output:
                if o:
                    producers[o] = n
            for i, t in enumerate(n.input):
                if t:
                    consumers.setdefault(t, []).append((n, i))
        return cls(nodes, producers, consumers)

    def users(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        return self.consumers.get(tensor, [])

    def sole_user(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The node of type `op_type` that alone reads `tensor` (as its first input), if any:
        e.g. the BatchNormalization right after a Conv."""
        users = self.users(tensor)
        if len(users) == 1 and users[0][0].op_type == op_type and users[0][1] == 0:
            return users[0][0]
        return None
