"""The input normalisation fitted to the first BatchNormalization (onnxprune/input_range.py):
what --calib synthetic uses when the user does not give --calib-preprocess."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from helpers import GraphBuilder
from onnxprune.calibration import load_calibration
from onnxprune.input_range import fit_input_range
from onnxprune.load import load
from onnxprune.synthetic import pink_noise


def trained_like(mean, std, channels=3, relu_first=False, seed=0):
    """conv -> BN whose running statistics are those of 1/f images normalised as
    (p - mean) / std: the state a BN is left in by training on such inputs."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", channels, 16, 16])
    h = b.conv(x, channels, 8)
    if relu_first:
        h = b.op("Relu", [h])
    bn = b.bn(h, 8)
    proto = b.model([b.conv(b.op("Relu", [bn]), 8, 4)])
    pixels = pink_noise(128, channels, (16, 16), np.random.default_rng(seed + 100))
    images = (pixels - np.reshape(mean, (1, -1, 1, 1))) / np.reshape(std, (1, -1, 1, 1))
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_tensor_value_info(h, onnx.TensorProto.FLOAT, None))
    pre_bn = ort.InferenceSession(probe.SerializeToString()).run([h], {"x": images.astype(np.float32)})[0]
    node = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    stats = {node.input[3]: pre_bn.mean(axis=(0, 2, 3)), node.input[4]: pre_bn.var(axis=(0, 2, 3))}
    for init in proto.graph.initializer:
        if init.name in stats:
            init.CopyFrom(numpy_helper.from_array(stats[init.name].astype(np.float32), init.name))
    return proto


def fit(proto, channels=3):
    model = load(proto, None)
    pixels = pink_noise(64, channels, (16, 16), np.random.default_rng(7))
    return fit_input_range(model, "x", pixels, 1)


def test_the_fit_finds_the_normalisation_the_statistics_came_from():
    cases = (((0.485, 0.456, 0.406), 0.226, "ImageNet mean/std"), ((0.5, 0.5, 0.5), 0.5, "pixels in [-1, 1]"),
             ((0.0, 0.0, 0.0), 1.0, "pixels in [0, 1]"), ((0.3, 0.3, 0.3), 0.7, None))
    for mean, std, convention in cases:
        result = fit(trained_like(mean, std))
        assert result is not None and result.convention == convention, result.describe()
        assert abs(result.fit_std / std - 1) < 0.1, (std, result.describe())
        # a shift of the mean moves the inputs by mean/std: compare in those units
        assert np.allclose(np.array(result.fit_mean) / std, np.array(mean) / std, atol=0.15), \
            (mean, result.describe())
        assert result.std_error < 0.1
        assert abs(result.preprocess.std[0] / std - 1) < 0.1   # the convention, or the fit itself


def test_no_statistics_or_a_nonlinear_path_gives_no_fit():
    b = GraphBuilder()
    x = b.input("x", ["N", 3, 8, 8])
    folded = b.model([b.conv(b.op("Relu", [b.conv(x, 3, 8)]), 8, 4)])
    assert fit(folded) is None
    assert fit(trained_like((0.5,) * 3, 0.25, relu_first=True)) is None   # ReLU before the BN: not affine


def test_synthetic_calibration_uses_the_fit_unless_the_user_gives_the_preprocessing():
    model = load(trained_like((0.485, 0.456, 0.406), 0.226), None)
    cs = load_calibration("synthetic", model, limit=32)
    assert "fitted to BatchNormalization" in cs.describe()["source"]
    x = next(iter(cs.batches(32)))["x"]
    red = x[:, 0]
    assert 0.9 / 0.226 < red.max() - red.min() < 1.1 / 0.226   # pixels [0, 1] through a std near 0.226
    assert abs(red.min() + 0.485 / 0.226) < 0.3                # black lands where the red mean says
    given = load_calibration("synthetic", model, limit=32, preprocess="mean=0;std=1")
    assert "--calib-preprocess" in given.describe()["source"]
    assert next(iter(given.batches(32)))["x"].max() <= 1.0
