"""Recover stage (docs/methods.md §5): after the exact rewrite has been verified, change the
surviving weights to win back fidelity on calibration data. Runs the recovery passes of
onnxprune/pipeline.py that are asked for, in their fixed order."""
from __future__ import annotations

from .errors import OnnxPruneError
from .pipeline import RECOVERY_PASSES, Step, run_passes

METHODS = tuple(RECOVERY_PASSES)


def parse_methods(spec) -> tuple[str, ...]:
    """'lsq' / 'means,stats' / ('stats', 'lsq') / 'none' -> the methods, in pipeline order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in RECOVERY_PASSES]
    if unknown:
        raise OnnxPruneError(f"unknown recovery method(s) {unknown}; choose from {list(METHODS)} or 'none'")
    return tuple(m for m in METHODS if m in names)


def recover(original, slim, couplings, removed_classes, calibration, size: int, methods, folds=None):
    """Returns a recovered copy of `slim` (a Model) and the notes the passes wrote.
    `calibration()` returns a fresh iterator of feed dicts; `size` is its sample count."""
    methods = parse_methods(methods)
    out = slim.copy()
    if not methods or not removed_classes:
        return out, []
    step = Step(couplings, couplings.kept_fn(removed_classes), dict(folds or {}), original=original,
                calibration=calibration, calibration_size=size)
    run_passes(out, [RECOVERY_PASSES[m] for m in methods], step)
    return out, step.notes
