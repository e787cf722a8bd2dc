"""A measured latency model for `--target-latency` (docs/methods.md §6): per convolution,
its onnxruntime latency as a function of its kept widths, measured, not guessed from MACs.

Each convolution that reads or writes prunable channels is timed in isolation: a one-node
model at its input shape (batch as given), built with onnx.helper, with one width changed
at a time (the input width, the output width, or the one width of a depthwise conv) on a
few widths — the multiples of the rounding step at 3/4, 1/2, 1/4 of the width and at the
floor, plus, where the step allows unaligned widths, one unaligned width next to each —
all widths of one layer timed in alternation (NetAdapt's lookup tables). Between measured
widths the latency is interpolated linearly; a layer with both widths changed is predicted
as T_full · (T_in(c_in) / T_full) · (T_out(c_out) / T_full).

Measurements are cached in a JSON file keyed by the machine's CPU, the provider, the
onnxruntime version, threads and batch, then by the layer's signature (op, shapes,
attributes) and axis: identical layers (ResNet's repeated blocks) are measured once, and a
second run reads everything from the file."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .budget import class_widths, floor_of, group_round_to, prunable_groups, rounded_keep, default_round_to
from .errors import OnnxPruneError
from .graph import attr

FRACTIONS = (0.75, 0.5, 0.25)
SECONDS_PER_CURVE = 0.25     # timed runs of one layer's widths (alternating), after warm-up
MIN_ROUNDS, MAX_ROUNDS = 7, 50
PERCENTILE = 20
TABLE_FORMAT = 1


@dataclass(frozen=True)
class TimingOptions:
    """Where latency is measured: as deployed (provider, intra-op threads, batch)."""
    provider: str = "cpu"
    threads: int = 1
    batch: int = 1
    warmup: int = 5
    runs: int = 30
    table: str | None = None     # the cache file; None: default_table_path()


def default_table_path() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "onnxprune", "latency_table.json")


def machine_key(options: TimingOptions) -> str:
    import onnxruntime
    return (f"{_cpu_name()} | {options.provider} | onnxruntime {onnxruntime.__version__} | "
            f"threads {options.threads} | batch {options.batch}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class TimedLayer:
    """A convolution, or a MatMul or Gemm with a constant matrix (a transformer's
    projections and MLPs), whose widths the plan changes: `axes` maps 'in', 'out' or 'both'
    (depthwise) to the channel identities along that axis of its weight."""
    node: object
    input_shape: tuple
    axes: dict
    dtype: str
    curves: dict = field(default_factory=dict)   # axis -> (widths, ms), ascending widths

    @property
    def full(self) -> dict:
        return {axis: len(ids) for axis, ids in self.axes.items()}

    def signature(self) -> str:
        n = self.node
        attrs = ",".join(f"{a.name}={list(a.ints) or a.i or a.s.decode()}" for a in sorted(n.attribute,
                                                                                           key=lambda a: a.name))
        x = list(self.input_shape[1:] if n.op_type == "Conv" else self.input_shape)
        return f"{n.op_type} {self.dtype} x={x} widths={self.full} bias={len(n.input) > 2} {attrs}"

    def predict(self, widths: dict) -> float:
        """Milliseconds at kept widths {axis: count} (missing axes whole)."""
        t = self.full_ms()
        for axis, (ws, ms) in self.curves.items():
            t *= float(np.interp(widths.get(axis, self.full[axis]), ws, ms)) / max(ms[-1], 1e-9)
        return t

    def full_ms(self) -> float:
        return float(np.mean([ms[-1] for _, ms in self.curves.values()]))


def timed_layers(model, couplings, classes) -> list[TimedLayer]:
    """The convolutions and constant-matrix MatMul/Gemm layers with a channel of `classes`
    (the prunable ones) on a weight axis."""
    nodes = model.index().nodes
    axes_of: dict[str, dict] = {}
    for s in couplings.slices:
        node = nodes[s.node]
        if s.input != 1 or node.op_type not in ("Conv", "MatMul", "Gemm") or node.input[1] not in model.inits:
            continue
        w = model.inits[node.input[1]]
        if node.op_type != "Conv":
            if w.ndim == 2 and not attr(node, "transA", 0):
                in_axis = 1 if node.op_type == "Gemm" and attr(node, "transB", 0) else 0
                axes_of.setdefault(s.node, {})["in" if s.axis == in_axis else "out"] = np.asarray(s.ids)
            continue
        group = attr(node, "group", 1)
        if group == 1:
            axes_of.setdefault(s.node, {})["in" if s.axis == 1 else "out"] = np.asarray(s.ids)
        elif w.shape[1] == 1 and group == w.shape[0]:   # depthwise, multiplier 1
            axes_of.setdefault(s.node, {})["both"] = np.asarray(s.ids)
    layers = []
    for name, axes in axes_of.items():
        if any(np.isin(couplings.class_of[ids], classes).any() for ids in axes.values()):
            node = nodes[name]
            layers.append(TimedLayer(node, tuple(model.shapes[node.input[0]]), axes,
                                     str(model.inits[node.input[1]].dtype)))
    return layers


def measurement_widths(layer: TimedLayer, couplings, groups, min_keep: float, round_to: int) -> dict:
    """Per axis, the widths to time: the full width and the rounded fractions and floor of
    the group the axis belongs to (for an axis spanning several groups, of its width with
    the coarsest step), plus one unaligned width next to each where the step allows them."""
    widths = class_widths(couplings)
    step_of = {g.index: group_round_to(g, widths, round_to) for g in groups}
    block = default_round_to()
    out = {}
    for axis, ids in layer.axes.items():
        width = len(ids)
        touched = {int(couplings.group_of[c]) for c in np.unique(couplings.class_of[ids])} & set(step_of)
        if not touched:
            continue   # frozen channels only: this width never changes
        step = max((step_of[g] * int(widths.count[couplings.groups[g].classes].max()) for g in touched), default=1)
        floor = floor_of(width, min_keep)
        points = {rounded_keep(max(floor, round(f * width)), width, floor, step) for f in FRACTIONS + (0,)}
        if step % block:
            points |= {p - 1 for p in points if p - 1 >= floor}
        if len(points | {width}) > 1:   # else the rounding keeps it whole
            out[axis] = sorted(points | {width})
    return out


class LatencyTable:
    """The JSON cache: {format, contexts: {machine key: {"signature | axis": {width: ms}}}}."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self.data = {"format": TABLE_FORMAT, "contexts": {}}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                if data.get("format") != TABLE_FORMAT or not isinstance(data.get("contexts"), dict):
                    raise ValueError("unknown format")
            except (OSError, ValueError, AttributeError) as e:
                raise OnnxPruneError(f"--latency-table {path} is not an onnxprune latency table ({e}); "
                                     "give another path or remove it") from None
            self.data = data
        self.entries = self.data["contexts"].setdefault(key, {})

    def get(self, name: str, widths) -> list | None:
        entry = self.entries.get(name)
        if entry is None or not all(str(w) in entry for w in widths):
            return None
        return [float(entry[str(w)]) for w in widths]

    def put(self, name: str, widths, ms) -> None:
        self.entries.setdefault(name, {}).update({str(w): float(t) for w, t in zip(widths, ms)})

    def save(self) -> None:
        from .io import publish_text, stage_text   # temporary file, then rename: never half a table
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        except OSError as e:
            raise OnnxPruneError(f"cannot write --latency-table {self.path}: {e.strerror or e}") from None
        publish_text(stage_text(self.path, json.dumps(self.data, indent=1, sort_keys=True)), self.path)


