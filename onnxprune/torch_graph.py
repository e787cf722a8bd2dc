"""A `Model` run in PyTorch, for the end-to-end fit (passes/fit_outputs.py): gradients
through the whole pruned graph, which onnxruntime does not give.

This is an executor, like onnxruntime, not knowledge the channel analysis reads: what an
operator does to channels stays in onnxprune/ops. It runs the inference semantics of the
operators in `KERNELS` (BatchNormalization with its running statistics, Dropout as identity);
a graph with any other operator is not run at all (`unsupported_ops`), never approximated.
Its outputs are compared with onnxruntime's in tests/test_fit_outputs.py.

Only the weights and biases of layers (the `layer` records of onnxprune/ops) and the scale
and shift of BatchNormalization are trainable; every other constant (shapes, axes, running
statistics, the constant of x * c) stays as it is. Computation is float32 whatever the
file's float type; `weights()` hands the trained values back in the file's dtypes.

torch is an optional dependency (`pip install 'onnxprune[fit]'`): `available()` says
whether it can be imported, and nothing else in the library imports it.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from .graph import attr
from .ops import layer_of


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def unsupported_ops(model) -> list[str]:
    """The operators of `model` this executor cannot run, sorted (empty: it runs the graph).
    Softmax before opset 13 flattens its input at `axis`: not implemented here."""
    opset = next((o.version for o in model.opset_imports if o.domain in ("", "ai.onnx")), 0)
    return sorted({f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                   for n in model.graph.node
                   if n.domain not in ("", "ai.onnx") or n.op_type not in KERNELS
                   or (n.op_type == "Softmax" and opset < 13)})


def trainable(model) -> list[str]:
    """Float initializers read as a layer's weight or bias, or as a BatchNormalization's scale
    or shift: what the fit may change."""
    names = []
    for node in model.graph.node:
        layer = layer_of(node)
        slots = ({layer.weight, layer.bias} - {None}) if layer is not None else \
            {1, 2} if node.op_type == "BatchNormalization" else set()
        names += [node.input[i] for i in sorted(slots)
                  if i < len(node.input) and node.input[i] in model.inits
                  and model.inits[node.input[i]].dtype.kind == "f"]
    return list(dict.fromkeys(names))


def module(model, train: list[str]):
    """A torch.nn.Module computing `model`'s outputs from its inputs (keyword tensors, by
    input name), the initializers in `train` its parameters."""
    import torch

    class TorchGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.slots = {name: f"w{i}" for i, name in enumerate(train)}
            self.params = torch.nn.ParameterDict({
                slot: torch.nn.Parameter(torch.from_numpy(np.array(model.inits[name], np.float32)))  # a copy:
                for name, slot in self.slots.items()})   # the model's arrays are shared, never edited in place
            self.constants = {name: torch.from_numpy(_as_torch_array(a)) for name, a in model.inits.items()
                              if name not in self.slots}

        def forward(self, **inputs):
            values = dict(self.constants)
            values.update({name: self.params[slot] for name, slot in self.slots.items()})
            values.update({name: t.float() if t.is_floating_point() else t for name, t in inputs.items()})
            for node in model.graph.node:
                args = [values[name] if name else None for name in node.input]
                out = KERNELS[node.op_type](torch, node, args)
                for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
                    if name:
                        values[name] = value
            return [values[name] for name in model.output_names]

        def weights(self) -> dict[str, np.ndarray]:
            """The trained initializers, in the dtypes of the file."""
            return {name: self.params[slot].detach().numpy().astype(model.inits[name].dtype)
                    for name, slot in self.slots.items()}

    return TorchGraph()


def _as_torch_array(a: np.ndarray) -> np.ndarray:
    """A copy torch may own (constants are never written, but torch wants writable arrays)."""
    return np.array(a, np.float32 if a.dtype.kind == "f" else np.bool_ if a.dtype == np.bool_ else np.int64)


# -- kernels: (torch, node, input tensors) -> output tensor (or a tuple, one per output) ------
def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axes(node, args, index: int = 1):
    """Axes from the attribute (older opsets) or the input at `index` (newer ones)."""
    if attr(node, "axes") is not None:
        return list(attr(node, "axes"))
    return _ints(args[index]) if len(args) > index and args[index] is not None else None


def _spatial_pads(torch, x, pads, value=0.0):
    """ONNX pads (begin..., end...) applied explicitly: torch's own padding is symmetric."""
    k = len(pads) // 2
    if not any(pads):
        return x
    flat = []
    for i in reversed(range(k)):
        flat += [pads[i], pads[i + k]]
    return torch.nn.functional.pad(x, flat, value=value)


def _no_auto_pad(node) -> None:
    if (attr(node, "auto_pad") or b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError(f"{node.op_type} with auto_pad")


def _conv(torch, node, a):
    _no_auto_pad(node)
    k = a[1].dim() - 2
    x = _spatial_pads(torch, a[0], list(attr(node, "pads") or [0] * 2 * k))
    fn = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[k]
    return fn(x, a[1], a[2] if len(a) > 2 else None, stride=list(attr(node, "strides") or [1] * k),
              dilation=list(attr(node, "dilations") or [1] * k), groups=attr(node, "group") or 1)


def _batch_norm(torch, node, a):
    return torch.nn.functional.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, attr(node, "epsilon") or 1e-5)


