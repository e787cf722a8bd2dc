"""Recompute every static shape of the rewritten model (stale value_info is dropped first)."""
from __future__ import annotations

from onnxprune.model import infer_static_shapes


def run(model) -> None:
    del model.graph.value_info[:]
    model.shapes = infer_static_shapes(model)
