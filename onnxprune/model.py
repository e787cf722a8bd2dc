"""Load stage: an ONNX model as a graph plus numpy initializers plus static shapes.

`Model` keeps the graph structure in a `GraphProto` whose initializer list is empty;
the weights live in `Model.inits` as numpy arrays (the single source of truth), so
passes slice arrays, not protobufs, and a >2 GB model is never serialised whole.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import OnnxPruneError
from .files import _check_input, _external_array, _read, read_proto  # noqa: F401 (read_proto: for bench)

MIN_OPSET = 11
# Never folded into constants: operators whose value differs run to run, and quantization
# operators (folding DequantizeLinear would turn int8 weights into float32 ones).
_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear",
               "DynamicQuantizeLinear"}


@dataclass
class Model:
    graph: onnx.GraphProto          # structure only; initializer list is empty
    inits: dict[str, np.ndarray]    # initializer name -> array
    shapes: dict[str, tuple]        # every tensor's static shape, inputs fixed as requested
    opset_imports: list = field(default_factory=list)
    ir_version: int = 8
    meta: dict = field(default_factory=dict)   # producer_name etc., copied to the output
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what loading changed, for the report
    external_data: bool = False     # the input kept its weights in an external-data file

    # -- graph queries (recomputed on demand: passes edit the graph) --------------------
    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.graph.node for o in n.output if o}

    def consumers(self) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
        users: dict[str, list] = {}
        for n in self.graph.node:
            for i, t in enumerate(n.input):
                if t:
                    users.setdefault(t, []).append((n, i))
        return users

    def nodes_by_name(self) -> dict[str, onnx.NodeProto]:
        return {n.name: n for n in self.graph.node}

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph.output]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.graph.input if i.name not in self.inits]

    def to_proto(self, with_shapes: bool = False, with_initializers: bool = True) -> onnx.ModelProto:
        g = copy.deepcopy(self.graph)
        del g.initializer[:]
        if with_initializers:
            g.initializer.extend(numpy_helper.from_array(a, name) for name, a in self.inits.items())
        for inp in g.input:  # old exporters also list initializers as inputs: keep them in step
            if inp.name in self.inits:
                set_dims(inp, self.inits[inp.name].shape, exact_rank=True)
        if not with_shapes:
            del g.value_info[:]
        m = onnx.helper.make_model(g, opset_imports=self.opset_imports)
        m.ir_version = self.ir_version
        for k, v in self.meta.items():
            if k == "metadata_props":  # e.g. PP-OCR's character dictionary: must survive
                onnx.helper.set_model_props(m, dict(v))
            else:
                setattr(m, k, v)
        return m

    def copy(self) -> "Model":
        # Arrays are shared: passes replace initializers with new arrays, never edit in place.
        return Model(copy.deepcopy(self.graph), dict(self.inits),
                     dict(self.shapes), list(self.opset_imports), self.ir_version, dict(self.meta),
                     dict(self.input_shapes), list(self.notes), self.external_data)


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names that the bodies of an If/Loop/Scan node read, outer-scope tensors included."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names |= subgraph_reads(n)
    return names


# ---------------------------------------------------------------------------------------
def parse_input_shapes(specs) -> dict[str, tuple]:
    """['x:1,3,224,224', ...] -> {'x': (1, 3, 224, 224)}."""
    shapes = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise OnnxPruneError(f"bad --input-shape '{spec}': expected NAME:D1,D2,... "
                                 "with positive integers") from None
    return shapes


def load(source, input_shapes: dict | None = None, check: bool = True) -> Model:
    """Load stage. Canonicalises constants (numerics unchanged) and fixes static shapes."""
    proto, base, data = _read(source)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise OnnxPruneError(f"unsupported opset {opset}: onnxprune needs ai.onnx opset >= "
                             f"{MIN_OPSET} (convert with onnx.version_converter first)")
    if check:
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        # external data resolves against the model's folder, so such a model is checked from its path
        _check_input(proto if base is None else os.fspath(source) if external else data)
    del data
    graph = _structure_of(proto.graph)
    inits = {t.name: _external_array(t, base, str(source)) if t.data_location == onnx.TensorProto.EXTERNAL
             else numpy_helper.to_array(t) for t in proto.graph.initializer}
    model = Model(graph, inits, {}, list(proto.opset_import), proto.ir_version,
                  {**{k: getattr(proto, k) for k in ("producer_name", "producer_version", "domain",
                                                     "model_version", "doc_string")},
                   "metadata_props": [(p.key, p.value) for p in proto.metadata_props]})
    model.external_data = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    model.input_shapes = _fix_input_shapes(model, dict(input_shapes or {}))
    _name_nodes(model)
    _constants_to_initializers(model)
    _bypass_identity_of_initializers(model)
    _fold_constant_subgraphs(model)
    model.shapes = infer_static_shapes(model)
    return model


def _structure_of(graph: onnx.GraphProto) -> onnx.GraphProto:
    """A copy of the graph without its initializers (copying them would double the memory)."""
    out = onnx.GraphProto()
    for descriptor, value in graph.ListFields():
        if descriptor.name == "initializer":
            continue
        target = getattr(out, descriptor.name)
        if hasattr(target, "extend"):
            target.extend(value)
        elif hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(out, descriptor.name, value)
    return out


def _fix_input_shapes(model: Model, given: dict) -> dict[str, tuple]:
    """Concrete shape of every graph input: from the model, or from --input-shape."""
    fixed = {}
    names = {i.name for i in model.graph.input}
    unknown = set(given) - names
    if unknown:
        raise OnnxPruneError(f"--input-shape names unknown input(s) {sorted(unknown)}; "
                             f"the model's inputs are {sorted(names - set(model.inits))}")
    for inp in model.graph.input:
        if inp.name in model.inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if inp.name in given:
            shape = given[inp.name]
            if len(shape) != len(dims):
                raise OnnxPruneError(f"--input-shape {inp.name} has rank {len(shape)}, the model "
                                     f"input has rank {len(dims)}")
            for d, s in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s:
                    raise OnnxPruneError(f"--input-shape {inp.name}:{','.join(map(str, shape))} "
                                         f"contradicts the model's fixed dimension {d.dim_value}")
            fixed[inp.name] = tuple(shape)
            continue
        shape = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif axis == 0:
                shape.append(1)  # a symbolic batch dimension does not change the analysis
            else:
                raise OnnxPruneError(
                    f"input '{inp.name}' has dynamic dimensions [{', '.join(dim_names(dims))}]; fix "
                    f"them with --input-shape {inp.name}:{','.join(suggested_dims(dims))}")
        fixed[inp.name] = tuple(shape)
    return fixed


def dim_names(dims) -> list[str]:
    return [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in dims]


def suggested_dims(dims) -> list[str]:
    """Keep fixed dimensions; batch 1, channels 3, and 224 for other dynamic ones."""
    out = []
    for axis, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(str(d.dim_value))
        else:
            out.append("1" if axis == 0 else "3" if axis == 1 and len(dims) == 4 else "224")
    return out


def _name_nodes(model: Model) -> None:
    """Give unnamed or duplicate-named nodes a unique name: the analysis keys on names."""
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            base = n.name or f"{n.op_type}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            n.name = name
        seen.add(n.name)


def _constants_to_initializers(model: Model) -> None:
    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in model.output_names:
            model.inits[n.output[0]] = _constant_value(n)
        else:
            keep.append(n)
    _replace_nodes(model, keep)


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    raise OnnxPruneError(f"Constant node {node.name} has an unsupported attribute {a.name}")


def _bypass_identity_of_initializers(model: Model) -> None:
    """Identity(initializer) -> the initializer itself (torch shares de-duplicated weights
    this way). Sharing is kept: the slicing pass copies a shared tensor when users disagree."""
    outputs = set(model.output_names)
    rename, keep = {}, []
    for n in model.graph.node:
        if n.op_type == "Identity" and n.input[0] in model.inits and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
        else:
            keep.append(n)
    for n in keep:
        for i, t in enumerate(n.input):
            if t in rename:
                n.input[i] = rename[t]
    _replace_nodes(model, keep)


def _fold_constant_subgraphs(model: Model) -> None:
    """Evaluate nodes whose inputs are all constant (Paddle computes weights this way) with
    onnxruntime, optimisations off, so folded values are exactly what the runtime computes."""
    const = set(model.inits)
    outputs = set(model.output_names)
    foldable = []
    for n in model.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if (n.op_type not in _NOT_FOLDED and n.domain in ("", "ai.onnx")
                and all(not t or t in const for t in n.input)
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for a in n.attribute)
                and not any(o in outputs for o in n.output)):
            foldable.append(n)
            const.update(o for o in n.output if o)
    if not foldable:
        return
    values = _evaluate_constant_nodes(model, foldable)
    if values is None:
        return
    folded = {id(n) for n in foldable}
    model.inits.update(values)
    _replace_nodes(model, [n for n in model.graph.node if id(n) not in folded])
    model.notes.append(f"folded {len(foldable)} constant node(s) into initializers")


def _evaluate_constant_nodes(model: Model, nodes) -> dict | None:
    from .runtime import run_named, session_from_parts
    needed = {t for n in nodes for t in n.input if t and t in model.inits}
    produced = [o for n in nodes for o in n.output if o]
    g = onnx.helper.make_graph([copy.deepcopy(n) for n in nodes], "fold", inputs=[],
                               outputs=[onnx.helper.make_empty_tensor_value_info(o) for o in produced])
    try:
        sess = session_from_parts(g, {t: model.inits[t] for t in needed}, model.opset_imports,
                                  model.ir_version, optimize=False)
        return run_named(sess, {})
    except Exception:
        return None  # leave the nodes as they are; their channels are handled (or frozen) by rules


def _replace_nodes(model: Model, nodes) -> None:
    nodes = list(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


# ---------------------------------------------------------------------------------------
def infer_static_shapes(model: Model) -> dict[str, tuple]:
    """Static shape of every tensor: onnx shape inference first, onnxruntime for the rest."""
    shapes = {name: tuple(a.shape) for name, a in model.inits.items()}
    shapes.update(model.input_shapes)
    g = copy.deepcopy(model.graph)
    del g.value_info[:]
    for inp in g.input:
        if inp.name in model.input_shapes:
            set_dims(inp, model.input_shapes[inp.name])
    # Large weights enter as typed inputs (no data): inference needs their shapes only,
    # and this keeps the proto far below protobuf's 2 GB limit.
    declared = {i.name for i in g.input}
    small = []
    for name, a in model.inits.items():
        if a.size <= 64 and a.dtype.kind in "iu":
            small.append(numpy_helper.from_array(a, name))
        elif name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
    g.initializer.extend(small)
    m = onnx.helper.make_model(g, opset_imports=model.opset_imports)
    m.ir_version = model.ir_version
    try:
        inferred = shape_inference.infer_shapes(m, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                shapes.setdefault(vi.name, tuple(d.dim_value for d in dims))
    except Exception:
        pass
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_shapes_from_onnxruntime(model, missing))
    return shapes


def set_dims(vi, shape, exact_rank: bool = False) -> None:
    if exact_rank:
        vi.type.tensor_type.shape.ClearField("dim")
        for _ in shape:
            vi.type.tensor_type.shape.dim.add()
    dims = vi.type.tensor_type.shape.dim
    for d, s in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = s


def _shapes_from_onnxruntime(model: Model, names) -> dict[str, tuple]:
    """Run the model once on random inputs with the missing tensors as extra outputs."""
    from .runtime import model_session
    try:
        sess = model_session(model, optimize=False, outputs=names)
        values = sess.run(list(names), random_inputs(model, np.random.default_rng(0), sess))
    except Exception as e:
        raise OnnxPruneError(f"cannot determine tensor shapes: shape inference is incomplete and "
                             f"onnxruntime cannot run the model ({str(e).splitlines()[0][:200]})") from None
    # sequence-typed outputs (SplitToSequence) have no tensor shape: their users get frozen
    return {n: tuple(v.shape) for n, v in zip(names, values) if hasattr(v, "shape")}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def random_inputs(model: Model, rng: np.random.Generator, sess) -> dict[str, np.ndarray]:
    """Random feeds of the fixed input shapes, typed as the session expects."""
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name in model.inits:
            continue  # an initializer listed as an input keeps its own value
        shape = model.input_shapes.get(inp.name) or tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        dtype = _ORT_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            value = rng.uniform(-1.0, 1.0, shape)
        elif dtype == np.bool_:
            value = rng.random(shape) < 0.5
        else:
            value = rng.integers(0, 2, shape)
        feeds[inp.name] = np.asarray(value, dtype=dtype)  # rank-0 inputs must be arrays too
    return feeds
