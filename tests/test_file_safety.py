"""Hostile paths and files: what the tool writes never lands on what it reads (sidecar
files included), devices and FIFOs are never replaced, broken tensors are bad input,
onnxruntime stays off stderr, and an interrupted save leaves no temporary file and no
half-written output.

Each case asserts, besides the exit code and the one stderr line, that every file in the
folders involved is byte-for-byte what it was (`snapshot`)."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from helpers import residual_net
from onnxprune import OnnxPruneError, cli, io
from onnxprune.load import load
from test_cli import ENV, ROOT, assert_one_line_error, run_cli, run_main

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


# -- 1. what is written never lands on what is read -----------------------------------------
@pytest.fixture
def ext(tmp_path):
    """A folder with a model whose weights are external, a plan, a hard link and a symbolic
    link to the data file, a weights subfolder; and an inline model."""
    d = tmp_path / "d"
    external_model(d)
    os.link(d / DATA, d / "hard.data")
    (d / "soft.data").symlink_to(DATA)
    (d / "plan.json").write_text('{"version": 1, "removed": {}}')
    external_model(d / "sub", "w.onnx", "weights/w.data")
    onnx.save(residual_net(), str(d / "small.onnx"))
    return d


SIDECAR_CASES = [  # (arguments relative to the folder, phrase of the one stderr line)
    (["m.onnx", "out.onnx", "--report", "out.onnx.data"],
     "--report path equals the output's external-data file"),
    (["small.onnx", "out.onnx", "--plan-out", "out.onnx.data"],
     "--plan-out path equals the output's external-data file"),
    (["m.onnx", "out.onnx", "--report", DATA], "--report path equals the input's external-data file"),
    (["m.onnx", "out.onnx", "--plan-out", "soft.data"], "--plan-out path equals the input's external-data file"),
    (["m.onnx", "out.onnx", "--report", "hard.data"], "--report path equals the input's external-data file"),
    (["m.onnx", DATA], "output path equals the input's external-data file"),
    (["m.onnx", "hard.data"], "output path equals the input's external-data file"),
    (["m.onnx", "m.onnx"], "output path equals the input path"),
    (["m.onnx", "out.onnx", "--report", "./sub/../m.onnx"], "--report path equals the input path"),
    (["m.onnx", "out.onnx", "--plan", "plan.json", "--plan-out", "plan.json"],
     "--plan-out path equals the --plan path"),
    (["m.onnx", "out.onnx", "--plan", "plan.json", "--report", "./plan.json"],
     "--report path equals the --plan path"),
    (["m.onnx", "out.onnx", "--report", "out.onnx"], "--report path equals the output path"),
    (["sub/w.onnx", "out.onnx", "--report", "sub/weights/../weights/w.data"],
     "--report path equals the input's external-data file"),
]


def _data_named_after_output(d):
    """The input's data file is `b.onnx.data`: writing `b.onnx` (external) would replace it."""
    external_model(d, "a.onnx", "b.onnx.data")
    return ["a.onnx", "b.onnx"], "the output's external-data file"


@pytest.mark.parametrize("args, phrase", SIDECAR_CASES, ids=[" ".join(a) for a, _ in SIDECAR_CASES])
def test_writes_never_land_on_reads(ext, args, phrase, in_process):
    refused([a if a.startswith("-") else ext / a for a in args], phrase, ext.parent, run=in_process)


def test_output_data_file_never_replaces_the_input_data(ext, in_process):
    args, phrase = _data_named_after_output(ext)
    stderr = refused([ext / a for a in args], phrase, ext.parent, run=in_process)
    assert "equals the input's external-data file" in stderr


def test_paths_without_a_directory_part(ext, in_process):
    """Run from the model's folder with bare names: the same real files are compared."""
    for args, phrase in [(["out.onnx", "--report", DATA], "--report path equals the input's external-data file"),
                         (["out.onnx", "--report", "out.onnx.data"], "--report path equals the output's external"),
                         ([ext / DATA], "output path equals the input's external-data file"),
                         (["out.onnx", "--plan-out", "../d/hard.data"], "--plan-out path equals the input's exter")]:
        refused(["m.onnx", *args], phrase, ext.parent, cwd=ext, run=in_process)


def test_output_through_a_symbolic_link_is_written_at_its_target(tmp_path, capsys):
    src, real = tmp_path / "m.onnx", tmp_path / "elsewhere" / "real.onnx"
    onnx.save(residual_net(), str(src))
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "out.onnx"
    link.symlink_to(real)
    code, _, err = run_main(capsys, src, link)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)   # the link itself stays
    onnx.checker.check_model(onnx.load(str(real)))
    assert temporaries(tmp_path) == []


