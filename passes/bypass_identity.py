"""Identity(initializer) -> the initializer itself (torch shares de-duplicated weights this
way). Sharing is kept: the slicing pass copies a shared tensor when its users disagree."""
from __future__ import annotations

from onnxprune.graph import replace_nodes


def run(model, step) -> None:
    outputs = set(model.output_names)
    rename, keep = {}, []
    for n in model.graph.node:
        if n.op_type == "Identity" and n.input[0] in model.inits and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    for n in keep:
        for i, t in enumerate(n.input):
            if t in rename:
                n.input[i] = rename[t]
    replace_nodes(model.graph, keep)
