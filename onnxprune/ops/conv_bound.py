"""r_b of BGSC for convolutions: the transposed absolute-weight convolution of an all-ones
output, cropped to the input, in closed form from separable per-tap masks (docs/methods.md
§1). tests/test_bgsc.py checks it against an explicit matrix build."""
from __future__ import annotations

import numpy as np

from ..graph import attr


def conv_transposed_bound(node, model, u_shape, index):
    """r_b with channels first, shaped like the feed-out input seen channels-first."""
    w = np.abs(model.inits[node.input[1]]).astype(np.float32, copy=False)
    spatial_in, kernel, strides, dilations, pads = _geometry(node, model, u_shape, w)
    group = attr(node, "group", 1)
    # A[c_in, taps] = Σ_o s_o·|W[o, c_local, taps]| over the outputs of c_in's group, s_o the
    # scale of a following BN (else 1): one float32 matrix-vector product per group, since
    # a float64 copy of every weight cost more than the rest of the bound
    c_out, per_group = w.shape[0], w.shape[1]
    scale = following_bn_scale(node, model, index)
    scale = np.ones(c_out, np.float32) if scale is None else scale.astype(np.float32)
    a = np.matmul(scale.reshape(group, 1, c_out // group), w.reshape(group, c_out // group, -1))
    a = a.astype(np.float64).reshape(group * per_group, *kernel)
    out_spatial = model.shapes[node.output[0]][2:]
    masks = [_tap_mask(spatial_in[d], out_spatial[d], kernel[d], strides[d], dilations[d], pads[d])
             for d in range(len(kernel))]
    return _contract(a, masks)


def conv_transpose_transposed_bound(node, model, u_shape, index):
    """ConvTranspose: input position p writes output positions p*s - pad + k*d."""
    w = np.abs(model.inits[node.input[1]].astype(np.float64))
    spatial_in, kernel, strides, dilations, pads = _geometry(node, model, u_shape, w)
    out_spatial = model.shapes[node.output[0]][2:]
    masks = [_transpose_tap_mask(spatial_in[d], out_spatial[d], kernel[d], strides[d], dilations[d], pads[d])
             for d in range(len(kernel))]
    return _contract(w.sum(axis=1), masks)


def _geometry(node, model, u_shape, w):
    spatial_in = tuple(u_shape[1:])  # u is channels first: (C, *spatial)
    kernel = w.shape[2:]
    nd = len(kernel)
    strides = attr(node, "strides", [1] * nd)
    dilations = attr(node, "dilations", [1] * nd)
    return spatial_in, kernel, strides, dilations, _explicit_pads(node, model, spatial_in, kernel, strides,
                                                                 dilations)


def _contract(a, masks):
    r = a
    for mask in masks:
        # contract the next tap axis (always axis 1) with its mask; tensordot appends the
        # position axis at the end, so the result ends as (C, pos_0, ..., pos_{nd-1})
        r = np.tensordot(r, mask, axes=([1], [0]))
    return r


def following_bn_scale(node, model, index):
    """|γ|/√(var+ε) per output channel of the BatchNormalization that alone reads the
    layer's output, or None: what BN folding would multiply the layer's filters by."""
    bn = index.sole_user(node.output[0], "BatchNormalization")
    if bn is None:
        return None
    gamma, var = model.inits.get(bn.input[1]), model.inits.get(bn.input[4])
    if gamma is None or var is None:
        return None
    return np.abs(gamma) / np.sqrt(var + attr(bn, "epsilon", 1e-5))


def _explicit_pads(node, model, spatial_in, kernel, strides, dilations):
    """Begin pads per spatial axis, with auto_pad resolved."""
    nd = len(kernel)
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER") and node.op_type == "Conv":
        out = model.shapes[node.output[0]][2:]
        begins = []
        for d in range(nd):
            total = max(0, (out[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - spatial_in[d])
            begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        return begins
    pads = attr(node, "pads", [0] * (2 * nd))
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


