"""Moments predicted without data from BatchNormalization statistics (onnxprune/moments.py),
checked against sampling: inputs drawn from the BN's running statistics make its output
exactly N(beta, gamma²) per channel, with independent channels."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.load import load
from onnxprune.moments import predict


def chain():
    rng = np.random.default_rng(0)
    c, n = 4, 3
    stats = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.uniform(-0.5, 0.5, c),
             "mean": rng.uniform(-1, 1, c), "var": rng.uniform(0.5, 2, c),
             "w": rng.standard_normal((n, c)) * 0.5, "b": rng.standard_normal(n) * 0.1}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in stats.items()]
    nodes = [helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["relu"], name="relu"),
             helper.make_node("Gemm", ["relu", "w", "b"], ["fc"], name="fc", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["fc"], ["out"], name="out")]
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", k]) for t, k in
            (("bn", c), ("relu", c), ("fc", n), ("out", n))]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c])],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, stats


def sampled(proto, stats, n=400_000):
    x = np.random.default_rng(1).standard_normal((n, 4)) * np.sqrt(stats["var"]) + stats["mean"]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = sess.run(None, {"x": x.astype(np.float32)})
    return {name: (v.mean(0), v.var(0)) for name, v in zip(("bn", "relu", "fc", "out"), values)}


def test_predicted_moments_match_sampling():
    proto, stats = chain()
    est = predict(load(proto))
    truth = sampled(proto, stats)
    for name in ("bn", "relu", "fc"):   # exact in law: BN output Gaussian, channels independent
        np.testing.assert_allclose(est[name][0], truth[name][0], rtol=0.02, atol=0.01, err_msg=name)
        np.testing.assert_allclose(est[name][1], truth[name][1], rtol=0.03, atol=0.01, err_msg=name)
    # after the Gemm the input of the ReLU is a sum of rectified Gaussians, taken as Gaussian
    np.testing.assert_allclose(est["out"][0], truth["out"][0], rtol=0.1, atol=0.02)
    np.testing.assert_allclose(est["out"][1], truth["out"][1], rtol=0.15, atol=0.02)


def test_a_gemm_whose_weight_is_not_a_constant_ends_the_estimate():
    proto, _ = chain()
    proto.graph.input.append(helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [3, 4]))
    proto.graph.node[2].input[1] = "w_in"
    est = predict(load(proto))
    assert "relu" in est and "fc" not in est and "out" not in est
