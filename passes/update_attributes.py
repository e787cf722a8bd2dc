"""Update attributes and shape constants that depend on the kept channels: depthwise
`group`, `Split` sizes, `Slice` bounds, `Reshape` targets, `Resize` sizes. Each rule
recorded its own update (an `Edit`) during analysis; this pass applies them."""
from __future__ import annotations


def run(model, edits, kept) -> None:
    nodes = model.nodes_by_name()
    for edit in edits:
        edit.apply(nodes[edit.node], model, kept)
