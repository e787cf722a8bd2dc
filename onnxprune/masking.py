"""Masked copies of a model, made by inserting a Mul by a 0/1 channel mask instead of
copying and zeroing weights (a multi-GB model would otherwise be duplicated).

  * `mask_feed_out_inputs`: every feed-out layer reads its input with the removed channels
    set to zero — the same as zeroing the weights that read them (x·0 adds +0 terms).
    This is the masking oracle's reference. With independent residual branches, a branch
    that lost channels its sum keeps is masked where it enters the sum (those channels of
    the sum come from the other branches alone).
  * `zero_feed_in_filters`: every feed-in layer's removed output channels carry only their
    bias — the same as zeroing those filters. The fold pass reads the constants of removed
    channels from it.
Masks take the type of the layer they sit next to (float16 layers in a float16 or
mixed-precision graph get float16 masks: onnxruntime does not mix types in a Mul).
"""
from __future__ import annotations

import numpy as np
import onnx

from .channels import FEED_IN, FEED_OUT
from .dtypes import float_types
from .ops import layer_of
from .residual import scattered


def _mask_shape(mask: np.ndarray, axis: int, rank: int, dtype=np.float32) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = len(mask)
    return mask.astype(dtype).reshape(shape)


def layer_dtype(model, node):
    """The float type a layer computes in: its weight's (input, weight and output share it)."""
    layer = layer_of(node)
    w = model.inits.get(node.input[layer.weight]) if layer and len(node.input) > layer.weight else None
    if w is not None and w.dtype.kind == "f":
        return w.dtype
    return np.dtype(np.float32)


def _rebuild(model, inserted_before: dict, inserted_after: dict) -> None:
    nodes = []
    for n in model.graph.node:
        nodes.extend(inserted_before.get(n.name, []))
        nodes.append(n)
        nodes.extend(inserted_after.get(n.name, []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def mask_feed_out_inputs(model, couplings, kept):
    masked = model.copy()
    layers = {s.node for s in couplings.slices if s.role == FEED_OUT and not kept(s.ids).all()}
    before = {}
    for node in masked.graph.node:
        if node.name not in layers:
            continue
        x = node.input[0]
        cmap = couplings.tensors[x]
        mask_name, out = f"{x}__mask_{node.name}", f"{x}__masked_{node.name}"
        masked.inits[mask_name] = _mask_shape(kept(cmap.ids), cmap.axis, len(model.shapes[x]),
                                              layer_dtype(model, node))
        before[node.name] = [onnx.helper.make_node("Mul", [x, mask_name], [out], name=f"{node.name}__mask")]
        node.input[0] = out
    _mask_branches(masked, couplings, kept, before)
    _rebuild(masked, before, {})
    masked.touch()
    return masked


def _mask_branches(masked, couplings, kept, before) -> None:
    """Zero the channels a residual branch removed where it enters its sum."""
    if not couplings.joins:
        return
    nodes = masked.index().nodes
    types = float_types(masked)
    dtype = next(iter(types)) if len(types) == 1 else np.dtype(np.float32)
    for s in scattered(couplings, kept):
        node = nodes[s.node]
        x = node.input[s.input]
        mask_name, out = f"{x}__mask_{node.name}_{s.input}", f"{x}__masked_{node.name}_{s.input}"
        masked.inits[mask_name] = _mask_shape(s.keep, s.axis, len(masked.shapes[x]), dtype)
        before.setdefault(node.name, []).append(
            onnx.helper.make_node("Mul", [x, mask_name], [out], name=f"{node.name}__mask_{s.input}"))
        node.input[s.input] = out


def zero_feed_in_filters(model, couplings, kept):
    zeroed = model.copy()
    layers = {s.node for s in couplings.slices if s.role == FEED_IN and not kept(s.ids).all()}
    ids_of = {p.node: p for p in couplings.producers}
    after = {}
    for node in zeroed.graph.node:
        if node.name not in layers or node.name not in ids_of:
            continue
        p = ids_of[node.name]
        y = node.output[0]
        rank = len(model.shapes[y])
        axis = couplings.tensors[y].axis
        keep = kept(p.ids)
        dtype = layer_dtype(model, node)
        raw, scaled = f"{y}__unmasked", f"{y}__kept_only"
        node.output[0] = raw
        zeroed.inits[f"{y}__keep"] = _mask_shape(keep, axis, rank, dtype)
        bias = _bias_per_channel(node, zeroed, len(p.ids))
        inserted = [onnx.helper.make_node("Mul", [raw, f"{y}__keep"], [y if bias is None else scaled],
                                          name=f"{node.name}__zero_filters")]
        if bias is not None:  # removed channels keep their bias: that is what zeroed filters give
            zeroed.inits[f"{y}__removed_bias"] = _mask_shape(~keep, axis, rank, dtype) * \
                _mask_shape(bias, axis, rank, dtype)
            inserted.append(onnx.helper.make_node("Add", [scaled, f"{y}__removed_bias"], [y],
                                                  name=f"{node.name}__keep_bias"))
        after[node.name] = inserted
    _rebuild(zeroed, {}, after)
    return zeroed


def _bias_per_channel(node, model, width: int):
    """The constant each output channel has when its filter is zero, or None."""
    layer = layer_of(node)
    if layer is None or layer.bias is None or len(node.input) <= layer.bias or not node.input[layer.bias]:
        return None
    b = np.asarray(model.inits[node.input[layer.bias]], dtype=np.float64) * layer.bias_scale(node)
    if b.size not in (1, width):
        return None  # a per-row (batch-shaped) Gemm bias: not a per-channel constant
    return np.broadcast_to(b.reshape(-1), (width,)).copy()
