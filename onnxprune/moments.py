"""Per-channel mean and variance of activations predicted WITHOUT data, from the statistics
a BatchNormalization keeps (docs/methods.md §5): in eval mode a BN's output channel c is
β_c + γ_c·(normalised input), so with running statistics that matched its training data
it has mean β_c and variance γ_c². From there the moments are carried forward through the
operators that keep channels apart:

  - elementwise activations (ReLU, ReLU6/Clip, LeakyReLU, sigmoid, hard-swish, tanh, ...):
    E[f(z)] and E[f(z)²] for a Gaussian z, by Gauss-Hermite quadrature — for ReLU this is
    the closed form β·Φ(β/|γ|) + |γ|·φ(β/|γ|);
  - Add / Sum of two branches: means add, variances add (branches taken as independent);
  - a constant scale or shift (Mul / Div / Add by a constant);
  - pooling, Flatten, Reshape to features, Identity, Dropout: moments pass (a flattened
    C×H×W map repeats each channel's moments H·W times);
  - Concat along channels: the lists concatenate;
  - a Gemm with constant weights (an MLP head without BN): mean W·μ + b and variance W²·σ²,
    its inputs taken as independent.
Anything else ends the estimate there: a tensor without an estimate is left to data.
The data-free recovery passes (compensate_means, correct_statistics without --calib) read
these estimates at the inputs of the layers that lost channels.
"""
from __future__ import annotations

import numpy as np

from .graph import attr

_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(48)


def predict(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tensor -> (mean, variance) per channel (axis 1, or the feature axis of a rank-2 tensor)."""
    est: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in model.graph.node:
        out = _moments(node, model, est)
        if out is not None and node.output and node.output[0]:
            est[node.output[0]] = out
    return est


def _moments(node, model, est):
    op, ins = node.op_type, [t for t in node.input]
    if op == "BatchNormalization" and len(ins) >= 3 and ins[1] in model.inits and ins[2] in model.inits:
        gamma = np.asarray(model.inits[ins[1]], dtype=np.float64)
        beta = np.asarray(model.inits[ins[2]], dtype=np.float64)
        return beta, gamma ** 2
    if not ins or ins[0] not in est:
        return None
    mean, var = est[ins[0]]
    if op in ACTIVATIONS:
        return _through(ACTIVATIONS[op](node, model), mean, var)
    if op in PASS:
        return mean, var
    if op == "Flatten":
        shape = model.shapes.get(ins[0])
        repeat = int(np.prod(shape[2:])) if shape and len(shape) > 2 else 1
        return np.repeat(mean, repeat), np.repeat(var, repeat)
    if op in ("Add", "Sum"):
        return _sum(ins, model, est, mean, var)
    if op == "Gemm":
        return _gemm(node, model, mean, var)
    if op in ("Mul", "Div") and len(ins) == 2:
        c = _per_channel_constant(model, ins[1], len(mean))
        if c is None:
            return None
        c = 1.0 / c if op == "Div" else c
        return mean * c, var * c ** 2
    if op == "Concat" and attr(node, "axis") in (1, -3) and all(t in est for t in ins):
        return tuple(np.concatenate([est[t][k] for t in ins]) for k in (0, 1))
    return None


def _sum(ins, model, est, mean, var):
    mean, var = mean.copy(), var.copy()
    for t in ins[1:]:
        if t in est and len(est[t][0]) == len(mean):
            mean, var = mean + est[t][0], var + est[t][1]
            continue
        c = _per_channel_constant(model, t, len(mean))
        if c is None:
            return None
        mean = mean + c
    return mean, var


def _gemm(node, model, mean, var):
    """A fully connected layer with constant weights, its inputs taken as independent:
    mean W·μ + b, variance W²·σ² — how an MLP head with no BN gets an estimate."""
    ins = node.input
    if attr(node, "transA", 0) or len(ins) < 2 or ins[1] not in model.inits:
        return None
    w = np.asarray(model.inits[ins[1]], dtype=np.float64)
    w = (w.T if attr(node, "transB", 0) else w) * attr(node, "alpha", 1.0)
    if w.ndim != 2 or w.shape[0] != len(mean):
        return None
    out_mean, out_var = mean @ w, var @ (w * w)
    if len(ins) > 2 and ins[2]:
        b = _per_channel_constant(model, ins[2], w.shape[1])
        if b is None:
            return None
        out_mean = out_mean + attr(node, "beta", 1.0) * b
    return out_mean, out_var


def _per_channel_constant(model, tensor: str, width: int):
    """A scalar or one-value-per-channel constant, as a vector; None otherwise."""
    c = model.inits.get(tensor)
    if c is None:
        return None
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.full(width, float(c.reshape(())))
    squeezed = c.reshape(-1)
    return squeezed if squeezed.size == width and max(c.shape) == width else None


def _through(f, mean, var):
    """E[f(z)] and Var[f(z)] for z ~ N(mean, var), per channel (Gauss-Hermite)."""
    std = np.sqrt(np.maximum(var, 0.0))
    z = mean[:, None] + np.sqrt(2.0) * std[:, None] * _NODES[None, :]
    fz = f(z)
    m1 = (fz * _WEIGHTS).sum(axis=1) / np.sqrt(np.pi)
    m2 = (fz ** 2 * _WEIGHTS).sum(axis=1) / np.sqrt(np.pi)
    return m1, np.maximum(m2 - m1 ** 2, 0.0)


def _clip(node, model):
    lo, hi = attr(node, "min"), attr(node, "max")
    if len(node.input) > 1 and node.input[1] in model.inits:
        lo = float(model.inits[node.input[1]])
    if len(node.input) > 2 and node.input[2] in model.inits:
        hi = float(model.inits[node.input[2]])
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    return lambda z: np.clip(z, lo, hi)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACTIVATIONS = {
    "Relu": lambda node, model: lambda z: np.maximum(z, 0.0),
    "Clip": _clip,
    "LeakyRelu": lambda node, model: (lambda a: lambda z: np.where(z > 0, z, a * z))(attr(node, "alpha", 0.01)),
    "Sigmoid": lambda node, model: _sigmoid,
    "Tanh": lambda node, model: np.tanh,
    "HardSigmoid": lambda node, model: (lambda a, b: lambda z: np.clip(a * z + b, 0, 1))(
        attr(node, "alpha", 0.2), attr(node, "beta", 0.5)),
    "HardSwish": lambda node, model: lambda z: z * np.clip(z / 6 + 0.5, 0, 1),
    "Elu": lambda node, model: (lambda a: lambda z: np.where(z > 0, z, a * (np.exp(np.minimum(z, 0)) - 1)))(
        attr(node, "alpha", 1.0)),
}
PASS = {"Identity", "Dropout", "GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool", "Cast"}
