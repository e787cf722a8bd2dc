"""The operator registry (onnxprune/ops/): every operator is described once and completely,
and every piece of that description is what the stages use.

The first test walks the registry and fails when an entry lacks a piece. The bgsc tests run
the bound over every elementwise operator the channel rules accept: a bounded operator
gives its channels a positive score, an unbounded one freezes them with its name as the
reason (before the registry, about 25 of them silently got a zero bound, so their channels
were removed first)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

import onnxprune
from helpers import GraphBuilder, group_of
from onnxprune.api import analyze_model
from onnxprune.cost import cost
from onnxprune.ops import REGISTRY, STRUCTURAL, UNBOUNDED, Layer
from onnxprune.ops.elementwise import BINARY, UNARY
from onnxprune.ops.spec import no_macs
from onnxprune.saliency.bgsc import bgsc


def test_every_registered_operator_has_every_piece():
    assert len(REGISTRY) > 90
    for op_type, spec in REGISTRY.items():
        assert spec.op_type == op_type
        assert callable(spec.channels), op_type
        assert spec.bound in (STRUCTURAL, UNBOUNDED) or callable(spec.bound), op_type
        assert callable(spec.macs), op_type
        if spec.layer is not None:
            layer = spec.layer
            assert isinstance(layer, Layer)
            for piece in (layer.in_axis, layer.out_axis, layer.transposed_bound, layer.bias_scale,
                          layer.connections):
                assert callable(piece), op_type
            assert isinstance(layer.weight, int) and (layer.bias is None or isinstance(layer.bias, int))
            assert spec.macs is not no_macs, f"{op_type} has a weight but no MAC count"


def test_layers_are_exactly_the_operators_with_macs():
    """Einsum is the one operator with MACs and no weight (a product of two activations)."""
    with_macs = {op for op, s in REGISTRY.items() if s.macs is not no_macs}
    with_layer = {op for op, s in REGISTRY.items() if s.layer is not None}
    assert with_layer == {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    assert with_macs == with_layer | {"Einsum"}


def test_registry_macs_are_the_reported_macs():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)                                    # 8*8*8 outputs x 3*3*3 taps
    h = b.op("Flatten", [h])
    y = b.op("Gemm", [h, b.weight((10, 512)), b.weight((10,))], transB=1)
    model, _ = analyze_model(b.model([y]))
    assert cost(model).macs == 8 * 8 * 8 * 27 + 10 * 512


# -- bgsc over every elementwise operator -------------------------------------------------
def _stem(b):
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)
    return h, b.last()


def _positive(b, h):
    return b.op("Sigmoid", [h])


def _per_channel(b, value=0.5):
    return b.floats(np.full((1, 8, 1, 1), value, np.float32))


# How to put each binary operator between two convolutions with float channels around it.
def _binary_body(b, op, h):
    if op in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"):
        return b.op("Cast", [b.op(op, [h, _per_channel(b, 0.0)])], to=TensorProto.FLOAT)
    if op in ("And", "Or", "Xor"):
        flag = b.op("Cast", [h], to=TensorProto.BOOL)
        return b.op("Cast", [b.op(op, [flag, b.const(np.ones((1, 8, 1, 1), bool))])], to=TensorProto.FLOAT)
    if op == "BitShift":
        q = b.op("Cast", [_positive(b, h)], to=TensorProto.UINT8)
        shifted = b.op(op, [q, b.const(np.ones((1, 8, 1, 1), np.uint8))], direction="LEFT")
        return b.op("Cast", [shifted], to=TensorProto.FLOAT)
    if op == "Where":
        return b.op(op, [b.const(np.arange(8).reshape(1, 8, 1, 1) % 2 == 0), h, _positive(b, h)])
    if op == "Clip":
        return b.op(op, [h, b.floats(-0.5), b.floats(0.5)])
    if op == "Mod":
        return b.op(op, [h, _per_channel(b, 0.7)], fmod=1)
    if op == "Pow":
        return b.op(op, [_positive(b, h), _per_channel(b, 2.0)])
    if op == "PRelu":
        return b.op(op, [h, _per_channel(b, 0.1)])
    if op == "Div":
        return b.op(op, [h, _per_channel(b, 2.0)])
    if op in ("Sum", "Mean", "Max", "Min"):
        return b.op(op, [h, _positive(b, h), h])
    return b.op(op, [h, _positive(b, h)])   # Add, Sub, Mul


def _unary_body(b, op, h):
    if op in ("Log", "Sqrt", "Reciprocal"):
        h = b.op("Add", [_positive(b, h), b.floats(0.5)])
    if op in ("Not",):
        return b.op("Cast", [b.op(op, [b.op("Cast", [h], to=TensorProto.BOOL)])], to=TensorProto.FLOAT)
    if op in ("IsNaN", "IsInf"):
        return b.op("Cast", [b.op(op, [h])], to=TensorProto.FLOAT)
    if op == "Cast":
        return b.op(op, [b.op(op, [h], to=TensorProto.DOUBLE)], to=TensorProto.FLOAT)
    return b.op(op, [h])


def _model_around(op, body):
    b = GraphBuilder()
    h, c1 = _stem(b)
    h = body(b, op, h)
    y = b.conv(h, 8, 4)
    proto = b.model([y], opset={"Gelu": 20, "Mish": 18}.get(op, 17))
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    except Exception as e:  # pragma: no cover - depends on the onnxruntime build
        pytest.skip(f"onnxruntime does not run {op}: {str(e).splitlines()[0]}")
    return proto, c1


def _check_bound(op, bound, proto, c1):
    model, couplings = analyze_model(proto)
    group = group_of(couplings.groups, c1)
    if group.frozen is not None:
        pytest.skip(f"the channel rule itself freezes {op} here: {group.frozen}")
    scores = bgsc(model, couplings)
    _, report = onnxprune.prune(proto, 0.5, criterion="bgsc", round_to=1, verify=True)
    row = next(r for r in report.groups if c1 in r["feed_in"])
    if bound == UNBOUNDED:
        assert set(group.classes.tolist()) <= set(scores.frozen), op
        # operators on booleans or integers are reached through a Cast, which bounds nothing
        names = (op, "Cast") if op in THROUGH_CAST else (op,)
        assert row["frozen"] is not None and any(f"bgsc: {n} " in row["frozen"] for n in names), row
        assert row["channels_after"] == row["channels_before"]
    else:
        assert not set(group.classes.tolist()) & set(scores.frozen), (op, scores.frozen)
        assert (scores.values[group.classes] > 0).all(), (op, scores.values[group.classes])
        assert row["frozen"] is None and row["channels_after"] < row["channels_before"]
    assert report.oracle_passed


@pytest.mark.parametrize("op", sorted(UNARY))
def test_bgsc_bounds_or_freezes_every_unary_operator(op):
    proto, c1 = _model_around(op, _unary_body)
    _check_bound(op, UNARY[op], proto, c1)


@pytest.mark.parametrize("op", sorted(BINARY))
def test_bgsc_bounds_or_freezes_every_binary_operator(op):
    proto, c1 = _model_around(op, _binary_body)
    _check_bound(op, BINARY[op], proto, c1)


THROUGH_CAST = {"And", "Or", "Xor", "Not", "BitShift"}


def test_every_elementwise_operator_the_rules_accept_is_in_one_table():
    accepted = {op for op, s in REGISTRY.items() if s.channels.__module__.endswith("elementwise")}
    assert accepted == set(UNARY) | set(BINARY) | {"Dropout"}
