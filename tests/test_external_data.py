"""Models with external data: weights are memory-mapped, the output keeps external data,
the input files are left untouched, and data is read from the model's own folder only."""
import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune import OnnxPruneError
from onnxprune.cli import main
from onnxprune.load import load
from test_budget import resnet_like
from test_cli import assert_one_line_error, run_cli
from test_file_safety import external_model, snapshot


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


def test_external_data_output_keeps_shape_constants_in_the_model_file(tmp_path, capsys):
    """A Reshape target that the rewrite changes (32 channels flattened -> fewer) must stay in
    the .onnx: shape inference cannot read external tensors, and the checker then failed on
    our own output (vit_h_14 hit it; it was reported as bad input)."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 32)])
    h = b.op("Relu", [b.conv(h, 32, 32)])
    flat = b.op("Reshape", [b.op("GlobalAveragePool", [h]), b.ints([1, 32], "shape")])
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save_model(b.model([b.gemm(flat, 32, 4)]), str(src), save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    assert main([str(src), str(out), "--ratio", "0.5", "--round-to", "1", "--recover", "none"]) == 0, \
        capsys.readouterr().err
    onnx.checker.check_model(str(out), full_check=True)
    slim = onnx.load(str(out), load_external_data=False)
    inline = {t.name: t for t in slim.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    reshape = next(n for n in slim.graph.node if n.op_type == "Reshape")
    assert reshape.input[1] in inline
    gemm = next(n for n in slim.graph.node if n.op_type == "Gemm")
    width = next(t.dims[1] for t in slim.graph.initializer if t.name == gemm.input[1])
    assert width < 32 and numpy_helper.to_array(inline[reshape.input[1]]).tolist() == [1, width]
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in slim.graph.initializer)


def test_external_weights_are_memory_mapped(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(resnet_like(blocks=20), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    model = load(str(src))
    assert model.external_data
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    # every one of them: an initializer read into memory at load doubled a ViT-H's peak memory
    assert weights and all(isinstance(model.inits[w], np.memmap) for w in weights)


# -- external data must come from the model's own folder ------------------------------------
# The weights are moved out of the model's folder (still valid: were they read, pruning
# would succeed and copy them into the output); each case points the model at them, or at
# something else that is not a plain file inside its folder.
def _locate(model_path, location):
    proto = onnx.load(str(model_path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    model_path.write_bytes(proto.SerializeToString())


def _outside(tmp_path):
    d, secret = tmp_path / "m", tmp_path / "outside" / "secret.data"
    src = d / "m.onnx"
    external_model(d, location="m.onnx.data")
    secret.parent.mkdir()
    os.replace(d / "m.onnx.data", secret)
    return src, secret


def case_dotdot(tmp_path):
    src, _ = _outside(tmp_path)
    _locate(src, "../outside/secret.data")
    return src, "not a plain relative path"


def case_dotdot_back_inside(tmp_path):
    src, secret = _outside(tmp_path)
    os.replace(secret, src.parent / "m.onnx.data")
    _locate(src, "../m/m.onnx.data")
    return src, "not a plain relative path"


def case_absolute(tmp_path):
    src, secret = _outside(tmp_path)
    _locate(src, str(secret))
    return src, "not a plain relative path"


def case_symlinked_directory(tmp_path):
    src, secret = _outside(tmp_path)
    (src.parent / "weights").symlink_to(secret.parent)
    _locate(src, "weights/secret.data")
    return src, "resolves outside the model's folder"


def case_symlinked_file(tmp_path):
    src, secret = _outside(tmp_path)
    (src.parent / "m.onnx.data").symlink_to(secret)
    return src, "resolves outside the model's folder"


def case_symlink_inside(tmp_path):  # onnx's loader refuses these too
    src, secret = _outside(tmp_path)
    os.replace(secret, src.parent / "real.data")
    (src.parent / "m.onnx.data").symlink_to("real.data")
    return src, "goes through a symbolic link"


def case_control_characters(tmp_path):
    src, secret = _outside(tmp_path)
    os.replace(secret, src.parent / "m.onnx.data")
    _locate(src, "m.onnx.data\x00../../outside/secret.data")
    return src, "not a plain relative path"


def case_newline(tmp_path):
    src, _ = _outside(tmp_path)
    _locate(src, "m.onnx\n.data")
    return src, "not a plain relative path"


def case_empty(tmp_path):
    src, _ = _outside(tmp_path)
    _locate(src, "")
    return src, "has no external data location"


def case_fifo(tmp_path):  # reading it would wait forever
    src, _ = _outside(tmp_path)
    os.mkfifo(src.parent / "m.onnx.data")
    return src, "which is not a regular file"


OUTSIDE = [case_dotdot, case_dotdot_back_inside, case_absolute, case_symlinked_directory, case_symlinked_file,
           case_symlink_inside, case_control_characters, case_newline, case_empty, case_fifo]


@pytest.mark.parametrize("bare", [False, True], ids=["path", "bare-name"])
@pytest.mark.parametrize("case", OUTSIDE, ids=[c.__name__[5:] for c in OUTSIDE])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, case, bare):
    """Refused with one line, from a path or run in the model's folder with its bare name
    (no directory part), by the loader itself (not only by the ONNX checker)."""
    src, phrase = case(tmp_path)
    out = tmp_path / "out.onnx"
    before = snapshot(tmp_path)
    args = ["m.onnx", out] if bare else [src, out]
    code, stdout, stderr = run_cli(*args, cwd=src.parent if bare else None)
    assert code == 2, stderr
    assert_one_line_error(stderr, phrase)
    assert "tensor 'w1'" in stderr or "tensor 'w" in stderr
    assert snapshot(tmp_path) == before and not out.exists()
    with pytest.raises(OnnxPruneError, match=phrase.replace("'", ".")):
        load(str(src), check=False)


def test_external_data_in_a_subfolder_works_with_a_bare_name(tmp_path):
    d = tmp_path / "m"
    external_model(d, location="weights/w.data")
    before = snapshot(d)
    code, _, stderr = run_cli("m.onnx", "../out.onnx", "--ratio", "0.5", "--round-to", "1", cwd=d)
    assert code == 0, stderr
    assert snapshot(d) == before
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)
    assert (tmp_path / "out.onnx.data").exists()


def test_external_data_read_in_constant_nodes_comes_from_the_model_folder(tmp_path, monkeypatch):
    """A Constant node's tensor may use external data too: read from the model's folder,
    wherever the process runs."""
    proto = residual_net()
    value = numpy_helper.from_array(np.full((1, 8, 1, 1), 0.5, np.float32))
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["half"], name="half", value=value))
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    proto.graph.node.insert(list(proto.graph.node).index(relu) + 1,
                            helper.make_node("Mul", [relu.output[0], "half"], ["scaled"], name="scale"))
    for n in proto.graph.node:
        if n.name not in ("scale",) and relu.output[0] in n.input:
            n.input[list(n.input).index(relu.output[0])] = "scaled"
    src = tmp_path / "m" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(proto, str(src), save_as_external_data=True, location="m.onnx.data", size_threshold=0,
                    convert_attribute=True)
    assert any(onnx.external_data_helper.uses_external_data(n.attribute[0].t)
               for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "Constant")
    monkeypatch.chdir(tmp_path)   # not the model's folder
    slim, _ = onnxprune.prune(str(src), 0.5, round_to=1, verify=True)
    onnx.checker.check_model(slim)
