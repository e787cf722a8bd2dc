"""bn-variance: the data-free score ‖consumer columns‖ · predicted std of the channel."""
import numpy as np
from onnx import numpy_helper

from helpers import GraphBuilder, prune_and_check
from onnxprune.api import analyze_model
from onnxprune.saliency import score


def conv_bn_relu_conv(with_bn=True, seed=0):
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 3, 8, 8])
    h = b.conv(x, 3, 8)
    if with_bn:
        h = b.bn(h, 8)
    h = b.op("Relu", [h])
    y = b.conv(h, 8, 6)
    return b.model([y])


def inits(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def scores_by_channel(proto):
    model, couplings = analyze_model(proto)
    s = score(model, couplings, "bn-variance")
    conv1 = next(n for n in model.graph.node if n.op_type == "Conv")
    producer = next(p for p in couplings.producers if p.node == conv1.name)
    return s.values[couplings.class_of[producer.ids]], s.notes


def test_score_is_consumer_norm_times_predicted_std():
    proto = conv_bn_relu_conv()
    got, notes = scores_by_channel(proto)
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    w = inits(proto)
    gamma, beta = w[bn.input[1]], w[bn.input[2]]
    consumer = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    columns = (w[consumer.input[1]].astype(np.float64) ** 2).sum(axis=(0, 2, 3))
    # the variance of ReLU(z), z ~ N(beta, gamma²), by sampling: independent of moments.py
    z = np.random.default_rng(0).standard_normal((400_000, 1)) * gamma + beta
    variance = np.maximum(z, 0).var(axis=0)
    np.testing.assert_allclose(got, np.sqrt(columns * variance), rtol=0.02)
    assert not notes


def test_a_channel_that_never_varies_goes_first():
    proto = conv_bn_relu_conv()
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    for t in proto.graph.initializer:
        if t.name == bn.input[1]:   # gamma 0: the channel is the constant ReLU(beta)
            g = numpy_helper.to_array(t).copy()
            g[5] = 0.0
            t.CopyFrom(numpy_helper.from_array(g, t.name))
    got, _ = scores_by_channel(proto)
    assert got[5] < 1e-6 and (np.delete(got, 5) > 1e-3).all()
    slim, report = prune_and_check(proto, 1 / 8, criterion="bn-variance")

    # channel 5 is the one removed: the slim first conv lacks exactly that filter
    w0 = inits(proto)[proto.graph.node[0].input[1]]
    w1 = inits(slim)[slim.graph.node[0].input[1]]
    assert w1.shape[0] == 7
    assert np.array_equal(w1, np.delete(w0, 5, axis=0))


def test_without_bn_the_consumer_norm_alone_and_a_note():
    proto = conv_bn_relu_conv(with_bn=False)
    got, notes = scores_by_channel(proto)
    consumer = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    columns = (inits(proto)[consumer.input[1]].astype(np.float64) ** 2).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(got, np.sqrt(columns), rtol=1e-6)
    assert notes and "no BatchNormalization statistics upstream" in notes[0]
