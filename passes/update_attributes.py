"""Update attributes and shape constants that depend on the kept channels: depthwise
`group`, `Split` sizes, `Slice` bounds, `Reshape` targets, `Resize` sizes. Each rule
recorded its own update (an `Edit`) during analysis; this pass applies them. A target that
multiplies the run-time batch by a head count gets an integer Div and Mul inserted before
its Concat (onnxprune/ops/reshape_target.py `_rescale_batch`)."""
from __future__ import annotations


def run(model, step) -> None:
    nodes = model.index().nodes
    for edit in step.couplings.edits:
        edit.apply(nodes[edit.node], model, step.kept)
