"""Graph rewrite passes, one per file. Each is `run(model, ...) -> None`, editing the
`onnxprune.model.Model` it is given (a copy of the original, made by the caller)."""
from . import (fold_removed_constants, infer_shapes, remove_dead_nodes, slice_initializers,
               update_attributes)

__all__ = ["fold_removed_constants", "infer_shapes", "remove_dead_nodes", "slice_initializers", "update_attributes"]
