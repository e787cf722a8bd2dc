"""Allocate stage: which channel classes to remove under a budget.

`--ratio r` removes a fraction r of the prunable classes, either the same fraction in every
group (`local`) or by one ranking across groups (`global`), never below each group's floor
(`min_keep`), with kept counts rounded to a multiple of `round_to` where the group allows.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import OnnxPruneError


def parse_min_keep(value) -> float:
    """An integer >= 1 is a channel count; a number in (0, 1) a fraction of the group."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OnnxPruneError(f"--min-keep must be a count >= 1 or a fraction in (0, 1), got {value!r}") from None
    if not (0 < v < 1 or (v >= 1 and v == int(v))):
        raise OnnxPruneError(f"--min-keep must be a count >= 1 or a fraction in (0, 1), got {value!r}")
    return v


def floor_of(width: int, min_keep: float) -> int:
    keep = math.ceil(min_keep * width) if min_keep < 1 else int(min_keep)
    return max(1, min(width, keep))


def rounded_keep(keep: int, width: int, floor: int, round_to: int) -> int:
    """Nearest multiple of round_to in [floor, width] (ties go up); width if there is none."""
    if round_to <= 1:
        return keep
    candidates = [m for m in range(round_to, width + 1, round_to) if m >= floor]
    if not candidates:
        return width
    return min(candidates, key=lambda m: (abs(m - keep), -m))


def prunable_groups(couplings):
    return [g for g in couplings.groups if g.frozen is None and g.width > 1]


def allocate(couplings, scores: np.ndarray, ratio: float, scope: str = "local",
             min_keep: float = 0.1, round_to: int = 1) -> set[int]:
    if not 0 <= ratio < 1:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    if scope not in ("local", "global"):
        raise OnnxPruneError(f"--scope must be 'local' or 'global', got {scope!r}")
    if round_to < 1:
        raise OnnxPruneError(f"--round-to must be >= 1, got {round_to}")
    groups = prunable_groups(couplings)
    keep = {}
    if scope == "local":
        for g in groups:
            floor = floor_of(g.width, min_keep)
            keep[g.index] = max(floor, g.width - int(math.floor(ratio * g.width + 1e-9)))
    else:
        keep = _global_keep(groups, scores, ratio, min_keep)
    removed = set()
    for g in groups:
        floor = floor_of(g.width, min_keep)
        k = rounded_keep(keep[g.index], g.width, floor, round_to)
        order = g.classes[np.argsort(scores[g.classes], kind="stable")]
        removed.update(order[:g.width - k].tolist())
    return removed


def _global_keep(groups, scores, ratio, min_keep) -> dict[int, int]:
    """One ranking across groups: remove the lowest scores first, skipping a group at its floor."""
    total = sum(g.width for g in groups)
    target = int(math.floor(ratio * total + 1e-9))
    keep = {g.index: g.width for g in groups}
    floors = {g.index: floor_of(g.width, min_keep) for g in groups}
    entries = [(scores[c], g.index) for g in groups for c in g.classes]
    entries.sort(key=lambda e: e[0])
    removed = 0
    for _, gi in entries:
        if removed >= target:
            break
        if keep[gi] > floors[gi]:
            keep[gi] -= 1
            removed += 1
    return keep


def check_plan_classes(couplings, removed: set[int]) -> None:
    """A plan may not empty a group: its producers would have no output channels."""
    for g in couplings.groups:
        if g.width and all(c in removed for c in g.classes.tolist()):
            raise OnnxPruneError(f"the plan removes every channel of group {g.index} "
                                 f"(feed-in {', '.join(g.feed_in[:3])}); keep at least one")
