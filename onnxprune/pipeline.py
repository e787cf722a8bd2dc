"""The pass pipelines, listed in one place. Every pass is a module of `onnxprune.passes`
with the same signature, `run(model: Model, step: Step) -> None`: it edits the model it
is given (the caller hands it a copy where the original must survive) and reads what it
needs of the decision from `step`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import passes
from .couplings import Couplings


@dataclass
class Step:
    """What a pass may need besides the model. Load passes need nothing."""
    couplings: Couplings | None = None
    kept: Callable | None = None            # channel identities -> kept mask
    folds: dict = field(default_factory=dict)   # consumer -> Fold (passes/fold_removed_constants.py)
    dead_in_input: frozenset = frozenset()  # nodes already dead in the input: kept as they were


# Canonicalise a freshly read model; numerics unchanged.
LOAD_PASSES = (passes.inline_functions, passes.name_nodes, passes.constants_to_initializers,
               passes.bypass_identity, passes.fold_constants, passes.infer_shapes)
# Turn a plan into a smaller model.
REWRITE_PASSES = (passes.slice_initializers, passes.update_attributes, passes.fold_removed_constants,
                  passes.remove_dead_nodes, passes.infer_shapes)


def run_passes(model, pipeline, step: Step | None = None) -> None:
    step = step or Step()
    for p in pipeline:
        p.run(model, step)
        model.touch()   # the graph may have changed: drop the cached index
