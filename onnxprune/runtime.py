"""onnxruntime sessions without serialising weights.

Serialising a 100 MB model to protobuf for every session (the oracle, the fold pass and
the shape fallback each need one) costs more than the analysis itself. Large
initializers are declared as external data and handed to onnxruntime in memory.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import OnnxPruneError
from .graph import set_dims, subgraph_reads
from .model import Model

INLINE_LIMIT = 1024  # elements; smaller tensors (shape constants) stay in the proto
# Above this many bytes of weights, sessions take the weights as run-time inputs: onnxruntime
# then reads the (memory-mapped) arrays in place instead of copying them — at the price of
# constant-weight optimisations, which only matter for speed.
WEIGHTS_AS_INPUTS_BYTES = 64 * 2**20
# onnxruntime's log severity for our sessions: fatal only. Its errors reach us as exceptions,
# which become one line on stderr; the log would print them a second time, in colour.
LOG_SEVERITY = 4


def quiet_onnxruntime():
    """Keep onnxruntime's own log off stderr: the default logger (messages outside a
    session, and sessions whose options set no level), and every session we create.
    Returns the onnxruntime module."""
    import onnxruntime as ort
    ort.set_default_logger_severity(LOG_SEVERITY)
    return ort


class _WeightsFed:
    """A session whose large weights are graph inputs, fed on every run."""

    def __init__(self, sess, weights):
        self._sess, self._weights = sess, weights

    def get_inputs(self):
        return [i for i in self._sess.get_inputs() if i.name not in self._weights]

    def get_outputs(self):
        return self._sess.get_outputs()

    def run(self, names, feeds, run_options=None):
        return self._sess.run(names, {**feeds, **self._weights}, run_options)


def session_from_parts(graph: onnx.GraphProto, inits: dict, opset_imports, ir_version: int,
                       optimize: bool | str = True, threads: int = 0, providers=("CPUExecutionProvider",),
                       outputs=()):
    ort = quiet_onnxruntime()
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    del g.initializer[:], g.value_info[:]
    declared = {o.name for o in g.output}
    g.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in outputs if t not in declared)
    names, values, fed = [], [], {}
    as_inputs = sum(a.nbytes for a in inits.values()) > WEIGHTS_AS_INPUTS_BYTES
    # onnxruntime drops unused initializers before injecting ours: pass only used ones
    used = ({o.name for o in g.output} | {i.name for i in g.input}
            | {t for n in g.node for t in list(n.input) + list(subgraph_reads(n))})
    for name, array in inits.items():
        if name not in used:
            continue
        if array.size <= INLINE_LIMIT or array.dtype == object:
            g.initializer.append(numpy_helper.from_array(array, name))
            continue
        if as_inputs:
            g.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
            fed[name] = np.ascontiguousarray(array)
            continue
        t = g.initializer.add()
        t.name = name
        t.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "in-memory"
        names.append(name)
        values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array)))
    for inp in g.input:  # old exporters list initializers as inputs: keep shapes in step
        if inp.name in inits:
            set_dims(inp, inits[inp.name].shape, exact_rank=True)
    m = onnx.helper.make_model(g, opset_imports=opset_imports)
    m.ir_version = ir_version
    opts = ort.SessionOptions()
    opts.log_severity_level = LOG_SEVERITY
    if optimize == "basic":  # one-off runs: skip the layout transforms, which cost more than they save
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    # Our sessions run a few times at most: packing weights for speed would only copy them
    # (a second copy of a multi-GB model).
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if names:
        opts.add_external_initializers(names, values)
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=list(providers))
    sess._onnxprune_keepalive = values  # the session reads these buffers
    return _WeightsFed(sess, fed) if fed else sess


def model_session(model, optimize: bool | str = True, outputs=(), threads: int = 0):
    """A session for an `onnxprune.model.Model`, optionally exposing extra tensors."""
    return session_from_parts(model.graph, model.inits, model.opset_imports, model.ir_version,
                              optimize=optimize, outputs=outputs, threads=threads)


def quiet():
    """Run options for a run whose failure the caller handles: onnxruntime raises the error,
    its log line would only repeat it on stderr."""
    import onnxruntime as ort
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def ort_reason(error: Exception) -> str:
    """onnxruntime's message without its status prefix, source locations and C++ signatures."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\S+\.(?:h|cc|cpp):\d+ [^(]*\([^)]*\) ", "", text)
    return text if len(text) <= 300 else text[:300] + " ..."