# -- 2. devices, FIFOs, sockets: never replaced ----------------------------------------------
@pytest.fixture
def devices(tmp_path):
    """/dev/null and /dev/full. As root, private nodes of the same devices in tmp_path, so
    that a regression replaces a copy, not the machine's /dev/null; otherwise the real ones
    (which a user other than root cannot replace)."""
    null, full = tmp_path / "null", tmp_path / "full"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        return null, full
    except (OSError, AttributeError):
        if os.access("/dev", os.W_OK):
            pytest.skip("root without the right to create device nodes: /dev/null itself would be at risk")
        return Path("/dev/null"), Path("/dev/full")


def assert_device(path, minor):
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == minor


def test_output_to_dev_null_streams(tmp_path, devices):
    null, _ = devices
    src = tmp_path / "m.onnx"
    onnx.save(residual_net(), str(src))
    before = snapshot(tmp_path)
    code, stdout, stderr = run_cli(src, null, "--report", null.parent / "r.json", "--plan-out", tmp_path / "p.json")
    assert code == 0, stderr
    assert stderr == "" and f"wrote {null}" in stdout
    assert_device(null, 3)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k not in ("r.json", "p.json")} == before
    assert temporaries(tmp_path) == []
    code, _, stderr = run_cli(src, tmp_path / "out.onnx", "--report", null)   # a report to /dev/null too
    assert code == 0, stderr
    assert_device(null, 3)


def test_output_to_dev_full_is_an_error_not_a_file(tmp_path, devices):
    _, full = devices
    src = tmp_path / "m.onnx"
    onnx.save(residual_net(), str(src))
    refused([src, full, "--report", tmp_path / "r.json"], "No space left on device", tmp_path)
    assert_device(full, 7)
    # a report to /dev/full fails after the model is in place, as any failing report does;
    # it was staged in the temporary folder (not next to the device): nothing is left there
    staging = tmp_path / "staging"
    staging.mkdir()
    code, _, stderr = run_cli_tmpdir(staging, src, tmp_path / "out.onnx", "--report", full)
    assert code == 2
    assert_one_line_error(stderr, f"cannot write {full}: No space left on device")
    assert_device(full, 7)
    assert temporaries(tmp_path) == []   # staging included


def test_model_with_external_data_to_a_device_is_refused(tmp_path, devices):
    null, _ = devices
    src = external_model(tmp_path / "m")
    refused([src, null], f"cannot write {null}: a model with external data needs a regular file", tmp_path)
    assert_device(null, 3)


