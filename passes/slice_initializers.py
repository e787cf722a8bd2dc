"""Slice every initializer axis that holds channels down to the kept channels.

A tensor shared by several nodes (torch de-duplicates equal weights) is sliced in place
only when every user asks for the same cut; otherwise each cutting user gets its own
sliced copy and the others keep the original, so slicing one user never corrupts another.
Surviving values are exact slices: nothing is rescaled or fused.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def run(model, step) -> None:
    cuts = _cuts_per_use(step.couplings.slices, step.kept)
    index = model.index()
    nodes, users_of = index.nodes, index.consumers
    outputs = set(model.output_names)
    by_tensor = defaultdict(list)
    for (node, index), axis_masks in cuts.items():
        by_tensor[nodes[node].input[index]].append((node, index, axis_masks))
    for tensor, users in by_tensor.items():
        original = model.inits[tensor]
        same_cut = len({_signature(m) for _, _, m in users}) == 1
        if same_cut and len(users) == len(users_of.get(tensor, [])) and tensor not in outputs:
            model.inits[tensor] = _cut(original, users[0][2])
            continue
        for node, index, axis_masks in users:
            name = f"{tensor}__{node}"
            model.inits[name] = _cut(original, axis_masks)
            nodes[node].input[index] = name


def _cuts_per_use(slices, kept) -> dict:
    """(node, input index) -> {axis: mask}, for uses that lose at least one entry."""
    cuts: dict = defaultdict(dict)
    for s in slices:
        mask = kept(s.ids)
        if mask.all():
            continue
        previous = cuts[(s.node, s.input)].get(s.axis)
        if previous is not None and not np.array_equal(previous, mask):
            raise AssertionError(f"conflicting cuts of {s.node} input {s.input} axis {s.axis}")
        cuts[(s.node, s.input)][s.axis] = mask
    return cuts


def _signature(axis_masks) -> tuple:
    return tuple((a, m.tobytes()) for a, m in sorted(axis_masks.items()))


def _cut(array: np.ndarray, axis_masks) -> np.ndarray:
    for axis, mask in axis_masks.items():
        array = np.compress(mask, array, axis=axis)
    return np.ascontiguousarray(array)
