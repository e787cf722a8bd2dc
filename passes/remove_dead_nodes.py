"""Remove what no graph output depends on: nodes, then initializers nobody reads.
Run after slicing, it drops branches that pruning disconnected and the originals of
initializers that were copied per user."""
from __future__ import annotations


def run(model) -> None:
    needed = set(model.output_names)
    live = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output if o):
            live.append(node)
            needed.update(t for t in node.input if t)
            needed.update(_subgraph_inputs(node))
    live.reverse()
    if len(live) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(live)
    graph_inputs = {i.name for i in model.graph.input}
    for name in [n for n in model.inits if n not in needed and n not in graph_inputs]:
        del model.inits[name]


def _subgraph_inputs(node):
    """Names read from the outer scope by If/Loop/Scan bodies."""
    import onnx
    names = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(n.input)
                for sub in n.attribute:
                    if sub.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                        names.update(_subgraph_inputs(n))
    return names
