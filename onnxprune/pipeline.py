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
    # recovery passes (docs/methods.md §5) read these
    original: object = None                 # the unpruned Model
    calibration: Callable | None = None     # () -> iterator of feed dicts (calibration batches)
    calibration_size: int = 0               # samples in one pass over `calibration`
    notes: list = field(default_factory=list)   # what the passes did, for the report
    merged: dict = field(default_factory=dict)  # consumer -> {merged input row: (kept row, s)} (passes/merge_neurons.py)
    # widening (passes/widen_groups.py): group index -> new class count, the generator new
    # weights are drawn from, and whether new feed-out columns are zero (nothing reads them)
    widen: dict = field(default_factory=dict)
    rng: object = None
    zero_new_inputs: bool = False


# Canonicalise a freshly read model; numerics unchanged.
LOAD_PASSES = (passes.inline_functions, passes.name_nodes, passes.constants_to_initializers,
               passes.bypass_identity, passes.fold_constants, passes.infer_shapes)
# Win back fidelity after the exact rewrite, in this order (each skips itself without data
# where it needs data): neuron merging, mean compensation, statistics correction, least-squares
# refit, end-to-end fit to the original's outputs.
RECOVERY_PASSES = {"merge": passes.merge_neurons, "means": passes.compensate_means, "stats": passes.correct_statistics,
                   "lsq": passes.reconstruct, "fit": passes.fit_outputs}
# Turn a plan into a smaller model.
REWRITE_PASSES = (passes.slice_initializers, passes.update_attributes, passes.scatter_residual,
                  passes.fold_removed_constants,
                  passes.remove_dead_nodes, passes.infer_shapes)
# Grow groups to more channels (PreConfig, onnxprune/reconfigure.py).
WIDEN_PASSES = (passes.widen_groups, passes.infer_shapes)


def run_passes(model, pipeline, step: Step | None = None) -> None:
    step = step or Step()
    for p in pipeline:
        p.run(model, step)
        model.touch()   # the graph may have changed: drop the cached index
