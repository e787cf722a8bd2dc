import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

RAPIDOCR = None
try:
    import rapidocr_onnxruntime
    RAPIDOCR = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")
except ImportError:
    pass


@pytest.fixture
def rapidocr_models():
    if RAPIDOCR is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    return RAPIDOCR


@pytest.fixture(autouse=True)
def fast_data_free_recovery(request, monkeypatch):
    """Without data, prune recovers an image model on synthetic images by default
    (onnxprune/recover.py `default_calibration`): about a second per call even on the tiny
    models here. Tests of structure, options and files do not need that, so in-process they
    get the fast data-free path (as with --recover stats) unless marked `synthetic_default`;
    CLI runs in a subprocess keep the real default."""
    if request.node.get_closest_marker("synthetic_default") is None:
        monkeypatch.setattr("onnxprune.recover.default_calibration",
                            lambda model, calibration, recover: calibration)
