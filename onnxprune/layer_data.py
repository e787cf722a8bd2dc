"""What the recovery passes read and write of one layer (docs/methods.md §5).

A *refit target* is a layer with a constant weight (Conv, Gemm, MatMul) whose input lost
channels: its output drifted from the original's. For such a layer this module gives
  - the rows of its linear map: `rows(node, x)` turns the layer's input into a matrix
    whose rows are what one output position reads (im2col patches for a convolution, per
    conv group; feature vectors for Gemm / MatMul), and `out_rows` the matching rows of
    an output tensor, so that output = rows @ W_mat + bias;
  - its weight as such a matrix (`weight_matrix`) and back (`set_weight_matrix`), and its
    bias (`bias`, `set_bias`, creating one where the layer can take it).
Streaming accumulators (moments and Gram matrices) and the runner that feeds calibration
batches through the original and the pruned model side by side live here too, so every
pass accumulates batch by batch and never keeps all activations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .channels import FEED_OUT
from .graph import attr, replace_nodes, set_attr, subgraph_reads
from .residual import changed_readers
from .runtime import fixed_batch, model_session, run_chunked

REFITTABLE = ("Conv", "Gemm", "MatMul")
MAX_POSITIONS = 256     # output positions per sample entering the statistics
MAC_BUDGET = 1e12       # multiply-accumulates the chunks of one pass may spend running both models
SYSTEM_BYTES = 1 << 30  # what the accumulators of one chunk may hold (a layer over it gets a chunk alone)
STREAM_BYTES = 256 << 20  # requested tensors of one onnxruntime run: bigger batches are split


def refit_targets(slim, couplings, kept) -> list[str]:
    """Layers whose input lost channels, or (independent residual branches) whose kept input
    channels lost a branch's contribution, in graph (topological) order."""
    hit = {s.node for s in couplings.slices if s.role == FEED_OUT and not kept(s.ids).all()}
    hit |= changed_readers(couplings, kept)
    out = []
    for n in slim.graph.node:
        if n.name in hit and n.op_type in REFITTABLE and len(n.input) > 1 and n.input[1] in slim.inits:
            if n.op_type == "Gemm" and attr(n, "transA", 0):
                continue
            if n.op_type == "MatMul" and slim.inits[n.input[1]].ndim != 2:
                continue
            out.append(n.name)
    return out


