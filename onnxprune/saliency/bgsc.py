"""BGSC: the data-free DFPC bound (METHODS.md §1), computed in one forward pass.

For a channel class c, the L1 error its removal causes at the outputs of the feed-out
layers is bounded by

    s_c = Σ_b Σ_{a reaches b} ⟨u_a[c], r_b[c]⟩

u_a is the absolute-weight response of feed-in a to an all-ones input, pushed through
the channel-wise operators between a and b with absolute parameters; r_b is the
transposed absolute-weight convolution of an all-ones output of feed-out b.

How: we build a *bound graph* — the model with every feed-in layer fed ones and given
|W| without bias, BatchNormalization replaced by its scale |γ|/sqrt(var+ε), activations
by their Lipschitz constant, gates bounded in [0, 1] by 1, Add by a sum of bounds, and
structural ops (pooling, Resize, Concat, Reshape, ...) kept — and run it once with
onnxruntime. The value at each feed-out's input is U_b = Σ_{a reaches b} u_a, the
aggregation DFPC describes, with reachability given by the data flow itself, never by
names. r_b is computed in closed form (separable per-tap masks). A slow explicit-matrix
version of the same bound lives in tests/test_bgsc.py as the reference.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..couplings import FEED_OUT, Context
from ..runtime import run_named, session_from_parts

# Lipschitz constants of activations (max |f'|). The paper covers ReLU (1); the others
# are the factor the bound needs and are reported by `lipschitz_notes`.
LIPSCHITZ = {
    "Relu": 1.0, "Clip": 1.0, "Abs": 1.0, "Neg": 1.0, "Identity": 1.0, "Dropout": 1.0, "Cast": 1.0,
    "Tanh": 1.0, "Softplus": 1.0, "Softsign": 1.0, "Celu": 1.0, "ThresholdedRelu": 1.0,
    "Sigmoid": 0.25, "HardSwish": 1.5, "Gelu": 1.13, "Mish": 1.09, "Erf": 1.13,
    "Softmax": 1.0, "LogSoftmax": 1.0, "Hardmax": 1.0, "Shrink": 1.0, "Floor": 1.0, "Ceil": 1.0,
    "Round": 1.0, "Sign": 1.0,
}
SILU_LIPSCHITZ, HARD_SWISH_LIPSCHITZ = 1.1, 1.5
# Ops that move or pool values without mixing channels: a bound map goes through unchanged.
STRUCTURAL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
              "GlobalLpPool", "Resize", "Upsample", "Concat", "Split", "Slice", "Flatten", "Reshape",
              "Squeeze", "Unsqueeze", "Transpose", "Gather", "Expand", "Tile", "Shape", "Size",
              "ReduceMean", "ReduceMax", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceMin"}


def bgsc(model, couplings, seed=0):
    return bgsc_details(model, couplings)["scores"]


def bgsc_per_position(model, couplings, seed=0):
    """The bound per input position of each feed-out: each feed-out's term divided by its
    number of spatial positions. Removes the resolution bias of raw scores (channels in
    high-resolution stages look more important) but keeps the weight of streams that feed
    many layers."""
    return bgsc_details(model, couplings)["scores_per_position"]


def bgsc_details(model, couplings):
    """Scores per class, plus the per-feed-out contributions (for diagnostics and tests)."""
    builder = _BoundGraph(model, couplings)
    feed_outs = _feed_out_uses(model, couplings)
    consumers = model.consumers()
    bounds = builder.run([node.input[0] for node, _ in feed_outs.values()])
    scores = np.zeros(couplings.n_classes)
    per_position = np.zeros(couplings.n_classes)
    per_feed_out = {}
    for name, (node, use) in feed_outs.items():
        x = node.input[0]
        cmap = couplings.tensors.get(x)
        if cmap is None or x not in bounds:
            continue
        if cmap.axis == 0:
            continue  # channels on the batch axis: not a layer input we can bound
        u = np.moveaxis(bounds[x][0], cmap.axis - 1, 0)      # one sample, channels first
        r = _transposed_bound(node, model, u.shape, consumers)
        contrib = (u.reshape(u.shape[0], -1) * r.reshape(r.shape[0], -1)).sum(axis=1)
        np.add.at(scores, couplings.class_of[cmap.ids], contrib)
        positions = u[0].size if u.ndim > 1 else 1
        np.add.at(per_position, couplings.class_of[cmap.ids], contrib / positions)
        per_feed_out[name] = (cmap.ids, contrib)
    return {"scores": scores, "scores_per_position": per_position, "per_feed_out": per_feed_out,
            "notes": builder.notes}


def _feed_out_uses(model, couplings):
    nodes = model.nodes_by_name()
    return {s.node: (nodes[s.node], s) for s in couplings.slices if s.role == FEED_OUT}


# -- r_b: transposed absolute-weight map of an all-ones output ---------------------------
def _transposed_bound(node, model, u_shape, consumers=None):
    """r_b with channels first, shaped like the feed-out input seen channels-first."""
    w = np.abs(model.inits[node.input[1]].astype(np.float64))
    w = _scaled_by_following_bn(node, model, w, consumers)

    def attr(name, default=None):
        return Context.attr(node, name, default)
    if node.op_type == "Gemm":
        k_axis = 1 if attr("transB", 0) else 0
        r = w.sum(axis=1 - k_axis) * abs(attr("alpha", 1.0))
        return r.reshape((len(r),) + (1,) * (len(u_shape) - 1)) * np.ones(u_shape)
    if node.op_type == "MatMul":
        r = w.sum(axis=1)
        return r.reshape((len(r),) + (1,) * (len(u_shape) - 1)) * np.ones(u_shape)
    spatial_in = tuple(u_shape[1:])  # u is channels first: (C, *spatial)
    kernel = w.shape[2:]
    nd = len(kernel)
    strides = attr("strides", [1] * nd)
    dilations = attr("dilations", [1] * nd)
    pads = _explicit_pads(node, model, spatial_in, kernel, strides, dilations)
    group = attr("group", 1)
    if node.op_type == "Conv":
        # A[c_in, taps] = Σ_o |W[o, c_local, taps]| over the outputs of c_in's group
        c_out, per_group = w.shape[0], w.shape[1]
        a = w.reshape(group, c_out // group, per_group, *kernel).sum(axis=1).reshape(group * per_group, *kernel)
        out_spatial = model.shapes[node.output[0]][2:]
        masks = [_tap_mask(spatial_in[d], out_spatial[d], kernel[d], strides[d], dilations[d], pads[d])
                 for d in range(nd)]
    else:  # ConvTranspose: input position p writes output positions p*s - pad + k*d
        a = w.sum(axis=1)
        out_spatial = model.shapes[node.output[0]][2:]
        masks = [_transpose_tap_mask(spatial_in[d], out_spatial[d], kernel[d], strides[d], dilations[d],
                                     pads[d]) for d in range(nd)]
    r = a
    for d in range(nd):
        # contract the next tap axis (always axis 1) with its mask; tensordot appends the
        # position axis at the end, so the result ends as (C, pos_0, ..., pos_{nd-1})
        r = np.tensordot(r, masks[d], axes=([1], [0]))
    return r


def _scaled_by_following_bn(node, model, w, consumers):
    """The error is measured after the BatchNormalization that follows b, if any: then a
    model with BN folded into b (W·γ/σ) gets the same r_b as the unfolded one."""
    users = (consumers or model.consumers()).get(node.output[0], [])
    if node.op_type != "Conv" or len(users) != 1 or users[0][0].op_type != "BatchNormalization":
        return w
    bn = users[0][0]
    gamma, var = model.inits.get(bn.input[1]), model.inits.get(bn.input[4])
    if gamma is None or var is None:
        return w
    scale = np.abs(gamma) / np.sqrt(var + Context.attr(bn, "epsilon", 1e-5))
    return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))


def _explicit_pads(node, model, spatial_in, kernel, strides, dilations):
    """Begin pads per spatial axis, with auto_pad resolved."""
    nd = len(kernel)
    auto = Context.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER") and node.op_type == "Conv":
        out = model.shapes[node.output[0]][2:]
        begins = []
        for d in range(nd):
            total = max(0, (out[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - spatial_in[d])
            begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        return begins
    pads = Context.attr(node, "pads", [0] * (2 * nd))
    return list(pads[:nd])


def _tap_mask(n_in, n_out, k, stride, dilation, pad):
    """mask[t, p] = 1 if some output position reads input p through tap t."""
    mask = np.zeros((k, n_in))
    for t in range(k):
        pos = np.arange(n_out) * stride - pad + t * dilation
        pos = pos[(pos >= 0) & (pos < n_in)]
        mask[t, pos] = 1.0
    return mask


def _transpose_tap_mask(n_in, n_out, k, stride, dilation, pad):
    """mask[t, p] = 1 if input p writes an output position (inside the crop) through tap t."""
    mask = np.zeros((k, n_in))
    p = np.arange(n_in)
    for t in range(k):
        out = p * stride - pad + t * dilation
        mask[t, (out >= 0) & (out < n_out)] = 1.0
    return mask


# -- U_b: the bound graph ----------------------------------------------------------------
class _BoundGraph:
    def __init__(self, model, couplings):
        self.model, self.c = model, couplings
        self.producers = {p.node for p in couplings.producers}
        self.nodes, self.inits, self.notes = [], {}, set()
        self.model_producer = model.producers()

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

    # helpers to emit nodes
    def _const(self, array, hint):
        name = f"__bound_{hint}_{len(self.inits)}"
        self.inits[name] = np.asarray(array, dtype=np.float32)
        return name

    def _emit(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def _scale(self, node, x, factor):
        out = self._bound_name(node, [x])
        if factor == 1.0:
            self._emit("Identity", [x], [out])
        else:
            self._emit("Mul", [x, self._const(factor, "k")], [out])
        self._expand_to_output(node, out)

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
            self._emit("Expand", [bound, self._shape_const(node.output[0])], [node.output[0]])

    def _is_activation(self, t):
        return bool(t) and t in self.c.tensors

    def _bound(self, node):
        op = node.op_type
        acts = [t for t in node.input if self._is_activation(t)]
        if not acts and op not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            self.nodes.append(node)  # constants and shape arithmetic: unchanged
            return
        if (node.name in self.producers and op in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                and len(node.input) > 1 and node.input[1] in self.model.inits):
            return self._feed_in(node)
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            return handler(node)
        if op in LIPSCHITZ:
            if op not in ("Relu", "Clip", "Identity", "Dropout", "Cast"):
                self.notes.add(f"{op}: Lipschitz factor {LIPSCHITZ[op]}")
            return self._scale(node, node.input[0], LIPSCHITZ[op])
        if op in STRUCTURAL:
            self.nodes.append(node)
            return
        # An operator without bound semantics: its channels are frozen by the analysis,
        # so a zero bound downstream changes no prunable score.
        self.notes.add(f"{op}: no bound, treated as 0 (its channels are frozen)")
        for o in node.output:
            if o and o in self.model.shapes:
                self._emit("ConstantOfShape", [self._shape_const(o)], [o],
                           value=numpy_helper.from_array(np.zeros(1, np.float32)))

    def _shape_const(self, tensor):
        name = f"__bound_shape_{len(self.inits)}"
        self.inits[name] = np.array(self.model.shapes[tensor], dtype=np.int64)
        return name

    def _abs_weight(self, name):
        return self._const(np.abs(self.model.inits[name]), "absw")

    def _feed_in(self, node):
        """u_a: the layer applied with |W| and no bias to an all-ones input of its shape."""
        x = node.input[0]
        ones = f"__bound_ones_{node.name}"
        self._emit("ConstantOfShape", [self._shape_const(x)], [ones],
                   value=numpy_helper.from_array(np.ones(1, np.float32)))
        inputs = [ones, self._abs_weight(node.input[1])]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            attrs["alpha"] = abs(attrs.get("alpha", 1.0))
            attrs.pop("beta", None)
        self._emit(node.op_type, inputs, [node.output[0]], **attrs)

    # -- one bound rule per operator ------------------------------------------------------
    def _op_Conv(self, node):  # depthwise (channel-wise), or writing frozen channels: |K|, no bias
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._emit(node.op_type, [node.input[0], self._abs_weight(node.input[1])], [node.output[0]], **attrs)

    _op_ConvTranspose = _op_Conv

    def _op_MatMul(self, node):  # channels on a batch or row axis
        if node.input[1] in self.model.inits:
            return self._emit("MatMul", [node.input[0], self._abs_weight(node.input[1])], [node.output[0]])
        # Two activations (attention): bilinear, no Lipschitz bound; the product of the two
        # bounds stands in for it, so heads still rank by the magnitude that flows through.
        self.notes.add("MatMul of two activations: product of bounds used (no Lipschitz bound)")
        a, b = (t if self._is_activation(t) else self._const(np.abs(self.model.inits[t]), "mm")
                for t in node.input[:2])
        self._emit("MatMul", [a, b], [node.output[0]])

    def _op_BatchNormalization(self, node):
        gamma, var = (self.model.inits[node.input[i]] for i in (1, 4))
        eps = Context.attr(node, "epsilon", 1e-5)
        scale = np.abs(gamma) / np.sqrt(var + eps)
        rank = len(self.model.shapes[node.input[0]])
        self._emit("Mul", [node.input[0], self._const(scale.reshape((-1,) + (1,) * (rank - 2)), "bn")],
                   [node.output[0]])

    def _op_InstanceNormalization(self, node):
        self.notes.add("InstanceNormalization: data-dependent scale ignored, |γ| used")
        gamma = np.abs(self.model.inits[node.input[1]])
        rank = len(self.model.shapes[node.input[0]])
        self._emit("Mul", [node.input[0], self._const(gamma.reshape((-1,) + (1,) * (rank - 2)), "in")],
                   [node.output[0]])

    def _op_LayerNormalization(self, node):
        self.notes.add("LayerNormalization: data-dependent scale ignored, |γ| used")
        self._emit("Mul", [node.input[0], self._abs_weight(node.input[1])], [node.output[0]])

    def _op_LeakyRelu(self, node):
        self._scale(node, node.input[0], max(1.0, abs(Context.attr(node, "alpha", 0.01))))

    def _op_Elu(self, node):
        self._scale(node, node.input[0], max(1.0, abs(Context.attr(node, "alpha", 1.0))))

    def _op_Selu(self, node):
        gamma, alpha = Context.attr(node, "gamma", 1.0507), Context.attr(node, "alpha", 1.67326)
        self._scale(node, node.input[0], gamma * max(1.0, alpha))

    def _op_HardSigmoid(self, node):
        self._scale(node, node.input[0], abs(Context.attr(node, "alpha", 0.2)))

    def _op_PRelu(self, node):
        slope = self.model.inits.get(node.input[1])
        if slope is None:
            return self._scale(node, node.input[0], 1.0)
        self._emit("Mul", [node.input[0], self._const(np.maximum(1.0, np.abs(slope)), "prelu")],
                   [node.output[0]])

    def _op_Pad(self, node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        if len(n.input) > 2 and n.input[2]:
            n.input[2] = self._const(np.zeros((), np.float32), "pad")  # bounds pad with 0
        self.nodes.append(n)

    def _sum(self, node, terms, scale=1.0):
        final = self._bound_name(node, terms)
        out = final if scale == 1.0 else f"__bound_sum_{node.name}"
        if len(terms) == 1:
            self._emit("Identity", terms, [out])
        else:
            self._emit("Sum", terms, [out])
        if scale != 1.0:
            self._emit("Mul", [out, self._const(scale, "k")], [final])
        self._expand_to_output(node, final)

    def _op_Add(self, node):  # |Δ(a ± b)| ≤ |Δa| + |Δb|; constants carry no error
        self._sum(node, [t for t in node.input if self._is_activation(t)])

    _op_Sub = _op_Sum = _op_Max = _op_Min = _op_Add

    def _op_Mean(self, node):
        self._sum(node, [t for t in node.input if self._is_activation(t)], 1.0 / len(node.input))

    def _op_Where(self, node):
        self._sum(node, [t for t in node.input[1:] if self._is_activation(t)])

    def _op_Mul(self, node):
        a, b = node.input[0], node.input[1]
        acts = [t for t in (a, b) if self._is_activation(t)]
        if len(acts) == 1:  # x * constant
            x = acts[0]
            other = b if x == a else a
            c = self.model.inits.get(other)
            factor = np.abs(c) if c is not None else 1.0
            return self._emit("Mul", [x, self._const(factor, "c")], [node.output[0]])
        for x, y in ((a, b), (b, a)):
            gate = self._gate_bound(y)
            if gate is None:
                continue
            if self._derived_from(y, x):  # x·g(x): SiLU / HardSwish written out
                factor = SILU_LIPSCHITZ if gate[1] == "sigmoid" else HARD_SWISH_LIPSCHITZ
                self.notes.add(f"x*gate(x) ({gate[1]}): Lipschitz factor {factor}")
            else:
                factor = gate[0]  # an SE-style gate bounded by 1
            return self._scale(node, x, factor)
        self.notes.add("product of two unbounded activations: bounds summed")
        self._sum(node, acts)

    def _op_Div(self, node):
        c = self.model.inits.get(node.input[1])
        factor = 1.0 / np.abs(c) if c is not None else 1.0
        if c is None:
            self.notes.add("division by an activation: denominator ignored")
        self._emit("Mul", [node.input[0], self._const(factor, "div")], [node.output[0]])

    def _gate_bound(self, tensor, depth=0):
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
            inner = self._gate_bound(p.input[0], depth + 1)
            c = float(np.abs(self.model.inits[p.input[1]]).max())
            if inner is not None and c > 0:
                return (inner[0] / c if p.op_type == "Div" else inner[0] * c), inner[1]
        return None

    def _derived_from(self, y, x, depth=0):
        if y == x:
            return True
        p = self.model_producer.get(y)
        if p is None or depth > 4:
            return False
        return any(self._derived_from(t, x, depth + 1) for t in p.input if self._is_activation(t))
