"""The FTWT dynamic model as an ONNX graph (docs/methods.md §3): every gated layer
(onnxprune/ftwt.py) gets a decision head

    global average pooling of the layer's input -> Gemm -> Greater 0 -> Cast -> Mul

that multiplies a 0/1 channel mask into the activation the next layers read. The backbone
is frozen: each head is a multi-label logistic regression from the pooled input to the
heat-map-mass masks at r, fitted by L-BFGS on the calibration data, layer by layer in graph
order, each on activations computed with the heads before it in place (so it learns the
inputs it will really see). A logit above 0 is a probability above 1/2.

The gated graph still computes every channel and then multiplies by the mask, so it runs
no faster than the original: it measures what the dynamic model keeps and costs, it does
not deliver the saving (benchmarks/RESULTS.md, FTWT section)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from scipy.optimize import minimize
from scipy.special import expit

from .ftwt import GatedLayer
from .graph import replace_nodes
from .saliency.data import CalibrationData, stream_original
from .saliency.heatmap import MassRanking

# L2 weight on the standardised head weights: keeps a channel that is kept on every sample
# (all labels 1) at a finite bias instead of letting it grow without end
L2 = 1e-3
MAX_ITERATIONS = 500


@dataclass
class Head:
    layer: GatedLayer
    mask: str              # tensor holding the (samples, channels) 0/1 mask
    macs: int              # multiply-accumulates of its Gemm
    agreement: float       # fraction of calibration mask entries it predicts right
    target_kept: float     # fraction of channels the mass masks keep on the calibration data
    predicted_kept: float  # fraction it keeps there


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label logistic regression: (weight (labels, features), bias (labels,)) with
    logits x @ weight.T + bias. Features are standardised for the fit and the scaling is
    folded back into the weights."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    n, k = y.shape

    def loss(theta):
        t = theta.reshape(z.shape[1], k)
        logits = z @ t
        value = (np.logaddexp(0, logits) - y * logits).sum() / (n * k) + l2 / 2 * (t ** 2).sum()
        grad = z.T @ (expit(logits) - y) / (n * k) + l2 * t
        return value, grad.ravel()

    result = minimize(loss, np.zeros(z.shape[1] * k), jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITERATIONS})
    t = result.x.reshape(z.shape[1], k)
    weight = t[:-1] / std[:, None]
    return weight.T, t[-1] - mean @ weight


def pooled(x: np.ndarray) -> np.ndarray:
    """Global average over the positions after the channel axis: (samples, channels)."""
    return x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)


def fit_gates(model, layers: list[GatedLayer], data: CalibrationData, mass: float):
    """A copy of `model` with a fitted decision head on every layer: (gated Model, heads)."""
    gated, heads = model.copy(), []
    for layer in layers:
        head_input = gated.index().nodes[layer.feed_in].input[0]   # gated upstream: the Mul's output
        values = collect(gated, [head_input, layer.tensor], data)
        x = pooled(values[head_input])
        width = len(layer.classes)
        y = MassRanking.of(values[layer.tensor], 1, np.arange(width), width).keep(mass)
        weight, bias = fit_logistic(x, y)
        predicted = x @ weight.T + bias > 0
        mask = insert_gate(gated, layer, head_input, weight, bias)
        heads.append(Head(layer, mask, int(weight.size), float((predicted == y).mean()),
                          float(y.mean()), float(predicted.mean())))
    return gated, heads


def collect(model, tensors: list[str], data: CalibrationData) -> dict[str, np.ndarray]:
    """The tensors' values over all calibration samples."""
    parts: dict[str, list] = {t: [] for t in tensors}
    stream_original(model, tensors, data, lambda values: [parts[t].append(values[t]) for t in tensors])
    return {t: np.concatenate(v) for t, v in parts.items()}


def predicted_masks(gated, heads: list[Head], data: CalibrationData) -> list[np.ndarray]:
    """Each head's (samples, channels) mask on `data`."""
    values = collect(gated, [h.mask for h in heads], data)
    return [values[h.mask] > 0.5 for h in heads]


