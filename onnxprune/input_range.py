"""The input normalisation of an image model, read from its first BatchNormalization
(docs/methods.md §5.7): what `--calib synthetic` needs when the user does not say it.

A BN's running statistics are the per-channel mean and variance its input had on the
training data. When the path from the image input to the first BN is affine (Conv, Pad,
Sub/Mul/Div by constants, ...: checked numerically, not assumed), the BN's input for
synthetic pixels p in [0, 1] mapped to x = a·p + b_k (k the colour channel) is

    y(a, b) = a·L(p) + Σ_k b_k·L(e_k) + f(0),    L(v) = f(v) - f(0),

so its per-channel mean and variance are low-order polynomials in (a, b) whose
coefficients are measured once on the synthetic images. (a, b) is the least-squares fit
of those moments to the running statistics (log-variances and means in units of the
running standard deviation), i.e. the normalisation under which synthetic images look,
to the first layer, as the training data did. The result is a `Preprocess` with
mean_k = -b_k / a and std = 1 / a, exactly what the user would have typed.

Nothing here runs without BN statistics: a BN-folded export keeps no trace of its input
range, and the caller falls back to pixels in [0, 1] and says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .images import Preprocess
from .runtime import fixed_batch, run_chunked, session_from_parts

FIT_SAMPLES = 64
AFFINE_TOLERANCE = 1e-3   # relative: f(2p) - f(0) against 2·(f(p) - f(0))
MAX_STD_ERROR = 0.5       # median relative error of the fitted channel stds above this: no fit


@dataclass(frozen=True)
class RangeFit:
    preprocess: Preprocess     # what the synthetic pixels go through
    batch_norm: str            # the BN whose statistics were matched
    std_error: float           # median relative error of the channel stds after the fit
    convention: str | None     # the common normalisation the fit was close to, if any
    fit_mean: tuple
    fit_std: float

    def describe(self) -> str:
        fitted = (f"(p - [{', '.join(f'{m:.3g}' for m in self.fit_mean)}]) / {self.fit_std:.3g} fitted to "
                  f"BatchNormalization '{self.batch_norm}' (channel stds within {100 * self.std_error:.0f} %)")
        if self.convention:
            return f"input normalisation: {self.convention}, the convention nearest {fitted}"
        return f"input normalisation: pixels p in [0, 1] -> {fitted}"


def fit_input_range(model, name: str, pixels: np.ndarray, channel_axis: int) -> RangeFit | None:
    """The normalisation of input `name` matching the first BN's statistics, or None when
    there is no BN, the path to it is not affine, or the fit is poor. `pixels`: synthetic
    images in [0, 1] in the model's layout."""
    bn = _first_batch_norm(model, name)
    if bn is None:
        return None
    target = bn.input[0]
    sess = session_from_parts(_prefix_graph(model, target), model.inits, model.opset_imports,
                              model.ir_version, optimize=False)

    dtype = next(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                 for i in model.graph.input if i.name == name)
    batch = fixed_batch(sess)

    def f(x):
        return run_chunked(sess, {name: x.astype(dtype)}, batch)[0].astype(np.float64)

    pixels = pixels[:FIT_SAMPLES]
    zero = np.zeros_like(pixels[:1])
    f0 = f(zero)
    lp = f(pixels) - f0
    if not _is_affine(f(2 * pixels[:4]) - f0, 2 * lp[:4]):
        return None
    units = []
    for k in range(pixels.shape[channel_axis]):
        e = zero.copy()
        np.moveaxis(e, channel_axis, 0)[k] = 1.0
        units.append(f(e) - f0)
    stats = [np.asarray(model.inits.get(t), dtype=np.float64) if t in model.inits else None for t in bn.input[3:5]]
    if len(stats) < 2 or any(s is None for s in stats):
        return None
    a, b, err = _fit(lp, units, f0, stats[0], stats[1])
    if a is None or err > MAX_STD_ERROR:
        return None
    mean, std = tuple(float(-bk / a) for bk in b), float(1 / a)
    convention = _nearest_convention(mean, std)
    pre = Preprocess(scale=1.0, mean=convention[1] if convention else mean,
                     std=convention[2] if convention else (std,))
    return RangeFit(pre, bn.name or bn.output[0], err, convention[0] if convention else None, mean, std)