def run_named(sess, feeds) -> dict:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def fixed_batch(sess) -> int | None:
    """The batch size a session's inputs fix (exporters often write 1); None if dynamic."""
    fixed = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    return fixed.pop() if len(fixed) == 1 else None


def run_chunked(sess, feeds: dict, k: int | None, run=None) -> list:
    """Outputs for a batch of any size from a session whose batch is fixed to k: the batch
    runs in chunks of k (the last padded by repeating its last sample), joined and trimmed.
    Outputs without a sample axis come back as None."""
    run = run or (lambda f: sess.run(None, f))
    n = len(next(iter(feeds.values())))
    if k is None or k == n:
        return run(feeds)
    chunks = [run({name: _pad(a[s:s + k], k) for name, a in feeds.items()}) for s in range(0, n, k)]
    return [_join([c[j] for c in chunks], k, n) for j in range(len(chunks[0]))]


def _pad(a: np.ndarray, k: int) -> np.ndarray:
    return a if len(a) == k else np.concatenate([a, np.repeat(a[-1:], k - len(a), axis=0)])


def _join(parts: list, k: int, n: int):
    if parts[0].ndim and parts[0].shape[0] == k:
        return np.concatenate(parts)[:n]
    if k == 1:  # batch-1 models whose output drops the batch axis
        return np.stack(parts)[:n]
    return None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def random_inputs(model: Model, rng: np.random.Generator, sess, batch: int | None = None,
                  grow: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Random feeds of the fixed input shapes, typed as the session expects. `batch` replaces
    the batch dimension of the inputs whose batch is symbolic in the model; `grow`, (position,
    factor), multiplies their dimension at that position where it is symbolic too (an
    image's height or width, a sequence's length)."""
    feeds = {}
    resized = symbolic_batch_inputs(model) if batch is not None else set()
    grown = symbolic_size_inputs(model) if grow is not None else {}
    for inp in sess.get_inputs():
        if inp.name in model.inits:
            continue  # an initializer listed as an input keeps its own value
        shape = model.input_shapes.get(inp.name) or tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        if inp.name in resized:
            shape = (batch,) + tuple(shape[1:])
        if inp.name in grown and grow[0] in grown[inp.name]:
            shape = tuple(d * grow[1] if i == grow[0] else d for i, d in enumerate(shape))
        dtype = _ORT_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            value = rng.uniform(-1.0, 1.0, shape)
        elif dtype == np.bool_:
            value = rng.random(shape) < 0.5
        else:
            value = rng.integers(0, 2, shape)
        feeds[inp.name] = np.asarray(value, dtype=dtype)  # rank-0 inputs must be arrays too
    return feeds


def symbolic_batch_inputs(model: Model) -> set[str]:
    """Graph inputs whose first dimension the model leaves open (a dim_param, or no value):
    the analysis fixed it (to 1 unless --input-shape said otherwise), the model claims more."""
    names = set()
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in model.inits and len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            names.add(inp.name)
    return names


def symbolic_size_inputs(model: Model) -> dict[str, set[int]]:
    """{graph input: positions after the first that the model leaves open}: the analysis
    fixed them (--input-shape), the model claims other sizes."""
    found = {}
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        open_dims = {i for i, d in enumerate(dims) if i > 0 and not (d.HasField("dim_value") and d.dim_value > 0)}
        if inp.name not in model.inits and open_dims:
            found[inp.name] = open_dims
    return found


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(\d+\) node with name '([^']*)'")


def require_kernels(model: Model, what: str) -> None:
    """One clear line now when onnxruntime's CPU provider cannot run `model` (a `what` model:
    "float64", "int8-weight", ...) for want of a kernel (float64 Conv has none) or a type it
    accepts, instead of an internal error at the first session that needs it."""
    try:
        model_session(model, optimize=False)
    except Exception as e:  # noqa: BLE001 - other failures surface where they matter, as before
        found = _NO_KERNEL.search(str(e))
        if found is not None:
            raise OnnxPruneError(f"onnxruntime's CPU provider cannot run {found[1]} ('{found[2]}') in this "
                                 f"{what} model; onnxprune runs the model to score, fold and verify it: "
                                 f"convert it to float32 first") from None
        if "Type Error" in str(e):
            raise OnnxPruneError(f"onnxruntime rejects this {what} model: {ort_reason(e)}") from None
