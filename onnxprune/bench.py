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

On a GPU provider (cuda, tensorrt) the timed loop runs through I/O binding: the inputs are
copied to the device once, outputs are allocated there, and a run is timed until its
outputs are ready, so no host copy is measured. `io_binding=True` does the same on the
CPU provider (the code path the tests exercise on a machine without a GPU).
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
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
DEVICES = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}  # where I/O binding puts inputs and outputs
INSTALL = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu and TensorRT"}


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
                             f"build (install {INSTALL[provider]} on a machine with a GPU)")


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


def _providers(proto, provider):
    """The provider list of a session: TensorRT hands the nodes it cannot build to CUDA, and
    builds its engine in float16 for a float16 model (otherwise it may run it in float32)."""
    if provider != "tensorrt":
        return [PROVIDERS[provider]]
    float16 = any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in proto.graph.input)
    return [(PROVIDERS["tensorrt"], {"trt_fp16_enable": float16}), PROVIDERS["cuda"]]


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
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=_providers(proto, provider))
    if PROVIDERS[provider] not in session.get_providers():
        # onnxruntime falls back to the CPU when a listed provider fails to load (missing
        # CUDA or TensorRT libraries): timing that would report CPU figures as GPU ones
        raise OnnxPruneError(f"the {provider} execution provider could not be loaded (onnxruntime fell back to "
                             f"{', '.join(session.get_providers())}); check the CUDA/TensorRT libraries")
    session.disable_fallback()  # nor rerun on the CPU a run the provider fails
    return session


def runner(session, feeds: dict, device: str | None):
    """One inference of `session` on `feeds`, as a function of no argument. With a `device`,
    through I/O binding: inputs copied there once, outputs allocated there on every run,
    and the call returns when they are ready."""
    if device is None:
        return lambda: session.run(None, feeds)
    import onnxruntime as ort
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


def compare(models, provider: str = "cpu", threads: int = 1, batch: int = 1, warmup: int = 5,
            runs: int = 30, input_shapes: dict | None = None, names=None,
            stop_spinning: bool = True, io_binding: bool | None = None) -> list[Timing]:
    """Time `models` (paths or ModelProtos) in alternation; the first is the reference.
    `io_binding` (default: on for GPU providers) keeps inputs and outputs on the device.
    `stop_spinning=False` only exists to measure what the option prevents
    (benchmarks/thread_spinning.py)."""
    check_options(provider, threads, batch, warmup, runs)
    require_provider(provider)
    from .files import read_proto
    with stage("load"):
        protos = [read_proto(m) for m in models]
    names = names or [m if isinstance(m, str) else f"model{i}" for i, m in enumerate(models)]
    if io_binding is None:
        io_binding = provider != "cpu"
    device = DEVICES[provider] if io_binding else None
    runners = []
    with stage("sessions"):
        for proto, name in zip(protos, names):
            m, feeds = _with_batch(proto, batch, input_shapes or {})
            try:
                runners.append(runner(timing_session(m, provider, threads, stop_spinning), feeds, device))
                runners[-1]()
            except OnnxPruneError:
                raise
            except Exception as e:
                raise OnnxPruneError(f"cannot run {name} with batch {batch}: "
                                     f"{str(e).splitlines()[0][:200]}") from None
    log.debug("bench: %d model(s), %d warm-up and %d timed runs each, %s, %d thread(s), batch %d, I/O bound to %s",
              len(protos), warmup, runs, provider, threads, batch, device)
    with stage("warm-up"):
        for _ in range(warmup):
            for run in runners:
                run()
    times = [[] for _ in runners]
    # no progress display here: its thread would wake up inside the measurements
    for _ in range(runs):
        for k, run in enumerate(runners):
            start = time.perf_counter()
            run()
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
    where = f"{threads} thread(s)" if provider == "cpu" else "inputs and outputs bound on the device"
    lines = [f"onnxruntime {provider}, {where}, batch {batch}, alternating runs",
             f"{'model':40s} {'median ms':>10s} {'p10':>8s} {'p90':>8s} {'speedup':>8s} {'MMACs':>10s} "
             f"{'efficiency':>10s}"]
    for t in timings:
        macs = f"{t.macs / 1e6:10.2f}" if t.macs is not None else f"{'-':>10s}"
        eff = f"{t.efficiency:10.2f}" if t.efficiency is not None else f"{'-':>10s}"
        lines.append(f"{t.name[-40:]:40s} {t.median_ms:10.2f} {t.p10_ms:8.2f} {t.p90_ms:8.2f} {t.speedup:7.2f}x "
                     f"{macs} {eff}")
    lines.append("efficiency = speedup / MAC speedup (MACs of the first model / MACs of this one)")
    return "\n".join(lines)
