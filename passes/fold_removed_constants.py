"""Fold the constant output of removed channels into their consumers' biases.

A removed channel is not zero: once its filters are gone it still carries a constant (the
producer's bias, a BatchNormalization shift, sigmoid(0) = 0.5, ...). Dropping it changes
the network (Tessier et al., docs/methods.md §2); folding it keeps what can be kept.

For each feed-out layer (Conv, ConvTranspose, Gemm) that reads removed channels:
  1. run the original with the removed channels' feed-in filters zeroed, on two random
     inputs: the removed channels' values must not depend on the input;
  2. apply the layer, without bias, to those values alone: its contribution;
  3. contribution equal at every output position -> add it to the bias (exact);
     otherwise (zero padding reaches the border) -> `approx` mode adds the interior value,
     `exact` mode drops it. Each case is counted for the report.
`plan_folds` works on the original model; `run` applies the result after slicing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.runtime import model_session, random_inputs, run_named, session_from_parts

from onnxprune.channels import FEED_OUT
from onnxprune.graph import attr
from onnxprune.masking import layer_dtype, zero_feed_in_filters
from onnxprune.ops import layer_of

MODES = ("none", "exact", "approx")


@dataclass
class Fold:
    node: str
    delta: np.ndarray     # per output channel of the consumer, original indexing
    exact: bool


@dataclass
class FoldStats:
    exact: int = 0
    approximate: int = 0
    dropped: int = 0      # consumers whose removed inputs vary with the input, or unsupported ops

    def note(self) -> str:
        return (f"constants of removed channels: folded exactly into {self.exact} consumer(s), "
                f"approximately into {self.approximate}, dropped at {self.dropped}")


def plan_folds(model, couplings, removed_classes, mode: str = "exact", seed: int = 0, values=None):
    """{consumer: Fold} and FoldStats. `values` ({tensor: the removed channels' constant
    values, others zero}) replaces the run of the zeroed model (onnxprune/shrink.py reads
    them from the input model itself, whose removed channels are constant already)."""
    stats = FoldStats()
    if mode == "none" or not removed_classes:
        return {}, stats
    kept = couplings.kept_fn(removed_classes)
    nodes = model.index().nodes
    uses = {}
    for s in couplings.slices:
        if s.role == FEED_OUT and not kept(s.ids).all():
            node = nodes[s.node]
            if foldable(node) and node.input[0] in couplings.tensors:
                uses[s.node] = node
            else:
                stats.dropped += 1
    if not uses:
        return {}, stats
    if values is None:
        values = _removed_channel_values(model, couplings, kept, [n.input[0] for n in uses.values()], seed)
    out_ids = {p.node: p.ids for p in couplings.producers}
    folds = {}
    contributions = _contributions(model, list(uses.values()), values)
    for name, node in uses.items():
        x = node.input[0]
        if x not in values:
            stats.dropped += 1
            continue
        y = contributions[name]
        rows = kept(out_ids[name]) if name in out_ids else None   # removed rows need no fold
        delta, exact = _bias_delta(node, y, rows)
        if delta is None or (not exact and mode == "exact"):
            stats.dropped += 1
            continue
        folds[name] = Fold(name, delta, exact)
        if exact:
            stats.exact += 1
        else:
            stats.approximate += 1
    return folds, stats


def _removed_channel_values(model, couplings, kept, tensors, seed):
    """Values of the removed channels (others zeroed) at each tensor, if input-independent."""
    zeroed = zero_feed_in_filters(model, couplings, kept)
    wanted = sorted(set(tensors))
    sess = model_session(zeroed, optimize="basic", outputs=wanted)
    rng = np.random.default_rng(seed + 1)
    runs = [run_named(sess, random_inputs(model, rng, sess)) for _ in range(2)]
    values = {}
    for t in wanted:
        cmap = couplings.tensors[t]
        removed = ~kept(cmap.ids)
        samples = [only_channels(run[t], removed, cmap.axis) for run in runs]
        if steady_channels(samples, cmap.axis).all():
            values[t] = samples[0]  # in the model's own type: what its consumer reads
    return values


def steady_channels(samples, axis: int) -> np.ndarray:
    """Per channel: the same value in every sample, to 1e-6 of the largest value of all."""
    flat = [np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).astype(np.float64) for a in samples]
    scale = max(float(np.abs(flat[0]).max()) if flat[0].size else 0.0, 1e-30)
    steady = np.ones(len(flat[0]), dtype=bool)
    for other in flat[1:]:
        steady &= (np.abs(other - flat[0]) <= 1e-6 * scale).all(axis=1)
    return steady


def only_channels(value: np.ndarray, channels: np.ndarray, axis: int) -> np.ndarray:
    """`value` with every channel but `channels` (a mask) set to zero."""
    shape = [1] * value.ndim
    shape[axis] = len(channels)
    return value * channels.reshape(shape).astype(value.dtype)


def _contributions(model, nodes, values):
    """Each consumer applied, without bias, to the removed channels' values: one session."""
    graph_nodes, inputs, outputs, feeds, inits = [], [], [], {}, {}
    for k, node in enumerate(nodes):
        x = node.input[0]
        if x not in values:
            continue
        feed, weight, out = f"x{k}", f"w{k}", node.name
        n = onnx.NodeProto()
        n.CopyFrom(node)
        del n.input[:], n.output[:]
        n.input.extend([feed, weight])
        n.output.append(out)
        graph_nodes.append(n)
        feeds[feed], inits[weight] = _nonzero_channels(node, _wide(values[x]), _wide(model.inits[node.input[1]]))
        inputs.append(onnx.helper.make_tensor_value_info(
            feed, onnx.helper.np_dtype_to_tensor_dtype(feeds[feed].dtype), feeds[feed].shape))
        outputs.append(onnx.helper.make_empty_tensor_value_info(out))
    if not graph_nodes:
        return {}
    g = onnx.helper.make_graph(graph_nodes, "contributions", inputs, outputs)
    sess = session_from_parts(g, inits, model.opset_imports, model.ir_version, optimize="basic")
    return run_named(sess, feeds)