def measure_layers(model, couplings, min_keep: float, round_to: int, coupled: str,
                   options: TimingOptions) -> tuple[list[TimedLayer], str]:
    """Every timed layer with its curves, from the table or measured (and then saved).
    Returns (layers, a note saying what was measured and what it cost)."""
    start = time.perf_counter()
    groups = prunable_groups(couplings, coupled)
    classes = np.concatenate([g.classes for g in groups]) if groups else np.zeros(0, np.int64)
    layers = timed_layers(model, couplings, classes)
    table = LatencyTable(options.table or default_table_path(), machine_key(options))
    measured, reused, block = 0, 0, default_round_to()
    for layer in layers:
        for axis, widths in measurement_widths(layer, couplings, groups, min_keep, round_to).items():
            name = f"{layer.signature()} | {axis}"
            ms = table.get(name, widths)
            if ms is None:
                ms = time_widths(model, layer, axis, widths, options)
                table.put(name, widths, ms)
                measured += 1
            else:
                reused += 1
            if all(w % block == 0 for w in widths):   # only noise makes a narrower aligned width slower
                ms = nondecreasing(ms)
            layer.curves[axis] = (np.asarray(widths, np.float64), np.asarray(ms, np.float64))
    layers = [layer for layer in layers if layer.curves]
    if measured:
        table.save()
    note = (f"latency table: {len(layers)} layer(s), {measured} width curve(s) measured and "
            f"{reused} reused from {table.path} ({table.key}) in {time.perf_counter() - start:.1f} s")
    return layers, note


