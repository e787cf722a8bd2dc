"""Neuron merging (passes/merge_neurons.py, docs/methods.md §5): a removed filter that is a
positive multiple of a kept one is folded into the consumer exactly, without data."""
from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune.plan import Plan
from onnxprune.recover import parse_methods
from onnxprune.passes import merge_neurons


def _run(proto, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _x(n=8, shape=(4, 6, 6), seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


def _conv_bn_relu_conv(scale=2.5, bn=True, activation="Relu", head="conv"):
    """x -> conv1 (8 filters) -> [BN] -> act -> consumer; filter 7's pre-activation is
    `scale` times filter 0's (BN included)."""
    b = GraphBuilder(seed=7)
    x = b.input("x", [None, 4, 6, 6])
    w = b.rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    bias = b.rng.standard_normal(8).astype(np.float32) * 0.3
    if bn:
        r = b.rng
        g, beta = r.uniform(0.5, 1.5, 8), r.uniform(-0.2, 0.2, 8)
        mean, var = r.uniform(-0.5, 0.5, 8), r.uniform(0.5, 2.0, 8)
        a = g / np.sqrt(var + 1e-5)
        w[7] = scale * a[0] / a[7] * w[0]
        beta[7] = scale * (a[0] * (bias[0] - mean[0]) + beta[0]) - a[7] * (bias[7] - mean[7])
        h = b.op("Conv", [x, b.const(w), b.const(bias)], kernel_shape=[3, 3], pads=[1] * 4)
        c1 = b.last()
        h = b.op("BatchNormalization", [h] + [b.const(v.astype(np.float32)) for v in (g, beta, mean, var)])
    else:
        w[7], bias[7] = scale * w[0], scale * bias[0]
        h = b.op("Conv", [x, b.const(w), b.const(bias)], kernel_shape=[3, 3], pads=[1] * 4)
        c1 = b.last()
    if activation:
        h = b.op(activation, [h])
    if head == "conv":
        y = b.conv(h, 8, 6, k=3)
    elif head == "flatten-gemm":
        y = b.op("Gemm", [b.op("Flatten", [h]), b.weight((5, 8 * 36)), b.weight((5,))], transB=1)
    elif head == "pool-gemm":
        h = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])])])
        y = b.op("Gemm", [h, b.weight((8, 5)), b.weight((5,))])
    return b.model([y]), c1


def _prune(proto, plan, recover, **kw):
    return onnxprune.prune(proto, plan=plan, recover=recover, verify=True, **kw)


def _notes(report):
    return [n for n in report.recovery.get("notes", []) if n.startswith("merge_neurons")]


def _merged_count(report):
    (note,) = _notes(report)
    return int(note.split(": ")[1].split()[0])


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "folded"])
@pytest.mark.parametrize("head", ["conv", "flatten-gemm", "pool-gemm"])
def test_an_exact_multiple_is_merged_exactly(bn, head):
    proto, c1 = _conv_bn_relu_conv(bn=bn, head=head)
    x = _x()
    ref = _run(proto, x)
    plain, _ = _prune(proto, Plan({c1: [7]}), "none")
    merged, report = _prune(proto, Plan({c1: [7]}), "merge")
    scale = np.abs(ref).max()
    assert np.abs(_run(plain, x) - ref).max() > 1e-2 * scale   # the removal does change the output
    np.testing.assert_allclose(_run(merged, x), ref, atol=1e-4 * scale, rtol=0)
    assert _merged_count(report) == 1, _notes(report)


