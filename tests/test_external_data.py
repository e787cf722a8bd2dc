"""Models with external data: weights are memory-mapped, the output keeps external data,
and the input files are left untouched."""
import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.cli import main
from onnxprune.model import load
from test_budget import resnet_like


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_external_data_in_and_out(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save_model(resnet_like(), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    before = (_sha(src), _sha(str(src) + ".data"))
    assert main([str(src), str(out), "--ratio", "0.5", "--verify"]) == 0
    assert (_sha(src), _sha(str(src) + ".data")) == before
    assert os.path.exists(str(out) + ".data")
    onnx.checker.check_model(str(out), full_check=True)
    slim = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in slim.graph.initializer)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 5)


def test_external_weights_are_memory_mapped(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(resnet_like(), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    model = load(str(src))
    assert model.external_data
    assert any(isinstance(a, np.memmap) for a in model.inits.values())