def time_widths(model, layer: TimedLayer, axis: str, widths, options: TimingOptions) -> list[float]:
    """Median milliseconds of the layer alone at each width of `axis`, timed in alternation,
    each run as `onnxprune bench` runs a model (I/O binding on a GPU)."""
    from .bench import DEVICES, runner, timing_session
    device = DEVICES[options.provider] if options.provider != "cpu" else None
    runs = []
    for width in widths:
        proto, feeds = _layer_model(model, layer, axis, width, options.batch)
        try:
            runs.append(runner(timing_session(proto, options.provider, options.threads), feeds, device))
        except Exception as e:
            raise OnnxPruneError(f"cannot time {layer.node.name} at width {width}: "
                                 f"{str(e).splitlines()[0][:200]}") from None
    for _ in range(2):
        for run in runs:
            run()
    times = [[] for _ in runs]
    start = time.perf_counter()
    while len(times[0]) < MAX_ROUNDS and (len(times[0]) < MIN_ROUNDS
                                          or time.perf_counter() - start < SECONDS_PER_CURVE):
        for k, run in enumerate(runs):
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    # a low percentile: a busy machine only ever adds time, and the curves are used as ratios
    return [1e3 * float(np.percentile(t, PERCENTILE)) for t in times]


def nondecreasing(values) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators)."""
    blocks = []   # [mean, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]
    return [m for m, n in blocks for _ in range(n)]


def _layer_model(model, layer: TimedLayer, axis: str, width: int, batch: int):
    """A one-layer model, random weights: the layer at its input shape with `axis` cut to
    `width`. (model, feeds)."""
    node = layer.node
    w = model.inits[node.input[1]]
    if node.op_type == "Conv":
        c_out, c_in = (width, w.shape[1]) if axis == "out" else (w.shape[0], width) if axis == "in" else (width, width)
        x_shape = [batch, c_in, *layer.input_shape[2:]]
        w_shape = [c_out, 1 if axis == "both" else c_in, *w.shape[2:]]
        y_shape = [batch, c_out, *model.shapes[node.output[0]][2:]]
        attributes = [a for a in node.attribute if a.name != "group"]
        if axis == "both":
            attributes.append(helper.make_attribute("group", width))
        return _one_node_model(node, w.dtype, x_shape, w_shape, y_shape, c_out, attributes)
    # MatMul or Gemm: rows of the input (the leading axis is the batch, or, for a 2-D input,
    # rows that include it) times the matrix
    trans_b = node.op_type == "Gemm" and attr(node, "transB", 0)
    k, n = (w.shape[1], w.shape[0]) if trans_b else w.shape
    k, n = (width, n) if axis == "in" else (k, width)
    lead = list(layer.input_shape[:-1])
    lead[0] *= batch
    return _one_node_model(node, w.dtype, lead + [k], [n, k] if trans_b else [k, n], lead + [n], n,
                           list(node.attribute))


def _one_node_model(node, dtype, x_shape, w_shape, y_shape, n_out, attributes):
    """x -> node's operator(x, w[, a zero bias of n_out when `node` has one]) -> y, random
    weights, and a random feed."""
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(w_shape).astype(dtype), "w")]
    inputs = ["x", "w"]
    if len(node.input) > 2 and node.input[2]:
        inits.append(onnx.numpy_helper.from_array(np.zeros(n_out, dtype), "b"))
        inputs.append("b")
    layer = helper.make_node(node.op_type, inputs, ["y"], name="layer")
    layer.attribute.extend(attributes)
    graph = helper.make_graph([layer], "layer", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", elem, y_shape)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto, {"x": rng.standard_normal(x_shape).astype(dtype)}
