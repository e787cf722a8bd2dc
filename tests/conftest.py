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
