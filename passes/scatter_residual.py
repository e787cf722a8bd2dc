"""Independent residual branches (`--residual independent`, docs/methods.md §2): a branch
that lost channels its sum keeps is scattered into the sum's width before the Add — one
zero channel appended (Pad), then a Gather that puts each of its channels at its place in
the sum and the zero channel where the branch has none. Sums whose branches all keep the
same channels stay plain Adds."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.graph import replace_nodes
from onnxprune.residual import scattered


def run(model, step) -> None:
    nodes = model.index().nodes
    before: dict[str, list] = {}
    for s in scattered(step.couplings, step.kept):
        node = nodes[s.node]
        x = node.input[s.input]
        rank = len(model.shapes[x])
        name = f"{node.name}__branch{s.input}"
        pads = np.zeros(2 * rank, dtype=np.int64)
        pads[rank + s.axis] = 1            # one zero channel after the branch's own
        model.inits[f"{name}_pads"] = pads
        model.inits[f"{name}_index"] = s.index
        before.setdefault(s.node, []).extend([
            onnx.helper.make_node("Pad", [x, f"{name}_pads"], [f"{name}_padded"], name=f"{name}_pad"),
            onnx.helper.make_node("Gather", [f"{name}_padded", f"{name}_index"], [f"{name}_scattered"],
                                  name=f"{name}_gather", axis=s.axis)])
        node.input[s.input] = f"{name}_scattered"
        if s.node in step.dead_in_input:  # a sum already dead in the input stays, and so do its gathers
            step.dead_in_input = step.dead_in_input | {f"{name}_pad", f"{name}_gather"}
    if before:
        replace_nodes(model.graph, [m for n in model.graph.node for m in before.get(n.name, []) + [n]])