def test_a_gemm_producer_merges_into_a_gemm_consumer():
    b = GraphBuilder(seed=9)
    x = b.input("x", [None, 16])
    w = b.rng.standard_normal((8, 16)).astype(np.float32)
    bias = b.rng.standard_normal(8).astype(np.float32)
    w[5], bias[5] = 1.7 * w[2], 1.7 * bias[2]
    h = b.op("Relu", [b.op("Gemm", [x, b.const(w), b.const(bias)], transB=1)])
    g1 = [n.name for n in b.nodes if n.op_type == "Gemm"][0]
    y = b.op("Gemm", [h, b.weight((8, 5)), b.weight((5,))], alpha=0.5)
    proto = b.model([y])
    xs = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    merged, report = _prune(proto, Plan({g1: [5]}), "merge")
    ref = _run(proto, xs)
    assert _merged_count(report) == 1
    np.testing.assert_allclose(_run(merged, xs), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_leaky_relu_and_several_removed_channels(monkeypatch):
    monkeypatch.setattr(merge_neurons, "THRESHOLD", 0.9)   # only near multiples
    proto, c1 = _conv_bn_relu_conv(activation="LeakyRelu", scale=0.7)
    x = _x()
    merged, report = _prune(proto, Plan({c1: [3, 7]}), "merge")
    # channel 3 has no multiple among the kept ones: it stays removed (its constant folded)
    assert _merged_count(report) == 1
    plain, _ = _prune(proto, Plan({c1: [3]}), "none")
    np.testing.assert_allclose(_run(merged, x), _run(plain, x), atol=1e-4 * np.abs(_run(plain, x)).max())


def test_without_activation_a_negative_multiple_merges_too():
    proto, c1 = _conv_bn_relu_conv(scale=-1.5, activation=None)
    x = _x()
    merged, report = _prune(proto, Plan({c1: [7]}), "merge")
    assert _merged_count(report) == 1
    np.testing.assert_allclose(_run(merged, x), _run(proto, x), atol=1e-4 * np.abs(_run(proto, x)).max())


def test_a_negative_multiple_through_relu_is_not_merged(monkeypatch):
    monkeypatch.setattr(merge_neurons, "THRESHOLD", 0.9)   # only near multiples: |cos| = 1 with channel 0
    proto, c1 = _conv_bn_relu_conv(scale=-1.5)
    merged, report = _prune(proto, Plan({c1: [7]}), "merge")
    plain, _ = _prune(proto, Plan({c1: [7]}), "none")
    assert _merged_count(report) == 0
    x = _x()
    np.testing.assert_array_equal(_run(merged, x), _run(plain, x))


def test_below_the_threshold_nothing_merges(monkeypatch):
    proto, c1 = _conv_bn_relu_conv()
    monkeypatch.setattr(merge_neurons, "THRESHOLD", 1.01)
    _, report = _prune(proto, Plan({c1: [7]}), "merge")
    assert _merged_count(report) == 0
    assert "1 left" in _notes(report)[0]


def test_residual_streams_are_skipped():
    proto = residual_net()
    names = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    stream, inner = names[0], names[1]
    _, report = _prune(proto, Plan({stream: [1, 2], inner: [3]}), "merge")
    note = _notes(report)[0]
    # the stream's 2 classes are skipped; the inner conv's channel qualifies
    assert "2 removed class(es) skipped (2 channels shared with other producers (residual stream))" in note, note
    assert "in 1 layer(s) that qualify" in note, note


def test_a_depthwise_consumer_is_skipped():
    b = GraphBuilder(seed=2)
    x = b.input("x", [None, 4, 6, 6])
    h = b.op("Relu", [b.bn(b.conv(x, 4, 8), 8)])
    c1 = b.last()
    c1 = [n.name for n in b.nodes if n.op_type == "Conv"][0]
    h = b.op("Relu", [b.bn(b.conv(h, 8, 8, group=8), 8)])
    y = b.conv(h, 8, 4, k=1)
    _, report = _prune(b.model([y]), Plan({c1: [1]}), "merge")
    assert "depthwise" in _notes(report)[0]


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "folded"])
def test_mean_compensation_leaves_a_merged_channel_alone(bn):
    """compensate_means must not add the expectation of a channel that was merged: after
    an exact merge there is nothing left to compensate."""
    proto, c1 = _conv_bn_relu_conv(bn=bn)
    x = _x()
    ref = _run(proto, x)
    fixed, report = _prune(proto, Plan({c1: [7]}), "merge,means")
    np.testing.assert_allclose(_run(fixed, x), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_merge_runs_first():
    assert parse_methods("stats,merge") == ("merge", "stats")
    assert parse_methods("lsq,means,merge") == ("merge", "means", "lsq")


def test_statistics_correction_after_a_merge_predicts_the_merged_layer():
    """merge,stats without data: the BN-predicted mean and variance of the consumer's output
    after both passes equal the original's, which holds only if correct_statistics sees the
    merged columns (it used to predict the pruned layer from the original rows)."""
    from onnxprune.load import load
    from onnxprune.moments import predict
    b = GraphBuilder(seed=9)
    x = b.input("x", [None, 16])
    w = b.rng.standard_normal((8, 16)).astype(np.float32)
    bias = b.rng.standard_normal(8).astype(np.float32)
    gamma, beta = b.rng.uniform(0.5, 1.5, 8), b.rng.uniform(-0.3, 0.3, 8)
    mean, var = b.rng.uniform(-0.5, 0.5, 8), b.rng.uniform(0.5, 2.0, 8)
    s = 1.7   # channel 5 is s times channel 2 after the BN, and the BN statistics agree
    w[5], bias[5], mean[5], var[5], gamma[5], beta[5] = s * w[2], s * bias[2], s * mean[2], s * s * var[2], \
        s * gamma[2], s * beta[2]
    z = b.op("Gemm", [x, b.const(w), b.const(bias)], transB=1)
    g1 = b.last()
    h = b.op("Relu", [b.op("BatchNormalization", [z] + [b.const(v.astype(np.float32)) for v in
                                                         (gamma, beta, mean, var)])])
    y = b.op("Gemm", [h, b.weight((8, 5)), b.weight((5,))])
    proto = b.model([y])
    fixed, report = _prune(proto, Plan({g1: [5]}), "merge,stats")
    assert _merged_count(report) == 1
    want, got = predict(load(proto))[y], predict(load(fixed))[y]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
