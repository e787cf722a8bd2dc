"""Remove what no graph output depends on: nodes, then initializers nobody reads.
Run after slicing, it drops branches that pruning disconnected and the originals of
initializers that were copied per user. Nodes that were already dead in the input are
kept (`keep`): the output stays faithful to the input, and onnxruntime's fusions see the
same graph shape (it fuses a Pad into a MaxPool wrongly once the Pad's dead second
reader is gone — onnxruntime 1.31; found by our fuzzer)."""
from __future__ import annotations

from onnxprune.graph import replace_nodes, subgraph_reads


def dead_nodes(model) -> set[str]:
    needed = set(model.output_names)
    live = set()
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output if o):
            live.add(node.name)
            needed.update(t for t in node.input if t)
            needed.update(subgraph_reads(node))
    return {n.name for n in model.graph.node} - live


def run(model, step) -> None:
    dead = dead_nodes(model) - set(step.dead_in_input)
    if dead:
        replace_nodes(model.graph, [n for n in model.graph.node if n.name not in dead])
    needed = {t for n in model.graph.node for t in list(n.input) + list(subgraph_reads(n))}
    needed |= set(model.output_names) | {i.name for i in model.graph.input}
    for name in [n for n in model.inits if n not in needed]:
        del model.inits[name]
