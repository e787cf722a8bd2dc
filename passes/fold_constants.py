"""Evaluate nodes whose inputs are all constant (Paddle computes weights this way) with
onnxruntime, optimisations off, so folded values are exactly what the runtime computes.

A node whose result would be large is left as it is (onnxsim and onnxslim cap folding the
same way): ConstantOfShape/Expand/Tile can turn a few bytes into hundreds of MB, and a
folded copy would bloat the output and the memory of every later stage. Nodes that read
such a left-out result are not folded either.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from onnxprune.graph import has_subgraph, is_default_domain, replace_nodes, subgraph_reads
from onnxprune.runtime import run_named, session_from_parts

# Never folded: operators whose value differs run to run, and quantization operators
# (folding DequantizeLinear would turn int8 weights into float32 ones; `_widens_weights`
# keeps a Cast of int8 weights for the same reason).
NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear",
              "DynamicQuantizeLinear"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}
# A folded value may hold at most this many bytes more than the constants it reads.
GROWTH_LIMIT_BYTES = 1 << 20
MAX_ROUNDS = 4
# Operators whose output can be much larger than what they read.
GENERATORS = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad",
              "EyeLike", "RandomNormal", "RandomUniform"}


def run(model, step) -> None:
    folded, large = 0, set()
    # A generator whose target shape is itself computed (torch's `expand(n, -1, -1)` of a
    # class token: Expand of a Where of constants) has no size until that shape is folded,
    # so it counts as large in the first round; later rounds fold it once its size is known.
    for _ in range(MAX_ROUNDS):
        large = large_results(model, foldable_nodes(model, set()))
        nodes = foldable_nodes(model, large)
        values = evaluate(model, nodes) if nodes else None
        if values is None:
            break  # leave the nodes as they are; their channels are handled (or frozen) by rules
        model.inits.update(values)
        gone = {id(n) for n in nodes}
        replace_nodes(model.graph, [n for n in model.graph.node if id(n) not in gone])
        _drop_unread(model, {t for n in nodes for t in n.input if t})
        folded += len(nodes)
    if large:
        model.notes.append(f"left {len(large)} constant value(s) unfolded: each would hold over "
                           f"{GROWTH_LIMIT_BYTES >> 20} MB more than it reads")
    if folded:
        model.notes.append(f"folded {folded} constant node(s) into initializers")


def _drop_unread(model, sources: set[str]) -> None:
    """Constants that only the folded nodes read (the class token an Expand copied) are gone
    from the graph: they no longer count as parameters."""
    read = set(model.output_names) | {i.name for i in model.graph.input}  # old IRs list weights as inputs
    for n in model.graph.node:
        read.update(n.input)
        read |= subgraph_reads(n)
    for t in sources - read:
        model.inits.pop(t, None)


def foldable_nodes(model, excluded: set[str]) -> list:
    """Nodes computable from initializers alone, in graph order; `excluded` outputs count
    as not constant."""
    const = set(model.inits)
    outputs = set(model.output_names)
    foldable = []
    for n in model.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if (n.op_type not in NOT_FOLDED and is_default_domain(n) and not _widens_weights(n, model)
                and all(not t or t in const for t in n.input)
                and not has_subgraph(n)
                and not any(o in outputs or o in excluded for o in n.output)):
            foldable.append(n)
            const.update(o for o in n.output if o)
    return foldable


def _widens_weights(node, model) -> bool:
    """A Cast of 8- or 16-bit integer weights to a float type decompresses them, as
    DequantizeLinear does: folded, the output would store them in float, 2-4x larger."""
    if node.op_type != "Cast" or node.input[0] not in model.inits:
        return False
    source = model.inits[node.input[0]].dtype
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return source.kind in "iu" and source.itemsize <= 2 and to in FLOAT_TYPES


def large_results(model, nodes) -> set[str]:
    """Outputs of `nodes` that would hold far more bytes than their node reads, predicted by
    ONNX shape inference before anything is computed. A generator whose size inference
    cannot tell counts as large."""
    if not nodes:
        return set()
    needed = {t for n in nodes for t in n.input if t and t in model.inits}
    small = [numpy_helper.from_array(np.asarray(model.inits[t]), t) for t in needed
             if model.inits[t].size <= 1024]
    typed = [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(model.inits[t].dtype),
                                                model.inits[t].shape)
             for t in needed if model.inits[t].size > 1024]
    g = onnx.helper.make_graph([copy.deepcopy(n) for n in nodes], "sizes", typed, [], initializer=small)
    m = onnx.helper.make_model(g, opset_imports=model.opset_imports)
    m.ir_version = model.ir_version
    try:
        inferred = shape_inference.infer_shapes(m, data_prop=True)
        sizes = {vi.name: _nbytes(vi) for vi in inferred.graph.value_info}
    except Exception:
        sizes = {}
    known = {t: int(model.inits[t].nbytes) for t in needed}
    large = set()
    for n in nodes:
        read = sum(known.get(t, 0) for t in n.input if t)
        for o in (o for o in n.output if o):
            size = sizes.get(o)
            if (size is None and n.op_type in GENERATORS) or (size is not None and size > read + GROWTH_LIMIT_BYTES):
                large.add(o)
            known[o] = size or 0
    return large


def _nbytes(vi) -> int | None:
    t = vi.type.tensor_type
    if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
        return None
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    return int(np.prod([d.dim_value for d in t.shape.dim], dtype=np.float64)) * itemsize


def evaluate(model, nodes) -> dict | None:
    needed = {t for n in nodes for t in n.input if t and t in model.inits}
    produced = [o for n in nodes for o in n.output if o]
    g = onnx.helper.make_graph([copy.deepcopy(n) for n in nodes], "fold", inputs=[],
                               outputs=[onnx.helper.make_empty_tensor_value_info(o) for o in produced])
    try:
        sess = session_from_parts(g, {t: model.inits[t] for t in needed}, model.opset_imports,
                                  model.ir_version, optimize=False)
        values = run_named(sess, {})
    except Exception:
        return None
    return {k: np.asarray(v) for k, v in values.items()}
