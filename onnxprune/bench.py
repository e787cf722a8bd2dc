"""Latency of ONNX models in onnxruntime, measured so that two models can be compared.

One implementation behind `onnxprune bench A.onnx B.onnx`, `onnxprune in out --bench`
and benchmarks/latency.py: a session per model (chosen provider, thread count, full
graph optimisation), warm-up runs, then timed runs that alternate between the models
(A B A B ...) so that machine drift hits all of them alike. Reported per model: median,
p10 and p90 in milliseconds, the speedup of each model over the first (median of the
first / median of this one), its MACs (onnxprune's cost model) and the efficiency =
speedup / MAC speedup.

Each session stops its thread pool's spinning as soon as its run returns
(`session.force_spinning_stop`). Without that, in an alternating series the idle pool of
the model that just ran keeps spinning on a core while the next model runs: on a 2-core
machine at 2 threads this took a core from every run and made ResNet-50 at 2 threads
slower than at 1 thread (60 ms against 56 ms; 30 ms with the option), which penalises
the smaller, shorter model most. Spinning during a run is left on (onnxruntime's default).
"""
from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import OnnxPruneError
from .load import dim_names, suggested_dims
from .progress import stage

log = logging.getLogger("onnxprune")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class Timing:
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    speedup: float  # median of the first model / median of this one
    macs: int | None = None        # per sample, from onnxprune's cost model (None if it cannot load)
    efficiency: float | None = None  # speedup / (MACs of the first model / MACs of this one)


def provider_available(provider: str) -> bool:
    import onnxruntime as ort
    return PROVIDERS[provider] in ort.get_available_providers()


def check_options(provider: str = "cpu", threads: int = 1, batch: int = 1, warmup: int = 5,
                  runs: int = 30) -> None:
    """Refuse nonsense before any work: `prune --bench` checks these before pruning."""
    if provider not in PROVIDERS:
        raise OnnxPruneError(f"--provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
    for flag, value, least in (("--threads", threads, 1), ("--batch", batch, 1), ("--warmup", warmup, 0),
                               ("--runs", runs, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise OnnxPruneError(f"{flag} must be an integer >= {least}, got {value!r}")


def require_provider(provider: str) -> None:
    if not provider_available(provider):
        raise OnnxPruneError(f"the {provider} execution provider is not available in this onnxruntime "
                             "build (install onnxruntime-gpu on a machine with a GPU)")


def _with_batch(proto: onnx.ModelProto, batch: int, input_shapes: dict) -> tuple[onnx.ModelProto, dict]:
    """Feeds of the requested batch size; a fixed batch of 1 in the graph input is made
    symbolic so that the same file serves every batch size."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    feeds = {}
    inits = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in input_shapes and any(d.dim_value <= 0 for d in list(dims)[1:]):
            # timing a guessed size (1 × 1 images) would measure nothing useful
            raise OnnxPruneError(f"input '{inp.name}' has dynamic dimensions [{', '.join(dim_names(dims))}]; "
                                 f"give its size with --input-shape {inp.name}:{','.join(suggested_dims(dims))}")
        shape = list(input_shapes.get(inp.name) or [d.dim_value if d.dim_value > 0 else 1 for d in dims])
        if batch != shape[0] and dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
            shape[0] = batch
        elem = inp.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        feeds[inp.name] = np.random.default_rng(0).random(shape).astype(dtype)
    del m.graph.value_info[:]
    return m, feeds


def timing_session(proto, provider, threads, stop_spinning=True):
    from .runtime import quiet_onnxruntime
    ort = quiet_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # failures come back as exceptions: no second, raw copy on stderr
    if stop_spinning:  # see the module docstring
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=[PROVIDERS[provider]])


def compare(models, provider: str = "cpu", threads: int = 1, batch: int = 1, warmup: int = 5,
            runs: int = 30, input_shapes: dict | None = None, names=None,
            stop_spinning: bool = True) -> list[Timing]:
    """Time `models` (paths or ModelProtos) in alternation; the first is the reference.
    `stop_spinning=False` only exists to measure what the option prevents
    (benchmarks/thread_spinning.py)."""
    check_options(provider, threads, batch, warmup, runs)
    require_provider(provider)
    from .files import read_proto
    with stage("load"):
        protos = [read_proto(m) for m in models]
    names = names or [m if isinstance(m, str) else f"model{i}" for i, m in enumerate(models)]
    sessions, feeds = [], []
    with stage("sessions"):
        for proto, name in zip(protos, names):
            m, f = _with_batch(proto, batch, input_shapes or {})
            try:
                sessions.append(timing_session(m, provider, threads, stop_spinning))
                sessions[-1].run(None, f)
            except Exception as e:
                raise OnnxPruneError(f"cannot run {name} with batch {batch}: "
                                     f"{str(e).splitlines()[0][:200]}") from None
            feeds.append(f)
    log.debug("bench: %d model(s), %d warm-up and %d timed runs each, %s, %d thread(s), batch %d",
              len(protos), warmup, runs, provider, threads, batch)
    with stage("warm-up"):
        for _ in range(warmup):
            for s, f in zip(sessions, feeds):
                s.run(None, f)
    times = [[] for _ in sessions]
    # no progress display here: its thread would wake up inside the measurements
    for _ in range(runs):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            s.run(None, f)
            times[k].append(time.perf_counter() - start)
    medians = [float(np.median(t)) for t in times]
    timings = [Timing(name, 1e3 * med, 1e3 * float(np.percentile(t, 10)), 1e3 * float(np.percentile(t, 90)),
                      medians[0] / med) for name, t, med in zip(names, times, medians)]
    for timing, proto in zip(timings, protos):
        timing.macs = _macs(proto, input_shapes or {})
        if timing.macs and timings[0].macs:
            timing.efficiency = timing.speedup * timing.macs / timings[0].macs
    return timings


def _macs(proto, input_shapes):
    """MACs per sample (batch 1), or None for a model onnxprune cannot load."""
    from .cost import cost
    from .load import load
    try:
        return cost(load(proto, input_shapes, check=False)).macs
    except OnnxPruneError:
        return None


def table(timings: list[Timing], provider: str, threads: int, batch: int) -> str:
    lines = [f"onnxruntime {provider}, {threads} thread(s), batch {batch}, alternating runs",
             f"{'model':40s} {'median ms':>10s} {'p10':>8s} {'p90':>8s} {'speedup':>8s} {'MMACs':>10s} "
             f"{'efficiency':>10s}"]
    for t in timings:
        macs = f"{t.macs / 1e6:10.2f}" if t.macs is not None else f"{'-':>10s}"
        eff = f"{t.efficiency:10.2f}" if t.efficiency is not None else f"{'-':>10s}"
        lines.append(f"{t.name[-40:]:40s} {t.median_ms:10.2f} {t.p10_ms:8.2f} {t.p90_ms:8.2f} {t.speedup:7.2f}x "
                     f"{macs} {eff}")
    lines.append("efficiency = speedup / MAC speedup (MACs of the first model / MACs of this one)")
    return "\n".join(lines)
