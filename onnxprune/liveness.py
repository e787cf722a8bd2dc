"""Which channels of a model are structurally dead or unused (docs/methods.md §2.1).

Models exported by training-time pruners carry their pruned filters as zeros. A channel is
*alive* at a tensor when a path of non-zero weights leads to it from a model input, and
*used* when a path of non-zero weights leads from it to a model output. Both are plain
boolean reachability over the channel maps of the analysis (onnxprune/couplings.py), one
forward and one backward sweep in graph order — a fixed point in both directions at once:
a filter whose inputs all died is dead, and a filter whose every reader has zero weights on
it is unused, however far the zeros propagate.

Per-operator facts come from the registry (onnxprune/ops/): a layer's `connections` (which
output channel reads which input channel through a non-zero weight) and an operator's
`factor` (the constant it multiplies its input by: a BatchNormalization's scale, x * c).
A sum of independent residual branches (`--residual independent`) has channel k alive when
any branch's channel k is, and each branch's channel k used when the sum's is. Every other
operator is read through its channel map alone, conservatively: an output
channel is alive when any input channel of its class is, and an input channel is used when
its class is used at any output. A tensor without a channel map that depends on the input
(a spatial-attention map broadcast over channels) makes every channel it touches alive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .channels import CHANNELWISE, FEED_OUT
from .ops import layer_of, spec_of


@dataclass
class Liveness:
    alive: dict          # tensor with a channel map -> bool per position: depends on the input
    used: dict           # tensor with a channel map -> bool per position: some output depends on it
    zeroed: np.ndarray   # bool per channel identity: a producer's filter is zero, or a zero factor
                         # multiplies its channel (the mask a training-time pruner applied)

    def removable(self, couplings) -> np.ndarray:
        """Per class: dead or unused at every tensor it appears in, and not frozen."""
        blocked = np.zeros(couplings.n_classes, dtype=bool)
        for t, cmap in couplings.tensors.items():
            needed = self.alive[t] & self.used[t]
            blocked[couplings.class_of[cmap.ids[needed]]] = True
        for c in couplings.frozen:
            blocked[c] = True
        return ~blocked


def liveness(model, couplings, tolerance: float = 0.0) -> Liveness:
    """Weights with |w| <= tolerance count as zero."""
    weighted = _weighted_layers(model, couplings, tolerance)
    zeroed = np.zeros(int(couplings.class_of.size), dtype=bool)
    for p in couplings.producers:
        if p.node in weighted and p.output == weighted[p.node][0].output[0]:
            zeroed[p.ids] = ~weighted[p.node][1].any(axis=1)
    alive, killed = _forward(model, couplings, weighted, tolerance)
    zeroed |= killed
    used = _backward(model, couplings, weighted, tolerance)
    return Liveness(alive, used, zeroed)


def _weighted_layers(model, couplings, tolerance):
    """{node name: (node, connections)} for every layer whose constant weight reads the
    channels of its input (feed-out or channel-wise, as the analysis recorded it)."""
    nodes = model.index().nodes
    reading = {s.node for s in couplings.slices if s.role in (FEED_OUT, CHANNELWISE)
               and s.input == getattr(layer_of(nodes[s.node]), "weight", None)}
    out = {}
    for name in reading:
        node = nodes[name]
        layer = layer_of(node)
        w = model.inits.get(node.input[layer.weight])
        x = couplings.tensors.get(node.input[0])
        if w is None or x is None or layer.connections is None:
            continue
        links = layer.connections(node, np.abs(w) > tolerance)
        if links.shape[1] == len(x.ids):
            out[name] = (node, links)
    return out


def _forward(model, couplings, weighted, tolerance):
    """alive per channel-mapped tensor; and the producer channels a zero factor multiplies
    before they meet other producers' channels."""
    tensors, class_of = couplings.tensors, couplings.class_of
    alive = {t: np.ones(len(tensors[t].ids), dtype=bool) for t in model.input_names if t in tensors}
    varies = {t for t in model.input_names if t not in tensors}   # unmapped tensors that depend on the input
    produced = {p.output for p in couplings.producers}
    killed = np.zeros(len(class_of), dtype=bool)
    joins = {j.node: j for j in couplings.joins}
    own = set()     # tensors whose channels are still their producer's alone (no Add or Concat yet)
    for node in model.graph.node:
        depends = any(t in varies or (t in alive and alive[t].any()) for t in node.input if t)
        for o in (o for o in node.output if o):
            cmap = tensors.get(o)
            if cmap is None:
                if depends:
                    varies.add(o)
                continue
            if node.name in weighted and o == node.output[0]:
                x = node.input[0]
                alive[o] = (weighted[node.name][1] & alive[x][None, :]).any(axis=1)
            elif node.name in joins and o == node.output[0]:   # independent branches: any one feeds k
                alive[o] = np.logical_or.reduce([alive.get(node.input[i], np.ones(len(cmap.ids), bool))
                                                 for i, _ in joins[node.name].operands])
            elif (o in produced or any(t in varies for t in node.input if t)
                  or _foreign_alive(node, alive, tensors, class_of)):
                alive[o] = np.full(len(cmap.ids), depends)   # new channels, or a broadcast activation
            else:
                live_classes = np.zeros(couplings.n_classes, dtype=bool)
                for t in node.input:
                    if t in alive:
                        live_classes[class_of[tensors[t].ids[alive[t]]]] = True
                alive[o] = live_classes[class_of[cmap.ids]]
            mapped = [t for t in node.input if t in tensors]
            if o in produced or (len(mapped) == 1 and mapped[0] in own
                                 and np.array_equal(tensors[mapped[0]].ids, cmap.ids)):
                own.add(o)
            zero = _zero_factor(node, model, o, cmap, tolerance)
            if zero is not None:
                if o in own:    # a zero BN scale right after a layer masks that layer's filter
                    killed[cmap.ids[zero]] = True
                alive[o] &= ~zero
    return alive, killed


