"""Synthetic calibration images (--calib synthetic): 1/f noise in [0, 1] through the
model's preprocessing, for recovery without any data."""
import numpy as np
import pytest

import onnxprune
from helpers import GraphBuilder
from onnxprune.calibration import load_calibration
from onnxprune.synthetic import pink_noise
from test_calibration import error, image_model, two_input_model


def spectrum_slope(images):
    """Slope of log amplitude against log radial frequency, averaged over images."""
    amp = np.abs(np.fft.fft2(images - images.mean(axis=(-2, -1), keepdims=True))).mean(axis=(0, 1))
    h, w = amp.shape
    r = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    band = (r > 2 / h) & (r < 0.35)
    return np.polyfit(np.log(r[band]), np.log(amp[band]), 1)[0]


def test_pink_noise_has_a_falling_spectrum_and_the_pixel_range():
    x = pink_noise(64, 3, (32, 32), np.random.default_rng(0))
    assert x.shape == (64, 3, 32, 32) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1 and 0.4 < x.mean() < 0.6
    assert -1.3 < spectrum_slope(x) < -0.7            # amplitude ~ 1/f
    white = np.random.default_rng(0).random((64, 3, 32, 32))
    assert abs(spectrum_slope(white)) < 0.2            # the test can tell the difference
    # colour channels share most of their structure
    assert np.corrcoef(x[:, 0].ravel(), x[:, 1].ravel())[0, 1] > 0.7


def test_synthetic_set_follows_the_preprocessing_and_the_limit():
    cs = load_calibration("synthetic", image_model(("N", 3, 8, 8)), limit=10,
                          preprocess="mean=0.5,0.4,0.3;std=0.5")
    x = next(iter(cs.batches(10)))["x"]
    assert x.shape == (10, 3, 8, 8) and len(cs) == 10
    pixels = x * 0.5 + np.array([0.5, 0.4, 0.3], dtype=np.float32)[None, :, None, None]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert cs.describe()["kind"] == "synthetic"
    nhwc = load_calibration("synthetic", image_model(("N", 8, 8, 3)), limit=4)
    assert next(iter(nhwc.batches(4)))["x"].shape == (4, 8, 8, 3)
    assert len(load_calibration("synthetic", image_model(("N", 1, 8, 8)))) == 256


def test_synthetic_needs_one_image_input():
    assert "feeds a single image input" in error(load_calibration, "synthetic", two_input_model())
    b = GraphBuilder()
    flat = b.model([b.gemm(b.input("v", ["N", 6]), 6, 2)])
    assert "needs a rank-4 image input" in error(load_calibration, "synthetic", flat)


def test_prune_recovers_from_synthetic_images():
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 1, 16, 16])
    h = b.op("Relu", [b.bn(b.conv(x, 1, 16), 16)])
    h = b.op("Relu", [b.bn(b.conv(h, 16, 16), 16)])
    out = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 16, 8)])]), 8, 4)
    proto = b.model([out])
    _, report = onnxprune.prune(proto, target_macs=0.6, round_to=1, calibration="synthetic",
                                calibration_limit=64)
    assert report.recovery["calibration"]["kind"] == "synthetic"
    assert "synthetic images (1/f noise), not real inputs" in report.fidelity.summary()
    assert report.fidelity_unrecovered is not None
    # fidelity here is measured on held-out synthetic images: recovery must bring them closer
    assert report.fidelity.max_rel_error < report.fidelity_unrecovered.max_rel_error


@pytest.mark.synthetic_default
def test_an_image_model_without_data_recovers_on_synthetic_images_by_default():
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 1, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 1, 8), 8)])
    proto = b.model([b.conv(h, 8, 4)])
    _, report = onnxprune.prune(proto, 0.5, round_to=1)
    assert report.recovery["calibration"]["kind"] == "synthetic"
    assert "fitted to BatchNormalization" in report.recovery["calibration"]["source"]
    assert any("recovered on synthetic images (1/f noise) by default" in n for n in report.notes), report.notes
    assert any(n.startswith("calibration: synthetic images") and "BatchNormalization" in n for n in report.notes)
    _, report = onnxprune.prune(proto, 0.5, round_to=1, recover="stats")   # the fast path, asked for
    assert "calibration" not in report.recovery and report.recovery["methods"] == ["stats"]
    flat = GraphBuilder()
    h = flat.op("Relu", [flat.gemm(flat.input("v", ["N", 6]), 6, 8)])
    _, report = onnxprune.prune(flat.model([flat.gemm(h, 8, 2)]), 0.5, round_to=1)
    assert "calibration" not in report.recovery


@pytest.mark.synthetic_default
def test_a_rank4_input_that_is_no_image_gets_no_synthetic_images():
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 2, 8, 8])   # two channels: not grey, not colour
    h = b.op("Relu", [b.bn(b.conv(x, 2, 8), 8)])
    _, report = onnxprune.prune(b.model([b.conv(h, 8, 4)]), 0.5, round_to=1)
    assert "calibration" not in report.recovery


@pytest.mark.synthetic_default
def test_a_model_synthetic_images_cannot_run_falls_back_to_the_statistics():
    from test_batch import flatten_net   # Reshape to (1, -1): runs at batch 1 only
    _, report = onnxprune.prune(flatten_net(target=(1, -1)), 0.5, round_to=1)
    assert any(n.startswith("recovery on synthetic images could not run") for n in report.notes), report.notes
    assert report.recovery["methods"] == ["stats"]
