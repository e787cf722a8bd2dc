"""Graph passes, one per file, each `run(model, step) -> None` (see onnxprune/pipeline.py,
which lists them in order). Installed as `onnxprune.passes`."""
from . import (bypass_identity, compensate_means, constants_to_initializers, correct_statistics, fit_outputs, fold_constants,
               fold_removed_constants, infer_shapes, inline_functions, merge_neurons, name_nodes, reconstruct, remove_dead_nodes,
               scatter_residual, slice_initializers, update_attributes, widen_groups)

__all__ = ["bypass_identity", "compensate_means", "constants_to_initializers", "correct_statistics", "fit_outputs", "fold_constants", "fold_removed_constants",
           "infer_shapes", "inline_functions", "merge_neurons", "name_nodes", "reconstruct", "remove_dead_nodes", "scatter_residual", "slice_initializers",
           "update_attributes", "widen_groups"]