def insert_gate(model, layer: GatedLayer, head_input: str, weight: np.ndarray, bias: np.ndarray) -> str:
    """Insert the head of `layer` after the node writing its tensor and make every reader of
    that tensor read the masked one. Returns the name of the mask tensor."""
    dtype = _float_type(model, layer.feed_in)
    prefix = f"{layer.feed_in}/ftwt_gate"
    k, shape = weight.shape[0], model.shapes[layer.tensor]
    batch = shape[0]
    model.inits.update({f"{prefix}/weight": weight.astype(np.float32), f"{prefix}/bias": bias.astype(np.float32),
                        f"{prefix}/zero": np.zeros((), np.float32),
                        f"{prefix}/shape": np.array([0, k] + [1] * (layer.rank - 2), np.int64)})
    nodes, features = [], head_input
    if len(model.shapes[head_input]) > 2:
        nodes += [_node("GlobalAveragePool", [head_input], f"{prefix}/pool"),
                  _node("Flatten", [f"{prefix}/pool"], f"{prefix}/features", axis=1)]
        features = f"{prefix}/features"
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes += [_node("Cast", [features], f"{prefix}/features32", to=onnx.TensorProto.FLOAT),
              _node("Gemm", [f"{prefix}/features32", f"{prefix}/weight", f"{prefix}/bias"], f"{prefix}/logits",
                    transB=1),
              _node("Greater", [f"{prefix}/logits", f"{prefix}/zero"], f"{prefix}/on"),
              _node("Cast", [f"{prefix}/on"], f"{prefix}/mask", to=elem),
              _node("Reshape", [f"{prefix}/mask", f"{prefix}/shape"], f"{prefix}/mask_nd"),
              _node("Mul", [layer.tensor, f"{prefix}/mask_nd"], f"{prefix}/gated")]
    gated = f"{prefix}/gated"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == layer.tensor:
                node.input[i] = gated
    after = next(i for i, n in enumerate(model.graph.node) if layer.tensor in n.output)
    existing = list(model.graph.node)
    replace_nodes(model.graph, existing[:after + 1] + nodes + existing[after + 1:])
    c = model.shapes[head_input][1]
    model.shapes.update({f"{prefix}/pool": (batch, c, 1, 1), f"{prefix}/features": (batch, c),
                         f"{prefix}/features32": (batch, c), f"{prefix}/logits": (batch, k),
                         f"{prefix}/on": (batch, k), f"{prefix}/mask": (batch, k),
                         f"{prefix}/mask_nd": (batch, k) + (1,) * (layer.rank - 2), gated: shape})
    model.touch()
    return f"{prefix}/mask"


def _node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return onnx.helper.make_node(op, inputs, [output], name=output, **attrs)


def _float_type(model, feed_in: str):
    """The element type of the gated activation: that of the weight of the layer writing it."""
    weight = model.inits.get(model.index().nodes[feed_in].input[1])
    return weight.dtype if weight is not None and weight.dtype.kind == "f" else np.float32


@dataclass
class Gated:
    """A fitted gated model and what it costs: `dynamic_macs` is the expected MACs fraction
    of the dynamic model its heads' masks describe, heads included (`head_macs`), on
    `measured_on`; `fidelity` against the original on held-out data, when given."""
    model: object
    heads: list[Head]
    mass: float
    dynamic_macs: float
    head_macs: float
    measured_on: str
    fidelity: object = None

    def to_dict(self) -> dict:
        return {"mass": self.mass, "dynamic_macs": round(self.dynamic_macs, 4), "head_macs": round(self.head_macs, 5),
                "measured_on": self.measured_on,
                "heads": [{"feed_in": h.layer.feed_in, "agreement": round(h.agreement, 4),
                           "target_kept": round(h.target_kept, 4), "predicted_kept": round(h.predicted_kept, 4)}
                          for h in self.heads],
                "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None}

    def summary(self) -> str:
        return (f"gated model: r = {self.mass:.4g}, {len(self.heads)} decision head(s) ({self.head_macs:.2%} of the "
                f"MACs), expected dynamic MACs {self.dynamic_macs:.4f} of the original's on {self.measured_on}; it "
                "computes every channel and multiplies by the mask, so it runs no faster than the original")


def emit_gated(estimator, calib, mass: float, held=None) -> Gated:
    """Fit the heads of `estimator`'s layers on the CalibrationSet `calib` at threshold
    `mass`; measure the dynamic MACs (and, with `held`, the fidelity) on `held`, else on
    `calib`."""
    from .fidelity import compare_models
    from .recover import batches_of
    model = estimator.model
    gated, heads = fit_gates(model, estimator.layers, CalibrationData(batches_of(model, calib), len(calib)), mass)
    on = held if held is not None else calib
    masks = predicted_masks(gated, heads, CalibrationData(batches_of(model, on), len(on)))
    head_macs = sum(h.macs for h in heads) / estimator.tracker.macs0
    fidelity = compare_models(model, gated, held, labels=held.labels) if held is not None else None
    where = f"{len(on)} {'held-out' if held is not None else 'calibration'} sample(s)"
    return Gated(gated, heads, mass, estimator.dynamic_macs(masks) + head_macs, head_macs, where, fidelity)
