"""Hostile files: broken tensors are bad input, and onnxruntime stays off stderr.

Each case asserts, besides the exit code and the one stderr line, that every file in the
folders involved is byte-for-byte what it was (`snapshot`)."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from helpers import residual_net
from onnxprune import OnnxPruneError, cli
from onnxprune.model import load
from test_cli import ENV, ROOT, assert_one_line_error, run_cli

DATA = "m.onnx.data"


# -- helpers -------------------------------------------------------------------------------
def snapshot(folder) -> dict:
    """Every entry below `folder`, as what it is: a regular file's hash, a link's target, a
    device's numbers, a FIFO, a socket, a directory (never opened unless a regular file)."""
    entries = {}
    for p in sorted(Path(folder).rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            what = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_ino)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            what = ("device", stat.S_IFMT(st.st_mode), st.st_rdev)
        else:
            what = (stat.S_IFMT(st.st_mode),)
        entries[str(p.relative_to(folder))] = what
    return entries


def temporaries(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".onnxprune-*"))


def external_model(folder, name="m.onnx", location=DATA, proto=None) -> Path:
    """`residual_net` saved with every weight in one external-data file."""
    path = Path(folder) / name
    (path.parent / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto or residual_net(), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def run_cli_tmpdir(tmpdir, *args):
    """`run_cli` with the system's temporary folder set to `tmpdir`."""
    p = subprocess.run([sys.executable, "-m", "onnxprune", *map(str, args)], cwd=ROOT,
                       env={**ENV, "TMPDIR": str(tmpdir)}, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def in_process(capfd, monkeypatch):
    """`run_cli`, in this process (faster); stderr is captured at the file descriptor, where
    onnxruntime's log would go."""
    monkeypatch.delenv("ONNXPRUNE_DEBUG", raising=False)

    def run(*args, cwd=None):
        monkeypatch.chdir(cwd or ROOT)
        code = cli.main([str(a) for a in args])
        out, err = capfd.readouterr()
        return code, out, err
    return run


def refused(args, phrase, folder, cwd=None, run=run_cli):
    """Run the CLI; assert exit 2, one line with `phrase`, and `folder` left exactly as it was."""
    before = snapshot(folder)
    code, stdout, stderr = run(*args, cwd=cwd)
    assert code == 2, (code, stderr)
    assert_one_line_error(stderr, phrase)
    assert "wrote" not in stdout
    assert snapshot(folder) == before
    return stderr


# -- 4. a ModelProto without its external data -----------------------------------------------
def test_proto_without_its_external_data_is_a_clear_error(tmp_path):
    src = external_model(tmp_path)
    unloaded = onnx.load(str(src), load_external_data=False)
    for call in (lambda: onnxprune.prune(unloaded, 0.5), lambda: onnxprune.analyze_model(unloaded)):
        with pytest.raises(OnnxPruneError, match=r"external data is not loaded \(tensor '.+' refers to "
                                                 r"'m.onnx.data'\).*onnx.load\(path\)"):
            call()
    slim, _ = onnxprune.prune(onnx.load(str(src)), 0.5, round_to=1)   # loaded: fine
    onnx.checker.check_model(slim)


# -- 5. broken tensors: exit 2 naming the tensor ---------------------------------------------
def _w1(proto):
    return next(t for t in proto.graph.initializer if t.name == "w1")


def _set(t, key, value):
    entry = next((e for e in t.external_data if e.key == key), None) or t.external_data.add()
    entry.key, entry.value = key, value


def _drop(t, key):
    kept = [(e.key, e.value) for e in t.external_data if e.key != key]
    del t.external_data[:]
    for k, v in kept:
        _set(t, k, v)


def _dims(*dims):
    def edit(t):
        del t.dims[:]
        t.dims.extend(dims)
    return edit


INLINE_BREAKS = {  # edits of tensor 'w1' (8, 3, 3, 3) float32 -> phrase
    "dtype_999": (lambda t: setattr(t, "data_type", 999), "data type 999 is not an ONNX tensor type"),
    "dtype_undefined": (lambda t: setattr(t, "data_type", 0), "data type 0 is not an ONNX tensor type"),
    "negative_dim": (lambda t: t.dims.__setitem__(0, -8), "negative dimension in dims [-8, 3, 3, 3]"),
    "overflowing_dims": (_dims(2**40, 2**40, 3, 3), "the element count of dims"),
    "overflowing_int64": (_dims(2**62, 2**62), "the element count of dims"),
    "raw_data_short": (lambda t: setattr(t, "raw_data", t.raw_data[:-4]), "raw_data holds 860 bytes"),
    "raw_data_long": (lambda t: setattr(t, "raw_data", t.raw_data + b"1234"), "raw_data holds 868 bytes"),
    "dims_bigger_than_data": (_dims(8, 3, 3, 4), "raw_data holds 864 bytes, dims [8, 3, 3, 4] of FLOAT need 1152"),
    "float_data_short": (lambda t: (t.ClearField("raw_data"), t.float_data.extend([0.0] * 215)),
                         "float_data holds 215 values"),
    "no_data": (lambda t: t.ClearField("raw_data"), "float_data holds 0 values"),
    "string_in_raw_data": (lambda t: setattr(t, "data_type", TensorProto.STRING), "STRING data"),
}
EXTERNAL_BREAKS = {
    "offset_past_end": (lambda t: _set(t, "offset", "100000"), "needs bytes 100000 to 100864"),
    "offset_negative": (lambda t: _set(t, "offset", "-5"), "has offset '-5', not a non-negative integer"),
    "offset_not_a_number": (lambda t: _set(t, "offset", "0x10"), "has offset '0x10'"),
    "length_mismatch": (lambda t: _set(t, "length", "4"), "has length 4, but dims [8, 3, 3, 3] of FLOAT need 864"),
    "length_negative": (lambda t: _set(t, "length", "-864"), "has length '-864'"),
    "length_past_end": (lambda t: (_set(t, "length", "10000000"), _dims(10000000 // 4)(t)),
                        "which holds"),
    "dims_past_end": (lambda t: (_dims(8, 3, 3, 3000)(t), _drop(t, "length")), "which holds"),
    "overflowing_dims": (_dims(2**40, 2**40, 3, 3), "the element count of dims"),
    "negative_dim": (lambda t: t.dims.__setitem__(0, -8), "negative dimension"),
    "dtype_999": (lambda t: setattr(t, "data_type", 999), "data type 999"),
}


def _break_inline(tmp_path, edit):
    proto = residual_net()
    edit(_w1(proto))
    path = tmp_path / "m" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(proto.SerializeToString())
    return path


def _break_external(tmp_path, edit):
    path = external_model(tmp_path / "m")
    proto = onnx.load(str(path), load_external_data=False)
    edit(_w1(proto))
    path.write_bytes(proto.SerializeToString())
    return path


def _assert_broken_is_bad_input(tmp_path, path, phrase, run):
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    stderr = refused([path, out, "--report", out.parent / "r.json"], phrase, tmp_path, run=run)
    assert "'w1'" in stderr and "internal error" not in stderr
    assert list(out.parent.iterdir()) == []
    with pytest.raises(OnnxPruneError, match="'w1'"):   # without the ONNX checker too
        load(str(path), check=False)


@pytest.mark.parametrize("case", sorted(INLINE_BREAKS))
def test_broken_inline_tensor_is_bad_input(tmp_path, case, in_process):
    edit, phrase = INLINE_BREAKS[case]
    _assert_broken_is_bad_input(tmp_path, _break_inline(tmp_path, edit), phrase, in_process)


@pytest.mark.parametrize("case", sorted(EXTERNAL_BREAKS))
def test_broken_external_tensor_is_bad_input(tmp_path, case, in_process):
    edit, phrase = EXTERNAL_BREAKS[case]
    _assert_broken_is_bad_input(tmp_path, _break_external(tmp_path, edit), phrase, in_process)


def test_broken_constant_node_tensor_is_bad_input(tmp_path, in_process):
    proto = residual_net()
    value = numpy_helper.from_array(np.zeros(8, np.float32))
    value.data_type = 999
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["unused_c"], name="c", value=value))
    src = tmp_path / "m.onnx"
    src.write_bytes(proto.SerializeToString())
    refused([src, tmp_path / "out.onnx"], "data type 999", tmp_path, run=in_process)


def test_broken_in_memory_proto_raises(tmp_path):
    proto = residual_net()
    _w1(proto).data_type = 999
    with pytest.raises(OnnxPruneError, match="broken tensor 'w1' in the model: data type 999"):
        onnxprune.prune(proto, 0.5)


def test_model_onnxruntime_rejects_prints_one_line(tmp_path):
    """The checker accepts an unknown auto_pad value; onnxruntime refuses the model and would
    log the same error (in colour) on top of ours."""
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((4, 8, 3, 3), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c1", auto_pad="FOO"),
             helper.make_node("Relu", ["c"], ["r"], name="r"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w, w2])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    src = tmp_path / "m.onnx"
    onnx.save(proto, str(src))
    stderr = refused([src, tmp_path / "out.onnx"], "Unknown AutoPadType", tmp_path)
    assert "[E:onnxruntime" not in stderr
