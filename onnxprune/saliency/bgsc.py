"""BGSC: the data-free DFPC bound (docs/methods.md §1), computed in one forward pass.

For a channel class c, the L1 error its removal causes at the outputs of the feed-out
layers is bounded by

    s_c = Σ_b Σ_{a reaches b} ⟨u_a[c], r_b[c]⟩

u_a is the absolute-weight response of feed-in a to an all-ones input, pushed through
the channel-wise operators between a and b with absolute parameters; r_b is the
transposed absolute-weight convolution of an all-ones output of feed-out b.

How: we build a *bound graph* — the model with every feed-in layer fed ones and given
|W| without bias, and every other operator replaced by its bound as the operator registry
states it (onnxprune/ops/: BatchNormalization by its scale, activations by their Lipschitz
factor, Add by a sum of bounds, structural ops kept) — and run it once with onnxruntime.
The value at each feed-out's input is U_b = Σ_{a reaches b} u_a, with reachability given
by the data flow itself, never by names. r_b comes from the feed-out's `Layer` record in
closed form. Channels that pass through an operator without a bound (Exp, Pow, a
comparison, ...) cannot be scored: they are returned frozen, with the operator named.
A slow explicit-matrix version of the same bound lives in tests/test_bgsc.py.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ..ops import STRUCTURAL, UNBOUNDED, layer_of, spec_of
from ..runtime import run_named, session_from_parts
from ..channels import FEED_OUT
from ..dtypes import float32_model
from .scores import Scores


def bgsc(model, couplings, seed=0) -> Scores:
    d = bgsc_details(model, couplings)
    return Scores(d["scores"], d["frozen"], d["notes"])


def bgsc_per_position(model, couplings, seed=0) -> Scores:
    """The bound per input position of each feed-out: each feed-out's term divided by its
    number of spatial positions. Removes the resolution bias of raw scores (channels in
    high-resolution stages look more important) but keeps the weight of streams that feed
    many layers."""
    d = bgsc_details(model, couplings)
    return Scores(d["scores_per_position"], d["frozen"], d["notes"])


def bgsc_details(model, couplings):
    """Scores per class, plus the per-feed-out contributions (for diagnostics and tests)."""
    model = float32_model(model)  # bounds grow past float16's range; float64 Conv does not run
    builder = BoundGraph(model, couplings)
    index = model.index()
    feed_outs = {s.node: index.nodes[s.node] for s in couplings.slices if s.role == FEED_OUT}
    bounds = builder.run([node.input[0] for node in feed_outs.values()])
    scores = np.zeros(couplings.n_classes)
    per_position = np.zeros(couplings.n_classes)
    per_feed_out = {}
    for name, node in feed_outs.items():
        x = node.input[0]
        cmap = couplings.tensors.get(x)
        if cmap is None or x not in bounds or cmap.axis == 0:
            continue  # channels on the batch axis: not a layer input we can bound
        u = np.moveaxis(bounds[x][0], cmap.axis - 1, 0)      # one sample, channels first
        r = layer_of(node).transposed_bound(node, model, u.shape, index)
        contrib = (u.reshape(u.shape[0], -1) * r.reshape(r.shape[0], -1)).sum(axis=1)
        np.add.at(scores, couplings.class_of[cmap.ids], contrib)
        positions = u[0].size if u.ndim > 1 else 1
        np.add.at(per_position, couplings.class_of[cmap.ids], contrib / positions)
        per_feed_out[name] = (cmap.ids, contrib)
    return {"scores": scores, "scores_per_position": per_position, "per_feed_out": per_feed_out,
            "notes": sorted(builder.notes), "frozen": builder.frozen}


class BoundGraph:
    """Builds and runs the bound graph. The registry's bound functions receive this builder
    and emit their nodes through `emit`, `scale`, `sum`, `keep` and `const`."""

    def __init__(self, model, couplings):
        self.model, self.c = model, couplings
        self.producers = {p.node for p in couplings.producers}
        self.nodes, self.inits, self.notes = [], {}, set()
        self.frozen: dict[int, str] = {}   # classes no bound reaches, with the reason
        self.model_producer = model.index().producers
        self.computed_abs: set[str] = set()

    def run(self, wanted):
        if not wanted:
            return {}  # no layer reads a channel: nothing to bound (and no output to ask for)
        for node in self.model.graph.node:
            self._bound(node)
        g = helper.make_graph(self.nodes, "bound", list(self.model.graph.input), [])
        inits = dict(self.model.inits)
        inits.update(self.inits)
        sess = session_from_parts(g, inits, self.model.opset_imports, self.model.ir_version,
                                  optimize="basic", outputs=sorted(set(wanted)))
        feeds = {i.name: np.ones(self.model.input_shapes[i.name], dtype=np.float32)
                 for i in sess.get_inputs()}
        return run_named(sess, feeds)

    def _bound(self, node):
        acts = [t for t in node.input if self.is_activation(t)]
        layer = layer_of(node)
        if not acts and layer is None:
            return self.keep(node)  # constants and shape arithmetic: unchanged
        if (layer is not None and node.name in self.producers and len(node.input) > layer.weight
                and node.input[layer.weight] in self.model.inits):
            return self._feed_in(node, layer)
        spec = spec_of(node)
        if spec is None:
            # An operator the analysis does not know: its channels are frozen there, so a
            # zero bound downstream changes no prunable score.
            self.note(f"{node.op_type}: unknown operator, bound 0 (its channels are frozen)")
            return self._zeros(node)
        if spec.bound == STRUCTURAL:
            return self.keep(node)
        if spec.bound == UNBOUNDED:
            return self.unbounded(node)
        spec.bound(self, node)

    def _feed_in(self, node, layer):
        """u_a: the layer applied with |W| and no bias to an all-ones input of its shape."""
        x = node.input[0]
        ones = f"__bound_ones_{node.name}"
        self.emit("ConstantOfShape", [self.shape_const(x)], [ones],
                  value=numpy_helper.from_array(np.ones(1, np.float32)))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "alpha" in attrs:
            attrs["alpha"] = abs(attrs["alpha"])
        attrs.pop("beta", None)   # no bias
        inputs = [""] * (layer.weight + 1)
        inputs[0], inputs[layer.weight] = ones, self.abs_weight(node.input[layer.weight])
        self.emit(node.op_type, inputs, [node.output[0]], **attrs)

    def unbounded(self, node):
        """No bound exists: the channels touching the node are frozen for bgsc. The node is
        kept as it is, so that types stay right downstream; its values bound nothing."""
        reason = f"bgsc: {node.op_type} {node.name} has no bound; channels through it are not scored"
        for t in list(node.input) + list(node.output):
            cmap = self.c.tensors.get(t) if t else None
            if cmap is not None:
                for cls in np.unique(self.c.class_of[cmap.ids]).tolist():
                    self.frozen.setdefault(cls, reason)
        self.note(f"{node.op_type}: no bound; its channels are frozen for bgsc")
        self.keep(node)

    def _zeros(self, node):
        for o in node.output:
            if o and o in self.model.shapes:
                self.emit("ConstantOfShape", [self.shape_const(o)], [o],
                          value=numpy_helper.from_array(np.zeros(1, np.float32)))

    # -- what the registry's bound functions call -----------------------------------------
    def note(self, text: str) -> None:
        self.notes.add(text)

    def keep(self, node) -> None:
        self.nodes.append(node)

    def emit(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def const(self, array, hint):
        name = f"__bound_{hint}_{len(self.inits)}"
        self.inits[name] = np.asarray(array, dtype=np.float32)
        return name

    def shape_const(self, tensor):
        name = f"__bound_shape_{len(self.inits)}"
        self.inits[name] = np.array(self.model.shapes[tensor], dtype=np.int64)
        return name

    def abs_weight(self, name):
        if name not in self.model.inits:  # computed from constants (int8 weights through a Cast)
            out = f"__bound_abs_{name}"
            if out not in self.computed_abs:
                self.computed_abs.add(out)
                self.emit("Abs", [name], [out])
            return out
        return self.const(np.abs(self.model.inits[name]), "absw")

    def is_activation(self, t):
        return bool(t) and t in self.c.tensors

    def scale(self, node, x, factor):
        out = self._bound_name(node, [x])
        if factor == 1.0:
            self.emit("Identity", [x], [out])
        else:
            self.emit("Mul", [x, self.const(factor, "k")], [out])
        self._expand_to_output(node, out)

    def sum(self, node, terms, scale=1.0):
        final = self._bound_name(node, terms)
        out = final if scale == 1.0 else f"__bound_sum_{node.name}"
        self.emit("Identity" if len(terms) == 1 else "Sum", terms, [out])
        if scale != 1.0:
            self.emit("Mul", [out, self.const(scale, "k")], [final])
        self._expand_to_output(node, final)

    def _bound_name(self, node, terms):
        """Where the bound of `terms` goes: the node's output, or a temporary when the node
        broadcasts them with an operand the bound leaves out (a gate, or a constant with
        more channels or positions); `_expand_to_output` then gives it the output's shape."""
        shapes = [self.model.shapes.get(t) for t in terms]
        target = self.model.shapes.get(node.output[0])
        if target is None or any(s is None for s in shapes) or tuple(np.broadcast_shapes(*shapes)) == tuple(target):
            return node.output[0]
        return f"__bound_partial_{node.name}"

    def _expand_to_output(self, node, bound):
        if bound != node.output[0]:
            self.emit("Expand", [bound, self.shape_const(node.output[0])], [node.output[0]])

    def gate_bound(self, tensor, depth=0):
        """(max |value|, kind) for a tensor known to be bounded, e.g. a sigmoid gate."""
        p = self.model_producer.get(tensor)
        if p is None or depth > 4:
            return None
        if p.op_type in ("Sigmoid", "HardSigmoid"):
            return 1.0, "sigmoid" if p.op_type == "Sigmoid" else "hard"
        if p.op_type == "Clip":
            lo, hi = (self.model.inits.get(p.input[i]) if len(p.input) > i and p.input[i] else None
                      for i in (1, 2))
            if lo is not None and hi is not None:
                return float(max(abs(lo), abs(hi))), "hard"
        if p.op_type in ("Div", "Mul") and p.input[1] in self.model.inits:
            inner = self.gate_bound(p.input[0], depth + 1)
            c = float(np.abs(self.model.inits[p.input[1]]).max())
            if inner is not None and c > 0:
                return (inner[0] / c if p.op_type == "Div" else inner[0] * c), inner[1]
        return None

    def derived_from(self, y, x, depth=0):
        if y == x:
            return True
        p = self.model_producer.get(y)
        if p is None or depth > 4:
            return False
        return any(self.derived_from(t, x, depth + 1) for t in p.input if self.is_activation(t))
