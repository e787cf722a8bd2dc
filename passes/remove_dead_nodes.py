"""Remove what no graph output depends on: nodes, then initializers nobody reads.
Run after slicing, it drops branches that pruning disconnected and the originals of
initializers that were copied per user."""
from __future__ import annotations

from onnxprune.model import subgraph_reads


def run(model) -> None:
    needed = set(model.output_names)
    live = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output if o):
            live.append(node)
            needed.update(t for t in node.input if t)
            needed.update(subgraph_reads(node))
    live.reverse()
    if len(live) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(live)
    graph_inputs = {i.name for i in model.graph.input}
    for name in [n for n in model.inits if n not in needed and n not in graph_inputs]:
        del model.inits[name]