def refit_chunks(slim, targets: list[str], samples: int, nbytes=None) -> list[list[str]]:
    """Targets in graph order, cut into chunks; each chunk costs one run of both models over
    the calibration data. One chunk per layer (each sees every earlier refit) while the
    budget allows; fewer, larger chunks for big models. `nbytes(target)`, when given, is
    what the target's accumulators hold: a chunk is cut further so that its targets
    together stay under SYSTEM_BYTES."""
    from .cost import cost
    per_run = 2 * max(cost(slim).macs, 1) * max(samples, 1)
    n = max(1, min(len(targets), int(MAC_BUDGET // per_run)))
    size = -(-len(targets) // n)
    chunks = [targets[i:i + size] for i in range(0, len(targets), size)]
    return chunks if nbytes is None else [c for chunk in chunks for c in _split_by_bytes(chunk, nbytes)]


def _split_by_bytes(chunk: list[str], nbytes) -> list[list[str]]:
    out, held = [[]], 0
    for t in chunk:
        b = nbytes(t)
        if out[-1] and held + b > SYSTEM_BYTES:
            out.append([])
            held = 0
        out[-1].append(t)
        held += b
    return out


def kept_outputs(couplings, kept, node, y: np.ndarray) -> np.ndarray:
    """The original layer's output `y` restricted to the output channels the pruned layer
    kept (its own filters may have been removed too)."""
    producer = next((p for p in couplings.producers if p.node == node.name), None)
    if producer is None:
        return y
    mask = kept(producer.ids)
    return y if mask.all() else np.compress(mask, y, axis=output_axis(node, y.ndim))


def output_axis(node, rank: int) -> int:
    return 1 if node.op_type == "Conv" else rank - 1


def removed_inputs(couplings, kept) -> dict[str, np.ndarray]:
    """Layer -> removed mask over the weight's input axis (per conv group)."""
    out = {}
    for s in couplings.slices:
        if s.role == FEED_OUT:
            mask = kept(s.ids)
            if not mask.all():
                out[s.node] = ~mask
    return out


def input_columns(node, w, removed: np.ndarray) -> np.ndarray:
    """Rows of the weight matrix that read removed inputs: every kernel tap of a removed
    channel for a Conv (columns are channel-major), the removed features for Gemm."""
    if node.op_type == "Conv":
        taps = int(np.prod(w.shape[2:]))
        return np.repeat(removed, taps)
    return removed


# -- the layer as a matrix ---------------------------------------------------------------
def groups_of(node) -> int:
    return attr(node, "group", 1) if node.op_type == "Conv" else 1


def weight_matrix(node, w: np.ndarray, g: int = 0) -> np.ndarray:
    """(inputs read, outputs) of conv group g: output = rows @ this."""
    if node.op_type == "Conv":
        groups = groups_of(node)
        per = w.shape[0] // groups
        return w[g * per:(g + 1) * per].reshape(per, -1).T
    if node.op_type == "Gemm":
        m = w.T if attr(node, "transB", 0) else w
        return m * attr(node, "alpha", 1.0)
    return w


def set_weight_matrix(node, w: np.ndarray, g: int, mat: np.ndarray) -> np.ndarray:
    """The weight array with conv group g (or the whole matrix) replaced by `mat`."""
    if node.op_type == "Conv":
        out = np.array(w, copy=True)
        per = w.shape[0] // groups_of(node)
        out[g * per:(g + 1) * per] = mat.T.reshape((per,) + w.shape[1:])
        return out
    if node.op_type == "Gemm":
        mat = mat / attr(node, "alpha", 1.0)
        return np.ascontiguousarray(mat.T if attr(node, "transB", 0) else mat)
    return np.ascontiguousarray(mat)


def bias(model, node, width: int) -> np.ndarray:
    """The per-output-channel constant the layer adds (zeros when it has none)."""
    if node.op_type == "MatMul" or len(node.input) < 3 or not node.input[2]:
        return np.zeros(width)
    b = np.asarray(model.inits[node.input[2]], dtype=np.float64)
    if node.op_type == "Gemm":
        b = b * attr(node, "beta", 1.0)
    return np.broadcast_to(b.reshape(-1), (width,)).copy() if b.size in (1, width) else None


def can_take_bias(node) -> bool:
    return node.op_type in ("Conv", "Gemm")


def set_bias(model, node, value: np.ndarray, dtype) -> None:
    name = f"{node.name}__bias_recovered"
    model.inits[name] = np.asarray(value, dtype=dtype)
    model.shapes[name] = model.inits[name].shape
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    if node.op_type == "Gemm":
        set_attr(node, "beta", 1.0)


def set_weight(model, node, value: np.ndarray) -> None:
    """A private copy: the original weight may be shared with other layers."""
    name = f"{node.name}__weight_recovered"
    model.inits[name] = np.asarray(value, dtype=model.inits[node.input[1]].dtype)
    model.shapes[name] = model.inits[name].shape
    node.input[1] = name


# -- rows ----------------------------------------------------------------------------------
ROWS_PER_UNKNOWN = 32  # rows per unknown of a layer's least squares: cost grows with rows x dim², the fit's noise falls as 1/rows
MIN_ROWS = 16384       # below this many rows a layer's statistics are cheap: no reason to thin them


def positions_per_sample(dim: int, samples: int) -> int:
    """Output positions per sample for a layer with `dim` inputs per output: ROWS_PER_UNKNOWN
    rows per unknown over the calibration set (at least MIN_ROWS rows), at most MAX_POSITIONS."""
    want = max(ROWS_PER_UNKNOWN * (dim + 1), MIN_ROWS)
    return int(min(MAX_POSITIONS, max(1, -(-want // max(samples, 1)))))


@dataclass
class Positions:
    """Which output positions of a batch enter the statistics (a random subset when a map
    has many: least squares needs rows, not every pixel)."""
    limit: int
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def pick(self, n_positions: int, limit: int | None = None) -> np.ndarray | None:
        limit = self.limit if limit is None else limit
        if n_positions <= limit:
            return None
        return np.sort(self.rng.choice(n_positions, limit, replace=False))


def rows(node, x: np.ndarray, w_shape, g: int, picked) -> np.ndarray:
    """(samples x positions, inputs read by conv group g) for a Conv; feature rows otherwise.
    `picked` output positions only (all when None): patches are gathered there alone, before
    any conversion. float32 (float64 for a float64 model): the products are summed in
    float64 by the accumulators, batch by batch."""
    if node.op_type != "Conv":
        if picked is not None:
            x = x.reshape(x.shape[0], -1, x.shape[-1])[:, picked]
        return _work(x.reshape(-1, x.shape[-1]))
    groups = groups_of(node)
    per_in = x.shape[1] // groups
    patches = _patches(node, x[:, g * per_in:(g + 1) * per_in], w_shape[2:], picked)   # (N, C, taps, P)
    n, c, taps, p = patches.shape
    return _work(patches.reshape(n, c * taps, p).transpose(0, 2, 1).reshape(-1, c * taps))


def out_rows(node, y: np.ndarray, g: int, picked) -> np.ndarray:
    """Rows of a layer output matching `rows` (conv group g's output channels)."""
    if node.op_type != "Conv":
        if picked is not None:
            y = y.reshape(y.shape[0], -1, y.shape[-1])[:, picked]
        return _work(y.reshape(-1, y.shape[-1]))
    per = y.shape[1] // groups_of(node)
    y = y[:, g * per:(g + 1) * per].reshape(y.shape[0], per, -1)
    if picked is not None:
        y = y[..., picked]
    return _work(y.transpose(0, 2, 1).reshape(-1, per))


def _work(a: np.ndarray) -> np.ndarray:
    """float16 (and integer) rows become float32; float32 and float64 stay."""
    return np.ascontiguousarray(a, dtype=np.promote_types(a.dtype, np.float32))


def n_positions(node, y_shape) -> int:
    return int(np.prod(y_shape[2:])) if node.op_type == "Conv" else int(np.prod(y_shape[1:-1]))


def _patches(node, x, kernel, picked) -> np.ndarray:
    """im2col: (N, C, taps, positions) for the conv's strides, pads and dilations, at the
    `picked` output positions (flat indices) or all of them."""
    nd = len(kernel)
    strides = attr(node, "strides", [1] * nd)
    dilations = attr(node, "dilations", [1] * nd)
    pads = list(attr(node, "pads", [0] * (2 * nd)))
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for d in range(nd):
            out = -(-x.shape[2 + d] // strides[d])
            total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - x.shape[2 + d])
            pads[d] = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[d + nd] = total - pads[d]
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[d], pads[d + nd]) for d in range(nd)])
    out_size = [(x.shape[2 + d] - (kernel[d] - 1) * dilations[d] - 1) // strides[d] + 1 for d in range(nd)]
    flat = np.arange(int(np.prod(out_size))) if picked is None else picked
    coords = np.unravel_index(flat, out_size)
    taps = []
    for tap in np.ndindex(*kernel):
        index = tuple(c * s + t * dl for c, s, t, dl in zip(coords, strides, tap, dilations))
        taps.append(x[(slice(None), slice(None)) + index])
    return np.stack(taps, axis=2)


# -- streaming -----------------------------------------------------------------------------
class Moments:
    """Per-channel count, sum and sum of squares, accumulated batch by batch."""

    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, rows_: np.ndarray) -> None:
        rows_ = rows_.astype(np.float64, copy=False)   # sums of many float32 values
        self.n += rows_.shape[0]
        self.s = self.s + rows_.sum(axis=0)
        self.ss = self.ss + np.einsum("ij,ij->j", rows_, rows_)

    @property
    def mean(self) -> np.ndarray:
        return self.s / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.ss / max(self.n, 1) - self.mean ** 2, 0.0))


def channel_rows(y: np.ndarray, axis: int) -> np.ndarray:
    """(samples x positions, channels) view of a tensor whose channels are on `axis`."""
    return np.moveaxis(y.astype(np.float64, copy=False), axis, -1).reshape(-1, y.shape[axis])


def stream_pair(slim, original, slim_tensors, original_tensors, batches, consume) -> None:
    """Run calibration batches through both models, handing the requested tensors to
    `consume(slim_values, original_values)`; only one batch is in memory at a time. A batch
    whose requested tensors would outgrow STREAM_BYTES (dozens of full-resolution maps of a
    big network) runs in smaller parts, sized after the first sample. Models whose batch
    size is fixed (often 1) run parts of that size."""
    s1 = _session_up_to(slim, slim_tensors) if slim_tensors else None
    s0 = _session_up_to(original, original_tensors) if original_tensors else None
    # a fixed batch size: one run each (no copies to join); otherwise sized after the first sample
    per_run = next((fixed_batch(s) for s in (s1, s0) if s is not None and fixed_batch(s)), None)
    s1, s0 = (_named_runner(s) if s is not None else None for s in (s1, s0))
    for feeds in batches():
        n, start = _samples(feeds), 0
        while start < n:
            part = {k: v[start:start + (per_run or 1)] for k, v in feeds.items()}
            values = (s1(part) if s1 is not None else {}, s0(part) if s0 is not None else {})
            start += _samples(part)
            if per_run is None:
                held = sum(v.nbytes for d in values for v in d.values() if v is not None)
                per_run = max(1, int(STREAM_BYTES // max(held / _samples(part), 1)))
            consume(*values)


def _samples(feeds) -> int:
    return len(next(iter(feeds.values())))


def _session_up_to(model, tensors):
    """A session that computes only what `tensors` depend on: a layer in the first half of
    a network costs half a forward pass, not a whole one."""
    import onnx
    wanted = sorted(set(tensors))
    needed, keep = set(wanted), []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(t for t in node.input if t)
            needed |= subgraph_reads(node)
    part = model.copy()
    replace_nodes(part.graph, reversed(keep))
    del part.graph.output[:]
    part.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted)
    return model_session(part, optimize=True)   # calibration runs many batches: worth the layout work


def _named_runner(sess):
    names, k = [o.name for o in sess.get_outputs()], fixed_batch(sess)
    return lambda feeds: dict(zip(names, run_chunked(sess, feeds, k)))
