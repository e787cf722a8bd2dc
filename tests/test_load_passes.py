"""The load passes (onnxprune/pipeline.py LOAD_PASSES) and what reaches them: model-local
functions are inlined, large constants are not materialised, graph outputs keep their
shapes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from helpers import GraphBuilder, prune_and_check
from onnxprune.load import load
from onnxprune.pipeline import LOAD_PASSES, REWRITE_PASSES


def test_every_pass_has_the_one_signature():
    import inspect
    for p in LOAD_PASSES + REWRITE_PASSES:
        assert list(inspect.signature(p.run).parameters) == ["model", "step"], p.__name__


def _function_model():
    """x -> local.ConvRelu(x, w1, b1) -> local.ConvRelu(., w2, b2) -> y, as torch's dynamo
    exporter and onnxscript write models: the operators live inside a FunctionProto."""
    rng = np.random.default_rng(0)
    fn = helper.make_function(
        "local", "ConvRelu", ["x", "w", "b"], ["y"],
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        opset_imports=[helper.make_opsetid("", 17)])
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 3, 3)), ("b2", (4,)))]
    nodes = [helper.make_node("ConvRelu", ["x", "w1", "b1"], ["h"], domain="local", name="block1"),
             helper.make_node("ConvRelu", ["h", "w2", "b2"], ["y"], domain="local", name="block2")]
    g = helper.make_graph(nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=[fn])
    m.ir_version = 8
    return m


def test_model_local_functions_are_inlined_and_pruned():
    proto = _function_model()
    onnx.checker.check_model(proto, full_check=True)
    slim, report = prune_and_check(proto, 0.5)
    assert any("inlined 2" in n or "inlined 1" in n for n in report.notes), report.notes
    assert not slim.functions and {n.op_type for n in slim.graph.node} == {"Conv", "Relu"}
    assert all(o.domain != "local" for o in slim.opset_import)
    assert report.after["params"] < report.before["params"]


def _big_constant_model(side=2048):
    """A ConstantOfShape of 1x8xSxS floats (128 MB at S = 2048), reduced to one value per
    channel and added to the activations: folding it would write those MB into the model."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)
    big = b.op("ConstantOfShape", [b.const(np.array([1, 8, side, side], np.int64))],
               value=numpy_helper.from_array(np.array([0.25], np.float32)))
    per_channel = b.op("ReduceMean", [big, b.const(np.array([2, 3], np.int64))], keepdims=1)
    h = b.op("Add", [h, per_channel])
    y = b.conv(h, 8, 4)
    return b.model([y], opset=18)


def test_large_constants_are_not_folded():
    proto = _big_constant_model()
    model = load(proto)
    assert sum(a.nbytes for a in model.inits.values()) < 1 << 20
    assert "ConstantOfShape" in {n.op_type for n in model.graph.node}
    assert any("unfolded" in n for n in model.notes), model.notes
    # the per-channel operand is now computed at run time: those channels are frozen, honestly
    slim, report = prune_and_check(proto, 0.5, expect_smaller=False)
    assert slim.ByteSize() < 1 << 20
    assert any("not a constant" in (g["frozen"] or "") for g in report.groups)


def test_small_constant_subgraphs_are_still_folded():
    model = load(_big_constant_model(side=4))
    assert "ConstantOfShape" not in {n.op_type for n in model.graph.node}
    assert any("folded" in n for n in model.notes), model.notes


def test_expand_to_a_computed_shape_is_folded_in_a_later_round():
    """torch's `class_token.expand(n, -1, -1)`: Expand of a constant to a shape computed by
    ConstantOfShape/Mul/Equal/Where. Its size is unknown until that shape is folded, so it
    is folded in a second round, and the rules see a constant."""
    b = GraphBuilder()
    token = b.floats(np.ones((1, 1, 8), np.float32))
    ones = b.op("ConstantOfShape", [b.ints([3])], value=numpy_helper.from_array(np.array([1], np.int64)))
    minus = b.op("Mul", [ones, b.ints([-1])])
    wanted = b.ints([1, -1, -1])
    shape = b.op("Where", [b.op("Equal", [wanted, minus]), ones, wanted])
    expanded = b.op("Expand", [token, shape])
    x = b.input("x", [1, 4, 8])
    y = b.op("Concat", [expanded, x], axis=1)
    model = load(b.model([y]))
    assert {n.op_type for n in model.graph.node} == {"Concat"}
    assert model.inits[expanded].shape == (1, 1, 8)


def test_training_mode_batch_norm_statistics_outputs_keep_their_shapes():
    """Running statistics that are graph outputs hold the channel count: their channels are
    graph outputs, so they are frozen and the outputs keep their shapes."""
    b = GraphBuilder()
    x = b.input("x", [2, 3, 8, 8])
    h = b.conv(x, 3, 8)
    c1 = b.last()
    r = b.rng
    outs = ["bn_y", "bn_mean", "bn_var"]
    b.nodes.append(helper.make_node(
        "BatchNormalization",
        [h, b.const(r.uniform(0.5, 1.5, 8).astype(np.float32)), b.const(np.zeros(8, np.float32)),
         b.const(np.zeros(8, np.float32)), b.const(np.ones(8, np.float32))],
        outs, name="bn", training_mode=1))
    y = b.conv("bn_y", 8, 4)
    proto = b.model([y, "bn_mean", "bn_var"], opset=15)
    slim, report = onnxprune.prune(proto, 0.5, round_to=1)
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in slim.graph.output}
    assert shapes.get("bn_mean") in ([8], []) and shapes.get("bn_var") in ([8], [])
    row = next(r for r in report.groups if c1 in r["feed_in"])
    assert row["channels_after"] == 8 and row["frozen"], row


@pytest.mark.parametrize("pass_name", ["name_nodes", "bypass_identity", "constants_to_initializers"])
def test_load_passes_keep_numerics(pass_name):
    """Canonicalisation changes no value: the loaded model computes what the input does."""
    from onnxprune.runtime import model_session
    import onnxruntime as ort
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    w = b.weight((8, 3, 3, 3))
    shared = b.op("Identity", [w])
    h = b.op("Conv", [x, shared], pads=[1, 1, 1, 1])
    c = b.op("Constant", [], value=numpy_helper.from_array(np.float32(0.5).reshape(1)))
    h = b.op("Mul", [h, c])
    y = b.conv(h, 8, 4)
    proto = b.model([y])
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    model = load(proto)
    ops = {n.op_type for n in model.graph.node}
    assert "Constant" not in ops and "Identity" not in ops
    got = model_session(model).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("extra", ["maxpool_indices", "shape_value"])
def test_graph_outputs_without_channel_maps_keep_their_shapes_and_values(extra):
    """MaxPool's indices and the value of Shape depend on the channel count: when they are
    graph outputs, the channels that reach them stay."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)
    c1 = b.last()
    if extra == "maxpool_indices":
        pooled, side = b.op("MaxPool", [h], n_outputs=2, kernel_shape=[2, 2], strides=[2, 2])
    else:
        pooled, side = h, b.op("Shape", [h])
    y = b.conv(pooled, 8, 4)
    proto = b.model([y, side])
    proto.graph.output[1].CopyFrom(helper.make_tensor_value_info(   # int64 indices / shape value
        side, TensorProto.INT64, [1, 8, 4, 4] if extra == "maxpool_indices" else [4]))
    slim, report = onnxprune.prune(proto, 0.5, round_to=1, verify=True)
    row = next(r for r in report.groups if c1 in r["feed_in"])
    assert row["channels_after"] == 8 and "graph output" in row["frozen"], row
    assert report.oracle_passed