def test_fifo_without_a_reader_is_refused_at_once(tmp_path):
    src, fifo = tmp_path / "m.onnx", tmp_path / "fifo"
    onnx.save(residual_net(), str(src))
    os.mkfifo(fifo)
    start = time.monotonic()
    refused([src, fifo], "no process is reading this FIFO", tmp_path)
    assert time.monotonic() - start < 60
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_fifo_with_a_reader_gets_the_same_bytes_as_a_file(tmp_path):
    src, fifo, out = tmp_path / "m.onnx", tmp_path / "fifo", tmp_path / "out.onnx"
    onnx.save(residual_net(), str(src))
    os.mkfifo(fifo)
    received = []

    def read():
        with open(fifo, "rb") as f:   # blocks until the CLI opens the FIFO for writing
            received.append(f.read())
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.2)   # the CLI only streams to a FIFO someone reads
    code, _, stderr = run_cli(src, fifo, "--ratio", "0.5", "--round-to", "1")
    reader.join(30)
    assert code == 0, stderr
    assert run_cli(src, out, "--ratio", "0.5", "--round-to", "1")[0] == 0
    assert received == [out.read_bytes()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_socket_and_block_device_are_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(residual_net(), str(src))
    sock_path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        refused([src, sock_path], "it is a socket", tmp_path)
        refused([src, tmp_path / "out.onnx", "--report", sock_path], "it is a socket", tmp_path)
    finally:
        sock.close()
    block = tmp_path / "block"
    try:
        os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # never opened: refused from its type
    except (OSError, AttributeError):
        return
    refused([src, block], "it is a block device", tmp_path)


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


# -- 6. interrupted saves --------------------------------------------------------------------
# The CLI runs in a subprocess in which one function of the save stops (touches a marker
# file, then sleeps) so that the test can send a signal at that very point.
STOPPER = r"""
import os, signal, sys, time
# Ctrl-C as in a terminal: a job started in the background by a shell inherits SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
import onnxprune.io, onnxprune.verify
from onnxprune import cli
module, name, marker, seconds = sys.argv[1:5]
target = {"io": onnxprune.io, "verify": onnxprune.verify, "os": os}[module]
real = getattr(target, name)
def stop(*args, **kwargs):
    if name != "replace" or str(args[1]).endswith(".data"):
        open(marker, "w").close()
        deadline = time.monotonic() + float(seconds)
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return real(*args, **kwargs)
setattr(target, name, stop)
sys.exit(cli.main(sys.argv[5:]))
"""


def interrupt(tmp_path, where, signum, args, seconds=60):
    """Run the CLI with `where` ("module.function") stopped; send `signum` once it stops."""
    marker = tmp_path / "stopped"
    module, name = where.split(".")
    p = subprocess.Popen([sys.executable, "-c", STOPPER, module, name, str(marker), str(seconds),
                          *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the save never reached the stopping point"
            time.sleep(0.05)
        p.send_signal(signum)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    marker.unlink()
    return p.returncode, stdout, stderr


def previous_output(tmp_path, external):
    """An output written by an earlier run (with a different ratio), to be kept intact. The
    external one is wide enough that its pruned weights still go to the data file (tensors
    under 1 KB stay in the model file)."""
    src = external_model(tmp_path / "in", proto=residual_net(width=32)) if external else tmp_path / "in" / "m.onnx"
    if not external:
        src.parent.mkdir()
        onnx.save(residual_net(), str(src))
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    code, _, stderr = run_cli(src, out, "--ratio", "0.25", "--round-to", "1", "--report", out.parent / "r.json")
    assert code == 0, stderr
    return src, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_external_data(tmp_path, signum):
    src, out = previous_output(tmp_path, external=True)
    before = snapshot(tmp_path)
    code, _, stderr = interrupt(tmp_path, "io._external_tensor", signum,
                                [src, out, "--ratio", "0.5", "--round-to", "1", "--report", out.parent / "r.json"])
    if signum == signal.SIGTERM:
        assert code == -signal.SIGTERM, (code, stderr)   # it still dies of SIGTERM, after cleaning up
    else:
        assert code == 2
        assert_one_line_error(stderr, "onnxprune: interrupted", prefix="onnxprune: interrupted")
    assert temporaries(tmp_path) == []
    assert snapshot(tmp_path) == before   # the previous output, report and the input: untouched


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_a_small_model_and_its_report(tmp_path, signum):
    src, out = previous_output(tmp_path, external=False)
    before = snapshot(tmp_path)
    code, _, _ = interrupt(tmp_path, "verify.check", signum,   # the bytes are checked just before writing
                           [src, out, "--ratio", "0.5", "--round-to", "1", "--report", out.parent / "r.json",
                            "--plan-out", out.parent / "p.json"])
    assert code == (-signal.SIGTERM if signum == signal.SIGTERM else 2)
    assert temporaries(tmp_path) == []
    assert snapshot(tmp_path) == before


def test_signal_between_model_and_data_renames_waits(tmp_path):
    """SIGTERM after the new data file is in place, before the model: the model follows,
    then the process ends; never a new data file under an old model."""
    src, out = previous_output(tmp_path, external=True)
    old_data = Path(str(out) + ".data").read_bytes()
    code, _, stderr = interrupt(tmp_path, "os.replace", signal.SIGTERM,
                                [src, out, "--ratio", "0.5", "--round-to", "1"], seconds=1)
    assert code == -signal.SIGTERM, (code, stderr)
    assert temporaries(tmp_path) == []
    assert Path(str(out) + ".data").read_bytes() != old_data
    onnx.checker.check_model(str(out), full_check=True)
    slim = onnx.load(str(out))
    assert sum(numpy_helper.to_array(t).size for t in slim.graph.initializer) < \
        sum(numpy_helper.to_array(t).size for t in onnx.load(str(src)).graph.initializer)


def test_failed_model_rename_puts_the_old_data_back(tmp_path, capsys, monkeypatch):
    src, out = previous_output(tmp_path, external=True)
    before = snapshot(tmp_path)
    real = os.replace

    def replace(a, b):
        if str(b) == str(out):
            raise OSError(28, "No space left on device")
        return real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run_main(capsys, src, out, "--ratio", "0.5", "--round-to", "1")
    monkeypatch.undo()
    assert code == 2
    assert_one_line_error(err, "No space left on device")
    assert snapshot(tmp_path) == before
    onnx.checker.check_model(str(out), full_check=True)


def test_signal_handlers_are_restored_after_saving(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    slim = load(str(external_model(tmp_path / "m")))
    io.save_model(slim, str(tmp_path / "out.onnx"))
    assert {s: signal.getsignal(s) for s in before} == before
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("how", ["save", "save_model"])
def test_large_outputs_get_external_data(tmp_path, monkeypatch, how):
    """The >2 GB paths, with the threshold lowered: model and data renamed into place, the
    weights intact, no temporary file left."""
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    proto, out = residual_net(), tmp_path / "out.onnx"
    out.write_bytes(b"old")
    if how == "save":
        io.save(proto, str(out))
    else:
        io.save_model(load(proto), str(out), check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    saved = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for t in proto.graph.initializer:
        np.testing.assert_array_equal(saved[t.name], numpy_helper.to_array(t))
