"""Cost model: parameters and multiply-accumulates, from static shapes. `cost` reports a
model; `CostTracker` follows the exact cost of a model while channel classes are removed,
so that budgets are met on the same numbers the report gives. MACs per operator come
from the operator registry (onnxprune/ops/)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .ops import layer_of, spec_of


@dataclass
class Cost:
    params: int                  # floating-point initializer elements
    macs: int                    # multiply-accumulates of every operator that has a MAC count
    macs_by_node: dict[str, int]


def node_macs(node, shapes) -> int:
    spec = spec_of(node)
    if spec is None:
        return 0
    try:
        return int(spec.macs(node, shapes))
    except (KeyError, IndexError):
        return 0  # a shape is unknown: the node is not counted


def cost(model) -> Cost:
    params = sum(int(a.size) for a in model.inits.values() if a.dtype.kind == "f")
    # weights a late pass replaced (recovery) may not be in `shapes` yet: their arrays tell
    shapes = {**{name: a.shape for name, a in model.inits.items()}, **model.shapes}
    by_node = {n.name: node_macs(n, shapes) for n in model.graph.node}
    return Cost(params, sum(by_node.values()), {k: v for k, v in by_node.items() if v})


def _unweighted_macs(model, couplings, base, uses, nodes):
    """(node, output channel identities, MACs) of the nodes whose MACs no sliced weight
    accounts for: products of two activations (attention's Q.K^T and scores.V, heads on a
    batch axis) and weight MatMuls with channels on a batch axis. Their MACs are
    proportional to the channels their output keeps."""
    weighted = {name for (name, index) in uses
                if layer_of(nodes[name]) is not None and index == layer_of(nodes[name]).weight}
    for name, macs in base.macs_by_node.items():
        m = couplings.tensors.get(nodes[name].output[0]) if name not in weighted else None
        if m is not None and len(m.ids) > 1:
            yield name, m.ids, macs


class CostTracker:
    """Exact parameters and MACs of the pruned model as classes are removed one by one.

    Every weighted tensor's size is the product of its kept counts along the axes that
    hold channels; a layer's MACs are proportional to its weight's size (spatial sizes do
    not change), a product of two activations' (attention) to the channels its output
    keeps. A removal updates only the tensors its class touches, so each step costs
    a few operations, and the tracked value equals what the rewritten model reports
    (a tensor shared by users that need different cuts is counted once). Removing the last
    branch that keeps a channel of an independent residual sum removes the sum's channel
    too (onnxprune/residual.py), and with it the inputs of the layers reading it."""

    def __init__(self, model, couplings, fold: bool = True):
        nodes = model.index().nodes
        base = cost(model)
        self.params0, self.macs0 = base.params, base.macs
        uses: dict[tuple, dict] = {}
        for s in couplings.slices:
            uses.setdefault((s.node, s.input), {})[s.axis] = s.ids
        self.tensors, owner = [], {}
        axis_class, axis_index = [], []
        self.counts = []
        for (node_name, index), axes in uses.items():
            name = nodes[node_name].input[index]
            array = model.inits[name]
            counts_at = {}
            for axis, ids in axes.items():
                counts_at[axis] = len(self.counts)
                self.counts.append(len(ids))
                axis_class.append(couplings.class_of[ids])
                axis_index.append(np.full(len(ids), counts_at[axis]))
            is_owner = name not in owner and array.dtype.kind == "f"
            owner.setdefault(name, True)
            node = nodes[node_name]
            layer = layer_of(node)
            macs = base.macs_by_node.get(node_name, 0) if layer is not None and index == layer.weight else 0
            fixed = int(np.prod([d for a, d in enumerate(array.shape) if a not in axes]))
            self.tensors.append({"axes": list(counts_at.values()), "fixed": fixed, "size0": int(array.size),
                                 "params": is_owner, "macs_per_element": macs / max(array.size, 1)})
        for node_name, ids, macs in _unweighted_macs(model, couplings, base, uses, nodes):
            axis_class.append(couplings.class_of[ids])
            axis_index.append(np.full(len(ids), len(self.counts)))
            self.tensors.append({"axes": [len(self.counts)], "fixed": 1, "size0": len(ids), "params": False,
                                 "macs_per_element": macs / len(ids)})
            self.counts.append(len(ids))
        self.counts = np.array(self.counts, dtype=np.int64)
        # class -> (axis slot, positions removed); slot -> tensors using it
        classes = np.concatenate(axis_class) if axis_class else np.zeros(0, np.int64)
        slots = np.concatenate(axis_index) if axis_index else np.zeros(0, np.int64)
        n_slots = max(len(self.counts), 1)
        keys, hits = np.unique(classes * n_slots + slots, return_counts=True)
        self.incidence: dict[int, list] = {}
        for key, n in zip(keys.tolist(), hits.tolist()):
            self.incidence.setdefault(key // n_slots, []).append((key % n_slots, n))
        self.slot_tensors: dict[int, list] = {}
        for t, tensor in enumerate(self.tensors):
            for slot in tensor["axes"]:
                self.slot_tensors.setdefault(slot, []).append(t)
        self.sizes = np.array([self._size(t) for t in range(len(self.tensors))], dtype=np.float64)
        self.params, self.macs = float(self.params0), float(self.macs0)
        self.new_biases = self._new_biases(model, couplings, uses, nodes) if fold else []
        self.derivation, self.removed = couplings.derivation, set()

    def _new_biases(self, model, couplings, uses, nodes):
        """Feed-out layers without a bias (and no BN after them to take the fold) gain one
        once any of their inputs is removed: [input slot, output slot or None, width, active]."""
        slot_of = {}
        for t, ((node_name, index), axes) in enumerate(uses.items()):
            for axis, slot in zip(axes, self.tensors[t]["axes"]):
                slot_of[(node_name, index, axis)] = slot
        out = []
        index = model.index()
        for (node_name, input_index), axes in uses.items():
            node = nodes[node_name]
            layer = layer_of(node)
            if layer is None or layer.bias is None or input_index != layer.weight:
                continue
            if len(node.input) > layer.bias and node.input[layer.bias] or \
                    index.sole_user(node.output[0], "BatchNormalization") is not None:
                continue  # the fold goes into the existing bias, or into the BN's mean
            in_axis, out_axis = layer.in_axis(node), layer.out_axis(node)
            if (node_name, input_index, in_axis) not in slot_of:
                continue
            out.append([slot_of[(node_name, input_index, in_axis)], slot_of.get((node_name, input_index, out_axis)),
                        model.inits[node.input[layer.weight]].shape[out_axis], False])
        return out

    def _size(self, t, fewer=None) -> int:
        """Size of tensor t, with `fewer[slot]` entries less on its channel axes."""
        tensor = self.tensors[t]
        if fewer is None:
            return tensor["fixed"] * math.prod(int(self.counts[s]) for s in tensor["axes"])
        return tensor["fixed"] * math.prod(int(self.counts[s]) - fewer.get(s, 0) for s in tensor["axes"])

    def _slots(self, classes) -> dict[int, int]:
        """Channel-axis slot -> entries that removing `classes` takes from it."""
        slots: dict[int, int] = {}
        for cls in classes:
            for slot, n in self.incidence.get(cls, []):
                slots[slot] = slots.get(slot, 0) + n
        return slots

    def preview(self, classes) -> tuple[float, float, float]:
        """What removing `classes` would change, without removing them: (params, MACs, sum
        over the layers' weights of log(new size / old size)). Biases a fold would add are
        left out of the params; `remove` counts them."""
        classes = list(classes)
        slots = self._slots(classes + self.derivation.follow(self.removed, classes))
        d_params = d_macs = d_log = 0.0
        for t in {t for slot in slots for t in self.slot_tensors[slot]}:
            tensor = self.tensors[t]
            new = self._size(t, slots)
            delta = new - self.sizes[t]
            if tensor["params"]:
                d_params += delta
            if tensor["macs_per_element"]:
                d_macs += delta * tensor["macs_per_element"]
                d_log += math.log(max(new, 1) / self.sizes[t])
        return d_params, d_macs, d_log

    def slot_matrix(self, classes) -> np.ndarray:
        """(len(classes), channel-axis slots): the entries removing each class takes from each slot."""
        delta = np.zeros((len(classes), len(self.counts)))
        for i, c in enumerate(classes):
            for slot, n in self.incidence.get(int(c), []):
                delta[i, slot] += n
        return delta

    def macs_without_each(self, slots: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """MACs with the marked classes removed, for every row of the boolean matrix `removed`
        (rows x classes of `slots = slot_matrix(classes)`) at once: the samples of a dynamic
        model, each with its own channels (onnxprune/ftwt.py). Removals already made count;
        residual derivation is not followed (the plain layers a dynamic model gates need none)."""
        counts = self.counts[None, :] - removed.astype(np.float64) @ slots
        touched = slots.any(axis=0)
        macs = np.full(len(removed), self.macs)
        for t, tensor in enumerate(self.tensors):
            if tensor["macs_per_element"] and touched[tensor["axes"]].any():
                size = tensor["fixed"] * np.prod(counts[:, tensor["axes"]], axis=1)
                macs += (size - self.sizes[t]) * tensor["macs_per_element"]
        return macs

    def remove(self, cls: int) -> None:
        for c in [cls] + self.derivation.follow(self.removed, [cls]):
            self.removed.add(c)
            self._remove_one(c)

    def _remove_one(self, cls: int) -> None:
        slots = self._slots([cls])
        for slot, n in slots.items():
            self.counts[slot] -= n
        touched = {t for slot in slots for t in self.slot_tensors[slot]}
        for bias in self.new_biases:  # a fold may create a bias: count it when it appears
            in_slot, out_slot, width, active = bias
            if out_slot in slots:
                bias[2] = width = width - slots[out_slot]
                if active:
                    self.params -= slots[out_slot]
            if in_slot in slots and not active:
                bias[3] = True
                self.params += width
        for t in touched:
            new = self._size(t)
            delta = new - self.sizes[t]
            self.sizes[t] = new
            if self.tensors[t]["params"]:
                self.params += delta
            self.macs += delta * self.tensors[t]["macs_per_element"]
