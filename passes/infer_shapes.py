"""Recompute every static shape (stale value_info is dropped first): at load, and after
the rewrite changed channel counts."""
from __future__ import annotations

from onnxprune.shapes import infer_static_shapes


def run(model, step) -> None:
    del model.graph.value_info[:]
    model.shapes = infer_static_shapes(model)
