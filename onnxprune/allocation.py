"""The allocate stage: the budget of the settings (a ratio, a MAC, parameter or latency
target) turned into the channel classes to remove, by the allocator the settings name
(`rank`, `density`, `synexp`, `synexp-weighted`, `sensitivity`, `latency`; `auto` chooses
among these in onnxprune/plan_choice.py before this is called)."""
from __future__ import annotations

from .arguments import Settings
from .budget import allocate, allocate_target, prunable_groups, reach_at_finer_steps
from .density import allocate_density
from .latency_alloc import allocate_budget_for_speed, allocate_to_latency
from .saliency import CalibrationData
from .sensitivity import allocate_sensitivity, group_weights
from .synexp import allocate_synexp


def allocate_budget(model, couplings, scores, s: Settings, data: CalibrationData | None, rewrite):
    """(removed channel classes, TargetResult or None, the allocator's notes) for the budget
    of `s`. `rewrite(removed)` -> (pruned Model, folds, fold stats): the latency allocator
    times what it allocates."""
    target, allocator_notes = None, []
    if s.ratio is not None:
        removed = allocate(couplings, scores, s.ratio, s.scope, s.min_keep, s.round_to, s.ranking, s.coupled)
        return removed, target, allocator_notes
    if s.target_latency is not None:   # allocates, rewrites and times (onnxprune/latency_alloc.py)
        target, allocator_notes = allocate_to_latency(
            model, couplings, scores, s, rewrite, data)
        return target.removed, target, allocator_notes
    metric, fraction = ("macs", s.target_macs) if s.target_macs is not None else ("params", s.target_params)
    also = ("params", s.target_params) if s.target_macs is not None and s.target_params is not None else None
    if s.allocator == "sensitivity":
        target, allocator_notes = allocate_sensitivity(model, couplings, scores, metric, fraction,
                                                       s.min_keep, s.round_to, s.coupled,
                                                       s.fold != "none", data)
    elif s.allocator in ("synexp", "synexp-weighted"):
        target, allocator_notes = _synexp(model, couplings, scores, metric, fraction, s, data, also)
    elif s.allocator == "latency":   # measured milliseconds per MAC (onnxprune/latency_alloc.py)
        target, allocator_notes = allocate_budget_for_speed(model, couplings, scores, metric, fraction, s, data)
    elif s.allocator == "density":
        target = allocate_density(model, couplings, scores, metric, fraction, s.min_keep, s.round_to,
                                  s.coupled, s.fold != "none")
    else:
        target = allocate_target(model, couplings, scores, metric, fraction, s.scope, s.ranking,
                                 s.min_keep, s.round_to, s.coupled, s.fold != "none")
    target, finer = reach_at_finer_steps(model, couplings, scores, target, s.scope, s.ranking, s.min_keep,
                                         s.round_to, s.coupled, s.fold != "none")
    return target.removed, target, allocator_notes + finer


def _synexp(model, couplings, scores, metric: str, fraction: float, s: Settings, data, also=None):
    weights, notes = None, []
    if s.allocator == "synexp-weighted":
        weights, notes = group_weights(model, couplings, scores, prunable_groups(couplings, s.coupled), s.min_keep,
                                       s.round_to, data)
    return allocate_synexp(model, couplings, scores, metric, fraction, s.min_keep, s.round_to, s.coupled,
                           s.fold != "none", weights, also), notes