def _pool(torch, node, a, kind):
    _no_auto_pad(node)
    kernel = list(attr(node, "kernel_shape"))
    k = len(kernel)
    pads = list(attr(node, "pads") or [0] * 2 * k)
    strides = list(attr(node, "strides") or [1] * k)
    ceil = bool(attr(node, "ceil_mode") or 0)
    F = torch.nn.functional
    if kind == "max":
        x = _spatial_pads(torch, a[0], pads, value=-float("inf"))
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
        return fn(x, kernel, strides, 0, list(attr(node, "dilations") or [1] * k), ceil_mode=ceil)
    if pads[:k] != pads[k:]:
        raise NotImplementedError("AveragePool with asymmetric pads")
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
    return fn(a[0], kernel, strides, pads[:k], ceil_mode=ceil,
              count_include_pad=bool(attr(node, "count_include_pad") or 0))


def _gemm(torch, node, a):
    x = a[0].t() if attr(node, "transA") else a[0]
    w = a[1].t() if attr(node, "transB") else a[1]
    alpha, beta = attr(node, "alpha"), attr(node, "beta")
    y = (1.0 if alpha is None else alpha) * (x @ w)
    return y + (1.0 if beta is None else beta) * a[2] if len(a) > 2 and a[2] is not None else y


def _clip(torch, node, a):
    low = a[1] if len(a) > 1 and a[1] is not None else attr(node, "min")
    high = a[2] if len(a) > 2 and a[2] is not None else attr(node, "max")
    return torch.clamp(a[0], None if low is None else float(low), None if high is None else float(high))


def _reshape(torch, node, a):
    shape = _ints(a[1])
    if not attr(node, "allowzero"):
        shape = [a[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return a[0].reshape(shape)


def _reduce(torch, node, a, fn):
    axes = _axes(node, a)
    keep = bool(1 if attr(node, "keepdims") is None else attr(node, "keepdims"))
    if not axes:
        if attr(node, "noop_with_empty_axes"):
            return a[0]
        axes = list(range(a[0].dim()))
    return fn(a[0], dim=axes, keepdim=keep)


def _squeeze(torch, node, a):
    axes = _axes(node, a)
    return a[0].squeeze() if axes is None else a[0].squeeze([ax % a[0].dim() for ax in axes])


def _unsqueeze(torch, node, a):
    y = a[0]
    rank = y.dim() + len(_axes(node, a))
    for ax in sorted(ax % rank for ax in _axes(node, a)):
        y = y.unsqueeze(ax)
    return y


def _split(torch, node, a):
    axis = attr(node, "axis") or 0
    sizes = attr(node, "split")
    if sizes is None and len(a) > 1 and a[1] is not None:
        sizes = _ints(a[1])
    if sizes is None:
        parts = attr(node, "num_outputs") or len(node.output)
        sizes = [a[0].shape[axis] // parts] * parts
    return tuple(torch.split(a[0], list(sizes), dim=axis))


def _slice(torch, node, a):
    starts, ends = _ints(a[1]), _ints(a[2])
    axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = _ints(a[4]) if len(a) > 4 and a[4] is not None else [1] * len(starts)
    index = [slice(None)] * a[0].dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise NotImplementedError("Slice with a negative step")
        n = a[0].shape[ax]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[ax] = slice(s, e, st)
    return a[0][tuple(index)]


def _hard_sigmoid(torch, node, a):
    alpha = attr(node, "alpha")
    beta = attr(node, "beta")
    return torch.clamp(a[0] * (0.2 if alpha is None else alpha) + (0.5 if beta is None else beta), 0.0, 1.0)


def _leaky(torch, node, a):
    alpha = attr(node, "alpha")
    return torch.nn.functional.leaky_relu(a[0], 0.01 if alpha is None else alpha)


def _softmax(torch, node, a):
    axis = attr(node, "axis")
    return torch.softmax(a[0], -1 if axis is None else axis)


def _flatten(torch, node, a):
    axis = attr(node, "axis")
    axis = 1 if axis is None else axis % a[0].dim() if axis < 0 else axis
    return a[0].reshape(int(np.prod(a[0].shape[:axis], dtype=np.int64)), -1)


def _transpose(torch, node, a):
    perm = attr(node, "perm")
    return a[0].permute(list(perm) if perm is not None else list(reversed(range(a[0].dim()))))


KERNELS = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "MatMul": lambda torch, node, a: a[0] @ a[1],
    "Relu": lambda torch, node, a: torch.relu(a[0]),
    "LeakyRelu": _leaky,
    "PRelu": lambda torch, node, a: torch.where(a[0] >= 0, a[0], a[0] * a[1]),
    "Sigmoid": lambda torch, node, a: torch.sigmoid(a[0]),
    "Tanh": lambda torch, node, a: torch.tanh(a[0]),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda torch, node, a: a[0] * torch.clamp(a[0] / 6 + 0.5, 0.0, 1.0),
    "Clip": _clip,
    "Erf": lambda torch, node, a: torch.erf(a[0]),
    "Add": lambda torch, node, a: a[0] + a[1],
    "Sub": lambda torch, node, a: a[0] - a[1],
    "Mul": lambda torch, node, a: a[0] * a[1],
    "Div": lambda torch, node, a: a[0] / a[1],
    "Pow": lambda torch, node, a: a[0] ** a[1],
    "Sqrt": lambda torch, node, a: torch.sqrt(a[0]),
    "Softmax": _softmax,
    "MaxPool": lambda torch, node, a: _pool(torch, node, a, "max"),
    "AveragePool": lambda torch, node, a: _pool(torch, node, a, "average"),
    "GlobalAveragePool": lambda torch, node, a: a[0].mean(list(range(2, a[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda torch, node, a: a[0].amax(list(range(2, a[0].dim())), keepdim=True),
    "ReduceMean": lambda torch, node, a: _reduce(torch, node, a, torch.mean),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda torch, node, a: torch.cat([t for t in a if t is not None], dim=attr(node, "axis")),
    "Split": _split,
    "Slice": _slice,
    "Identity": lambda torch, node, a: a[0],
    "Dropout": lambda torch, node, a: a[0],
}