def _nonzero_channels(node, value, weight):
    """The value and weight cut to the input channels that carry a constant: the others are
    zero, and a convolution over all of them would cost a whole run of the network's layers
    (ungrouped Conv and ConvTranspose; other layers are cheap and stay whole)."""
    group = attr(node, "group", 1)
    axis = {"Conv": 1, "ConvTranspose": 0}.get(node.op_type)
    if axis is None or group != 1 or value.ndim < 2:
        return value, weight
    live = np.flatnonzero(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1).any(axis=1))
    live = live if len(live) else np.array([0])   # all zero: one zero channel keeps the shape
    return np.ascontiguousarray(value[:, live]), np.ascontiguousarray(np.take(weight, live, axis=axis))


def _bias_delta(node, y, rows=None):
    """Per-channel constant of a contribution, and whether it is the same everywhere (on
    the output channels `rows`, a mask, when given: the others are removed)."""
    sample = y[0]
    if node.op_type == "Gemm":
        return sample, True
    flat = sample.reshape(sample.shape[0], -1)
    if rows is not None and len(rows) == len(flat):
        flat = flat[rows]
    scale = max(float(np.abs(flat).max()) if flat.size else 0.0, 1e-30)
    exact = bool(flat.size == 0 or np.abs(flat - flat[:, :1]).max() <= 1e-5 * scale)
    centre = tuple(d // 2 for d in sample.shape[1:])
    return sample[(slice(None),) + centre], exact


def _wide(array: np.ndarray) -> np.ndarray:
    """float16 contributions are computed in float32 from exact upcasts: the delta is then
    rounded once, when it is added to the bias in the model's own type."""
    return array.astype(np.float32) if array.dtype == np.float16 else array


def foldable(node) -> bool:
    """A constant can be folded into this layer's bias (it has a bias input)."""
    layer = layer_of(node)
    return layer is not None and layer.bias is not None


def add_to_bias(model, node, delta: np.ndarray, suffix: str) -> None:
    """bias += delta, on a private copy of the bias (it may be shared). A layer without a
    bias but followed by BatchNormalization takes it in the BN mean instead (mean -= delta,
    exact), so folding adds no parameters."""
    layer = layer_of(node)
    index = layer.bias
    beta = layer.bias_scale(node)  # Gemm adds beta * C
    delta = delta / beta if beta != 0 else delta * 0
    has_bias = len(node.input) > index and node.input[index]
    bn = None if has_bias else model.index().sole_user(node.output[0], "BatchNormalization")
    if bn is not None:
        mean = model.inits[bn.input[3]]
        name = f"{bn.name}__mean_{suffix}"
        model.inits[name] = np.asarray(_wide(mean) - delta.reshape(mean.shape), dtype=mean.dtype)
        bn.input[3] = name
        return
    dtype = layer_dtype(model, node)  # the bias has the layer's type
    if has_bias:
        bias = _wide(model.inits[node.input[index]])
        new = (bias + delta.reshape(bias.shape) if bias.size == delta.size else bias + delta)
    else:
        new = delta
    name = f"{node.name}__bias_{suffix}"
    model.inits[name] = np.asarray(new, dtype=dtype)
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def run(model, step) -> None:
    """After slicing: add each fold's delta, restricted to the consumer's kept outputs."""
    if not step.folds:
        return
    nodes = model.index().nodes
    out_ids = {p.node: p.ids for p in step.couplings.producers}
    for name, fold in step.folds.items():
        delta = fold.delta
        if name in out_ids:
            delta = delta[step.kept(out_ids[name])]
        add_to_bias(model, nodes[name], delta, "folded")
