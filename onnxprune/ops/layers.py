"""Layers with weights: Conv, ConvTranspose, Gemm and MatMul consume their input channels
(the weight's input axis is sliced) and produce new channels (its output axis). Depthwise
convolutions are channel-wise instead; grouped ones couple channel j of every group.
Products of two activations (attention's MatMul, and Einsum as torchvision's MaxVit writes
it) match the heads on a batch axis."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..channels import BIAS, CHANNELWISE, FEED_IN, FEED_OUT, ChannelMap, input_map, require
from ..graph import attr, set_attr
from .conv_bound import conv_transpose_transposed_bound, conv_transposed_bound
from .spec import Layer, op, output_elements


# -- MACs ---------------------------------------------------------------------------------
def _conv_macs(node, shapes) -> int:
    return output_elements(node, shapes) * int(np.prod(shapes[node.input[1]][1:]))


def _conv_transpose_macs(node, shapes) -> int:
    return int(np.prod(shapes[node.input[0]])) * int(np.prod(shapes[node.input[1]][1:]))


def _gemm_macs(node, shapes) -> int:
    a = shapes[node.input[0]]
    return output_elements(node, shapes) * int(a[0] if attr(node, "transA", 0) else a[1])


def _matmul_macs(node, shapes) -> int:
    """Weights and activation x activation products (attention) alike."""
    return output_elements(node, shapes) * int(shapes[node.input[0]][-1])


def _einsum_indices(node):
    """(operand index strings, output index string) of a two-operand Einsum without
    ellipsis, spaces removed; None for any other equation."""
    equation = attr(node, "equation")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "->" not in equation or "..." in equation:
        return None
    inputs, output = equation.split("->")
    inputs = inputs.split(",")
    return (inputs, output) if len(inputs) == 2 == len(node.input) else None


def _einsum_macs(node, shapes) -> int:
    """One multiply-accumulate per combination of all indices (output and contracted)."""
    indices = _einsum_indices(node)
    if indices is None:
        return 0
    sizes = {}
    for letters, tensor in zip(indices[0], node.input):
        for letter, size in zip(letters, shapes[tensor]):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return int(np.prod(list(sizes.values()), dtype=np.int64))


# -- r_b of BGSC for the dense layers (conv_bound.py has the convolutions') -----------------
def _gemm_transposed_bound(node, model, u_shape, index):
    w = np.abs(model.inits[node.input[1]].astype(np.float64))
    r = w.sum(axis=0 if attr(node, "transB", 0) else 1) * abs(attr(node, "alpha", 1.0))
    return r.reshape((len(r),) + (1,) * (len(u_shape) - 1)) * np.ones(u_shape)


def _matmul_transposed_bound(node, model, u_shape, index):
    r = np.abs(model.inits[node.input[1]].astype(np.float64)).sum(axis=1)
    return r.reshape((len(r),) + (1,) * (len(u_shape) - 1)) * np.ones(u_shape)


# -- bounds where the layer is not a feed-in (depthwise, frozen output, channels on a batch
# axis): the node with |W| and no bias. A feed-in's own bound (ones through |W|) is built by
# saliency/bgsc.py from the Layer record.
def _conv_bound(b, node):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    b.emit(node.op_type, [node.input[0], b.abs_weight(node.input[1])], [node.output[0]], **attrs)


def _matmul_bound(b, node):
    if node.input[1] in b.model.inits:
        return b.emit("MatMul", [node.input[0], b.abs_weight(node.input[1])], [node.output[0]])
    # Two activations (attention): bilinear, no Lipschitz bound; the product of the two
    # bounds stands in for it, so heads still rank by the magnitude that flows through.
    b.note("MatMul of two activations: product of bounds used (no Lipschitz bound)")
    a, c = (t if b.is_activation(t) else b.const(np.abs(b.model.inits[t]), "mm") for t in node.input[:2])
    b.emit("MatMul", [a, c], [node.output[0]])


def _einsum_bound(b, node):
    """As a MatMul of two activations: the same contraction of the two bounds."""
    b.note("Einsum of two activations: product of bounds used (no Lipschitz bound)")
    b.emit("Einsum", list(node.input[:2]), [node.output[0]], equation=attr(node, "equation"))


# -- which output channel reads which input channel through a non-zero weight -------------
def _conv_connections(node, nonzero):
    """Conv weight [O, I/g, k...]: output o reads the I/g input channels of its group."""
    reads = nonzero.reshape(nonzero.shape[0], nonzero.shape[1], -1).any(axis=2)
    out, per_group = reads.shape
    group = attr(node, "group", 1)
    first_input = (np.arange(out) // (out // group)) * per_group
    links = np.zeros((out, per_group * group), dtype=bool)
    links[np.arange(out)[:, None], first_input[:, None] + np.arange(per_group)] = reads
    return links


def _conv_transpose_connections(node, nonzero):
    """ConvTranspose weight [I, O/g, k...]: input i writes the O/g output channels of its group."""
    writes = nonzero.reshape(nonzero.shape[0], nonzero.shape[1], -1).any(axis=2)
    inputs, per_group = writes.shape
    group = attr(node, "group", 1)
    first_output = (np.arange(inputs) // (inputs // group)) * per_group
    links = np.zeros((per_group * group, inputs), dtype=bool)
    links[first_output[:, None] + np.arange(per_group), np.arange(inputs)[:, None]] = writes
    return links


CONV = Layer(in_axis=lambda node: 1, out_axis=lambda node: 0, transposed_bound=conv_transposed_bound,
             connections=_conv_connections)
CONV_TRANSPOSE = Layer(in_axis=lambda node: 0, out_axis=lambda node: 1,
                       transposed_bound=conv_transpose_transposed_bound, connections=_conv_transpose_connections)
GEMM = Layer(in_axis=lambda node: 1 if attr(node, "transB", 0) else 0,
             out_axis=lambda node: 0 if attr(node, "transB", 0) else 1,
             transposed_bound=_gemm_transposed_bound, bias_scale=lambda node: attr(node, "beta", 1.0),
             connections=lambda node, nonzero: nonzero if attr(node, "transB", 0) else nonzero.T)
MATMUL = Layer(in_axis=lambda node: 0, out_axis=lambda node: 1, transposed_bound=_matmul_transposed_bound,
               bias=None, connections=lambda node, nonzero: nonzero.T)


# -- channel rules ---------------------------------------------------------------------------
def _conv_inputs(node, ctx):
    """Input channel map, constant weight and group count of a Conv or ConvTranspose."""
    x = input_map(node, ctx)
    w = ctx.const(node.input[1])
    require(w is not None, f"{node.op_type} weight is computed at run time")
    require(x.axis == 1, f"{node.op_type} input channel axis is not 1")
    return x, w, attr(node, "group", 1)


@op("Conv", bound=_conv_bound, macs=_conv_macs, layer=CONV)
def conv(node, ctx):
    x, w, group = _conv_inputs(node, ctx)
    c_in, c_out, per_group = len(x.ids), w.shape[0], w.shape[1]
    if group == 1:
        ctx.param(node, 1, 1, x.ids, FEED_OUT)
        out = ctx.produce(node, node.output[0], c_out, 1)
        ctx.param(node, 1, 0, out, FEED_IN)
        ctx.param(node, 2, 0, out, BIAS)
    elif per_group == 1 and group == c_in:
        # Depthwise: output channel o reads input channel o // multiplier only.
        out = np.repeat(x.ids, c_out // c_in)
        ctx.param(node, 1, 0, out, CHANNELWISE)
        ctx.param(node, 2, 0, out, CHANNELWISE)
        ctx.edit(node, lambda n, model, kept, ids=x.ids: set_attr(n, "group", int(kept(ids).sum())))
        ctx.out(node.output[0], ChannelMap(1, out))
    else:
        # Grouped: every group must keep the same number of channels, so channel j of each
        # group is removed together (one class spans the groups).
        _unify_across_groups(ctx, x.ids, group)
        ctx.param(node, 1, 1, x.ids[:per_group], FEED_OUT)
        out = ctx.produce(node, node.output[0], c_out, 1)
        _unify_across_groups(ctx, out, group)
        ctx.param(node, 1, 0, out, FEED_IN)
        ctx.param(node, 2, 0, out, BIAS)


def _unify_across_groups(ctx, ids, group):
    rows = np.asarray(ids).reshape(group, -1)
    for r in rows[1:]:
        ctx.unify(rows[0], r)


@op("ConvTranspose", bound=_conv_bound, macs=_conv_transpose_macs, layer=CONV_TRANSPOSE)
def conv_transpose(node, ctx):
    x, w, group = _conv_inputs(node, ctx)
    c_in, per_group_out = w.shape[0], w.shape[1]
    if group == 1:
        ctx.param(node, 1, 0, x.ids, FEED_OUT)
        out = ctx.produce(node, node.output[0], per_group_out, 1)
        ctx.param(node, 1, 1, out, FEED_IN)
        ctx.param(node, 2, 0, out, BIAS)
    else:
        require(group == c_in, "grouped ConvTranspose that is not depthwise")
        out = np.repeat(x.ids, per_group_out)
        ctx.param(node, 1, 0, x.ids, CHANNELWISE)
        ctx.param(node, 2, 0, out, CHANNELWISE)
        ctx.edit(node, lambda n, model, kept, ids=x.ids: set_attr(n, "group", int(kept(ids).sum())))
        ctx.out(node.output[0], ChannelMap(1, out))


@op("Gemm", bound=_conv_bound, macs=_gemm_macs, layer=GEMM)
def gemm(node, ctx):
    a = input_map(node, ctx)
    require(attr(node, "transA", 0) == 0 and a.axis == 1, "Gemm reads features on axis 0")
    w = ctx.const(node.input[1])
    require(w is not None, "Gemm weight is computed at run time")
    trans_b = attr(node, "transB", 0)
    k_axis, n_axis = (1, 0) if trans_b else (0, 1)
    ctx.param(node, 1, k_axis, a.ids, FEED_OUT)
    out = ctx.produce(node, node.output[0], w.shape[n_axis], 1)
    ctx.param(node, 1, n_axis, out, FEED_IN)
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.const(node.input[2])
        require(bias is not None, "Gemm bias is computed at run time")
        if bias.ndim >= 1 and bias.shape[-1] == len(out) and len(out) > 1:
            ctx.param(node, 2, bias.ndim - 1, out, BIAS)


@op("MatMul", bound=_matmul_bound, macs=_matmul_macs, layer=MATMUL)
def matmul(node, ctx):
    a = input_map(node, ctx, 0)
    b = ctx.map(node.input[1])
    if b is not None:
        _matmul_of_activations(node, ctx, a, b)
        return
    w = ctx.const(node.input[1])
    require(w is not None and w.ndim == 2, "MatMul weight is not a constant matrix")
    rank = len(ctx.shape(node.input[0]))
    require(rank >= 2, "MatMul of a vector")
    if a.axis != rank - 1:
        ctx.out(node.output[0], a)  # channels on a batch or row axis pass through
        return
    ctx.param(node, 1, 0, a.ids, FEED_OUT)
    out = ctx.produce(node, node.output[0], w.shape[1], rank - 1)
    ctx.param(node, 1, 1, out, FEED_IN)


def _matmul_of_activations(node, ctx, a, b):
    """Attention (Q.K^T, scores.V): a batched product of two activations. Channels on a batch
    axis of both operands (the heads, once a Reshape has split them off) are matched position
    by position, as by an elementwise op: head j of the output reads head j of each operand
    only. Channels on a row, column or contracted axis mix with the other operand: frozen."""
    sa, sb, so = ctx.shape(node.input[0]), ctx.shape(node.input[1]), ctx.shape(node.output[0])
    require(len(sa) >= 3 and len(sb) >= 3 and a.axis < len(sa) - 2 and b.axis < len(sb) - 2,
            "MatMul of two activations (attention) with channels on a matrix axis")
    axis = a.axis + len(so) - len(sa)
    require(axis == b.axis + len(so) - len(sb),
            "MatMul of two activations (attention) with channels on different batch axes")
    _match_heads(node, ctx, a, b, axis)


def _match_heads(node, ctx, a, b, axis):
    """Channels on a batch axis of both operands of a product, matched position by position
    (a single head is broadcast and couples nothing); the output carries them on `axis`."""
    if len(a.ids) == len(b.ids):
        if len(a.ids) > 1 and a.ids is not b.ids:
            ctx.unify(a.ids, b.ids)
        ids = a.ids
    else:
        require(min(len(a.ids), len(b.ids)) == 1,
                f"MatMul of two activations (attention) with {len(a.ids)} and {len(b.ids)} heads")
        ids = a.ids if len(a.ids) > 1 else b.ids   # a single head is broadcast: couples nothing
    ctx.out(node.output[0], ChannelMap(axis, ids))


@op("Einsum", bound=_einsum_bound, macs=_einsum_macs)
def einsum(node, ctx):
    """A two-operand Einsum of activations (torchvision's MaxVit attention,
    "BGHID,BGHJD->BGHIJ" and "BGHIJ,BGHJD->BGHID"): channels on an index that both operands
    and the output carry are a batch axis of the product, matched as in MatMul's attention.
    Channels on an index that is contracted or read by one operand only mix: frozen."""
    indices = _einsum_indices(node)
    require(indices is not None, "Einsum other than a product of two operands without ellipsis")
    (left, right), output = indices
    a, b = input_map(node, ctx, 0), ctx.map(node.input[1])
    require(b is not None, "Einsum with a constant operand")
    letter = left[a.axis]
    require(right[b.axis] == letter and letter in output,
            "Einsum with channels on an index that is contracted or not in both operands")
    _match_heads(node, ctx, a, b, output.index(letter))