def _backward(model, couplings, weighted, tolerance):
    tensors, class_of = couplings.tensors, couplings.class_of
    used = {t: np.zeros(len(cmap.ids), dtype=bool) for t, cmap in tensors.items()}
    needed = set(model.output_names)        # tensors without a channel map that an output reads
    for t in model.output_names:
        if t in used:
            used[t][:] = True
    produced = {p.output for p in couplings.producers}
    joins = {j.node: j for j in couplings.joins}
    for node in reversed(model.graph.node):
        outs = [o for o in node.output if o]
        if not any(o in needed or (o in used and used[o].any()) for o in outs):
            continue
        blind = any(o in needed and o not in tensors for o in outs) or any(o in produced for o in outs)
        used_classes = np.zeros(couplings.n_classes, dtype=bool)
        for o in outs:
            if o in tensors:
                used_classes[class_of[tensors[o].ids[used[o]]]] = True
        for i, t in enumerate(node.input):
            if not t or t in model.inits:
                continue
            if t not in tensors:
                needed.add(t)
            elif node.name in weighted and i == 0:
                used[t] |= (weighted[node.name][1] & used[node.output[0]][:, None]).any(axis=0)
            elif node.name in joins and i in {j for j, _ in joins[node.name].operands}:
                used[t] |= used[node.output[0]]   # a branch's channel k feeds the sum's channel k only
            elif blind:
                used[t][:] = True
            else:   # positions of classes no output holds (a width-1 operand broadcast) reach every output
                reach = used_classes[class_of[tensors[t].ids]] | ~_held(node, tensors, class_of, t)
                zero = _zero_factor(node, model, node.output[0], tensors.get(node.output[0]), tolerance)
                if zero is not None and len(zero) == len(reach):
                    reach &= ~zero
                used[t] |= reach
    return used


def _held(node, tensors, class_of, t) -> np.ndarray:
    """Per channel position of input `t`: its class is among the node's output channels."""
    out_classes = [class_of[tensors[o].ids] for o in node.output if o in tensors]
    held = np.concatenate(out_classes) if out_classes else np.zeros(0, np.int64)
    return np.isin(class_of[tensors[t].ids], held)


def _foreign_alive(node, alive, tensors, class_of) -> bool:
    """An input channel whose class no output holds is alive: it is broadcast into every
    output channel (x * gate with a one-channel gate)."""
    return any((alive[t] & ~_held(node, tensors, class_of, t)).any() for t in node.input if t in alive)


def _zero_factor(node, model, output, cmap, tolerance):
    """Per channel of `output`: the node multiplies it by zero (None: no constant factor)."""
    spec = spec_of(node)
    if cmap is None or spec is None or spec.factor is None or output != node.output[0]:
        return None
    factor = spec.factor(node, model)
    shape = model.shapes.get(output)
    if factor is None or shape is None or np.ndim(factor) > len(shape):
        return None
    zero = np.abs(np.asarray(factor, dtype=np.float64)) <= tolerance
    zero = zero.reshape((1,) * (len(shape) - zero.ndim) + zero.shape)
    if zero.shape[cmap.axis] not in (1, len(cmap.ids)):
        return None
    per_channel = np.moveaxis(zero, cmap.axis, 0).reshape(zero.shape[cmap.axis], -1).all(axis=1)
    return np.broadcast_to(per_channel, (len(cmap.ids),)).copy()
