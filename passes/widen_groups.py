"""Grow groups to more channels (PreConfig, onnxprune/reconfigure.py): `step.widen` maps a
group index to its new class count. The inverse of the narrowing rewrite, on the same
record of the analysis: every initializer axis that holds the group's channels (feed-in
rows, biases, channel-wise constants, feed-out columns) gets the new entries, and every
attribute or shape constant that depends on the channel count (depthwise `group`, Split
sizes, Slice bounds, Reshape targets) is updated by the same `Edit`s the narrowing applies.

The new channels of a group sit right after one of its classes (the anchor, its last) in
every tensor: where the anchor's position repeats (a flattened C×H×W axis repeats it H·W
times in a row) the new channels repeat the same way. The edits count channels with
`kept(ids).sum()`; here `kept` returns how many channels each position stands for after
widening (the anchor's position counts 1 + the new ones), so the same sums give the new sizes.

New values are what a fresh PyTorch layer starts with, drawn from `step.rng`: a weight's
new entries kaiming-uniform with a = √5 (uniform ±1/√fan_in), a bias's uniform ±1/√fan_in,
a channel-wise constant's the operator's neutral entry (`fresh` in the registry). With
`step.zero_new_inputs` the new feed-out columns are zero instead, so that nothing reads
the new channels and the model computes what it computed before (the exactness check).
"""
from __future__ import annotations

import math

import numpy as np

from onnxprune.budget import class_widths
from onnxprune.channels import CHANNELWISE, FEED_OUT
from onnxprune.ops import layer_of, spec_of


def run(model, step) -> None:
    couplings = step.couplings
    if not step.widen:
        return
    extra = np.zeros(couplings.n_classes, dtype=np.int64)
    for gi, width in step.widen.items():
        group = couplings.groups[gi]
        if width < group.width:
            raise ValueError(f"group {gi} cannot widen from {group.width} to {width} channels")
        extra[group.classes[-1]] = width - group.width
    nodes = model.index().nodes
    grown: dict[str, tuple] = {}   # tensor -> (array with NaN where new, {axis: (new mask, role)}, user)
    for s in couplings.slices:
        name = nodes[s.node].input[s.input]
        array, axes, user = grown.get(name, (model.inits[name], {}, (s.node, s.input)))
        if s.axis in axes:
            continue  # a shared tensor: its first user placed the new entries
        at = _insert_positions(couplings.class_of[s.ids], extra[couplings.class_of[s.ids]])
        if not len(at):
            continue
        array = np.insert(array.astype(np.float64), at, np.nan, axis=s.axis)
        axes[s.axis] = (np.insert(np.zeros(len(s.ids), dtype=bool), at, True), s.role)
        grown[name] = (array, axes, user)
    dtypes = {name: model.inits[name].dtype for name in grown}
    weights_first = sorted(grown, key=lambda name: not _is_weight(nodes, grown[name][2]))
    for name in weights_first:
        array, axes, (node_name, index) = grown[name]
        model.inits[name] = _fill(array, axes, nodes[node_name], index, model, step).astype(dtypes[name])
    counts = lambda ids: 1 + extra[couplings.class_of[np.asarray(ids, dtype=np.int64)]]  # noqa: E731
    for edit in couplings.edits:
        edit.apply(nodes[edit.node], model, counts)


def blockers(model, couplings) -> dict[int, str]:
    """Group index -> why it cannot widen exactly by these rules (frozen groups are not
    listed: they cannot change at all)."""
    counts = class_widths(couplings).count
    nodes = model.index().nodes
    out = {}
    for s in couplings.slices:
        node = nodes[s.node]
        spec = spec_of(node)
        if s.role == CHANNELWISE and (spec is None or spec.layer is None) and \
                (spec is None or spec.fresh is None or spec.fresh(node, s.input) is None):
            reason = f"channel-wise constant of {node.op_type} {node.name} has no neutral value"
        elif model.inits[node.input[s.input]].dtype.kind != "f":
            reason = f"non-float constant {node.input[s.input]}"
        else:
            continue
        for g in np.unique(couplings.group_of[couplings.class_of[s.ids]]).tolist():
            out.setdefault(g, reason)
    for g in couplings.groups:
        if g.residual:
            out.setdefault(g.index, "branches of an independent residual sum")
        elif counts[g.classes].max(initial=1) > 1:
            out.setdefault(g.index, "a class stands for several channels (grouped convolution, shuffle or attention head)")
    return {gi: reason for gi, reason in out.items() if not couplings.groups[gi].frozen}


def _insert_positions(classes: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Where the new entries go: after each run of an anchor's positions, as many runs' worth
    as the anchor gains channels."""
    if not extra.any():
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    ends = np.r_[starts[1:], len(classes)]
    return np.repeat(ends, extra[starts] * (ends - starts))


def _is_weight(nodes, user) -> bool:
    layer = layer_of(nodes[user[0]])
    return layer is not None and user[1] == layer.weight


def _fill(array, axes, node, index: int, model, step) -> np.ndarray:
    new = np.isnan(array)
    layer = layer_of(node)
    if layer is not None and index in (layer.weight, layer.bias):
        weight = array if index == layer.weight else model.inits[node.input[layer.weight]]  # already grown
        bound = 1 / math.sqrt(_fan_in(node, weight))
        array[new] = step.rng.uniform(-bound, bound, int(new.sum()))
        if step.zero_new_inputs and index == layer.weight:
            own = np.zeros(array.shape, dtype=bool)   # entries of new output channels stay drawn
            for axis, (mask, role) in axes.items():
                if role != FEED_OUT:
                    own |= mask.reshape([-1 if a == axis else 1 for a in range(array.ndim)])
            array[new & ~own] = 0.0
        return array
    array[new] = spec_of(node).fresh(node, index)
    return array


def _fan_in(node, weight: np.ndarray) -> int:
    """PyTorch's fan-in of the layer: a conv weight's size over its first axis (torch's own
    rule, for ConvTranspose too); a matrix's input axis."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return max(weight.size // weight.shape[0], 1)
    return max(weight.shape[layer_of(node).in_axis(node)], 1)