# Normalisations exporters' users commonly train with, as (name, mean, std) of pixels in [0, 1].
# A fit close to one of them is taken to be it: the BN statistics pin the first two moments of
# the training inputs, not the shape of their distribution (sparse strokes on black give a
# darker, lower-contrast fit than the [0, 1] the model was trained on), and the convention is
# exact where the fit is not.
CONVENTIONS = (
    ("pixels in [0, 1]", (0.0,), (1.0,)),
    ("pixels in [-1, 1]", (0.5,), (0.5,)),
    ("ImageNet mean/std", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("pixels in [0, 255]", (0.0,), (1 / 255,)),
    ("pixels in [0, 255] less the ImageNet mean", (0.485, 0.456, 0.406), (1 / 255,)),
)
NEAR_MEAN = 0.2              # in pixel units (of [0, 1])
NEAR_STD = np.log(1.25)      # |log ratio| of the stds


def _nearest_convention(mean, std):
    best, best_d = None, np.inf
    for name, c_mean, c_std in CONVENTIONS:
        if len(c_mean) not in (1, len(mean)):   # a colour convention for a grey input
            continue
        channels = len(mean)
        d_mean = float(np.max(np.abs(np.resize(mean, channels) - np.resize(c_mean, channels))))
        d_std = float(np.max(np.abs(np.log(std / np.asarray(c_std)))))
        if d_mean <= NEAR_MEAN and d_std <= NEAR_STD and d_mean / NEAR_MEAN + d_std / NEAR_STD < best_d:
            best, best_d = (name, c_mean, c_std), d_mean / NEAR_MEAN + d_std / NEAR_STD
    return best


def _first_batch_norm(model, name: str):
    """The first BN (in graph order) that reads a tensor computed from input `name`."""
    reached = {name}
    for node in model.graph.node:
        if any(t in reached for t in node.input):
            if node.op_type == "BatchNormalization":
                return node if node.input[0] in reached else None
            reached.update(t for t in node.output if t)
    return None


def _prefix_graph(model, target: str):
    """A copy of the graph with only the nodes `target` depends on, and `target` as output."""
    producers = model.index().producers
    needed, todo = set(), [target]
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo.extend(t for t in node.input if t)
    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    del g.node[:]
    g.node.extend(n for n in model.graph.node if id(n) in needed)
    del g.output[:]
    g.output.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    return g


def _is_affine(got: np.ndarray, expected: np.ndarray) -> bool:
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(got - expected).max()) <= AFFINE_TOLERANCE * scale


def _fit(lp, units, f0, running_mean, running_var):
    """(a, b, median relative std error) from the moment polynomials; a > 0."""
    from scipy.optimize import least_squares
    axes = (0,) + tuple(range(2, lp.ndim))   # everything but the channel axis 1
    terms = [lp] + units + [np.broadcast_to(f0, lp.shape)]   # y = a·t0 + Σ b_k t_k + t_last
    mean = np.stack([t.mean(axis=axes) for t in terms])                        # (T, C)
    second = np.stack([[(ti * tj).mean(axis=axes) for tj in terms] for ti in terms])   # (T, T, C)
    sd = np.sqrt(np.maximum(running_var, 1e-12))

    def moments(params):
        coef = np.concatenate([params, [1.0]])
        m = coef @ mean
        v = np.einsum("i,j,ijc->c", coef, coef, second) - m ** 2
        return m, np.maximum(v, 1e-24)

    def residuals(params):
        m, v = moments(params)
        return np.concatenate([0.5 * np.log(v / sd ** 2), (m - running_mean) / sd])

    var_p = np.maximum(second[0, 0] - mean[0] ** 2, 1e-24)
    a0 = float(np.exp(np.median(0.5 * np.log(sd ** 2 / var_p))))
    start = np.concatenate([[a0], np.zeros(len(units))])
    solved = least_squares(residuals, start, method="lm" if 2 * len(sd) >= len(start) else "trf")
    a = float(solved.x[0])
    if not np.isfinite(solved.x).all() or a <= 0:
        return None, None, np.inf
    _, v = moments(solved.x)
    return a, solved.x[1:], float(np.median(np.abs(np.sqrt(v) / sd - 1)))
