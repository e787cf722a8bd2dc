"""The command line contract: exit codes, one-line errors, nothing written on failure,
atomic and deterministic outputs, the input never modified.

Most cases run `python -m onnxprune` as a subprocess (what users run); the ones that need
to inject a failure call `onnxprune.cli.main` in-process."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import GraphBuilder, residual_net
from onnxprune import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
ENV.pop("ONNXPRUNE_DEBUG", None)


# -- helpers -----------------------------------------------------------------------------
def run_cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "onnxprune", *map(str, args)], cwd=cwd or ROOT,
                       env=ENV, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def run_main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(err: str, phrase: str, prefix: str = "onnxprune: error:"):
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith(prefix), err
    if phrase.startswith("re:"):
        assert re.search(phrase[3:], lines[0]), (phrase, err)
    else:
        assert phrase in lines[0], (phrase, err)


net = residual_net


def runs_in_ort(path, shapes=None):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = (shapes or {}).get(i.name) or [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return sess.run(None, feeds)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(net(), str(path))
    return path


# -- 1. happy path -----------------------------------------------------------------------
def test_prune_happy_path(tmp_path, model_path):
    before = sha(model_path)
    out, rep, plan = tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "p.json"
    code, stdout, stderr = run_cli(model_path, out, "--ratio", "0.5", "--round-to", "1", "--verify",
                                   "--report", rep, "--plan-out", plan)
    assert code == 0, stderr
    assert stderr == ""
    assert "Parameters" in stdout and "MACs" in stdout
    assert re.search(r"Oracle max rel\. diff .*\(pass\)", stdout), stdout
    assert f"wrote {out}" in stdout
    assert sha(model_path) == before

    slim = onnx.load(str(out))
    onnx.checker.check_model(slim, full_check=True)
    (y,) = runs_in_ort(out)
    assert y.shape == (1, 4)
    assert sum(t.ByteSize() for t in slim.graph.initializer) < \
        sum(t.ByteSize() for t in onnx.load(str(model_path)).graph.initializer)

    report = json.loads(rep.read_text())
    assert report["oracle_passed"] is True
    assert report["after"]["params"] < report["before"]["params"]
    for g in report["groups"]:
        assert {"channels_before", "channels_after", "kept"} <= set(g)
        for producer, kept in g["kept"].items():
            assert kept == sorted(kept) and len(kept) == g["channels_after"], (producer, g)
            assert all(0 <= i < g["channels_before"] for i in kept)
    pruned = [g for g in report["groups"] if g["channels_after"] < g["channels_before"]]
    assert pruned and all(not g["frozen"] for g in pruned)
    reasons = {f["reason"] for f in report["frozen"]}
    assert {"graph input", "graph output"} <= reasons
    assert all(f["reason"] for f in report["frozen"])

    saved_plan = json.loads(plan.read_text())
    assert saved_plan["removed"]
    # files get ordinary permissions, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert rep.stat().st_mode & 0o777 == 0o666 & ~umask
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx", "p.json", "r.json"]


def test_deterministic_and_plan_roundtrip(tmp_path, model_path, capsys):
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    plan = tmp_path / "plan.json"
    args = ["--ratio", "0.4", "--criterion", "l2", "--round-to", "1"]
    assert run_main(capsys, model_path, a, *args, "--plan-out", plan)[0] == 0
    assert run_main(capsys, model_path, b, *args)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    code, _, err = run_main(capsys, model_path, c, "--plan", plan, "--verify")
    assert code == 0, err
    assert c.read_bytes() == a.read_bytes()


def test_deterministic_across_processes(tmp_path, model_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run_cli(model_path, a, "--criterion", "random", "--seed", "7")[0] == 0
    assert run_cli(model_path, b, "--criterion", "random", "--seed", "7")[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_overwrites_existing_output_atomically(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert run_main(capsys, model_path, out)[0] == 0
    onnx.checker.check_model(onnx.load(str(out)))
    assert out.stat().st_mode & 0o777 == 0o640   # the replaced file's permissions are kept


def test_analyze_changes_nothing(tmp_path, model_path):
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    code, stdout, stderr = run_cli("analyze", model_path)
    assert code == 0, stderr
    assert re.search(r"\d+ nodes, \d+ channel classes, 4 groups \(2 prunable, 2 frozen\)", stdout), stdout
    assert "prunable" in stdout and "frozen: graph input" in stdout and "feed-in" in stdout
    code, stdout, stderr = run_cli("analyze", model_path, "--json")
    assert code == 0, stderr
    rows = json.loads(stdout)
    assert len(rows) == 4 and sum(1 for r in rows if not r["frozen"]) == 2
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before


def test_dynamic_input_with_input_shape(tmp_path):
    src, out = tmp_path / "dyn.onnx", tmp_path / "out.onnx"
    onnx.save(net(x_shape=("N", 3, "H", "W")), str(src))
    code, _, err = run_cli(src, out, "--input-shape", "x:1,3,8,8", "--verify")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    runs_in_ort(out, {"x": (1, 3, 8, 8)})


def test_suggested_input_shape_is_accepted(tmp_path, capsys):
    b = GraphBuilder()
    x = b.input("x", ["N", 1, "H", "W"])
    y = b.conv(b.op("Relu", [b.conv(x, 1, 4)]), 4, 2)
    src = tmp_path / "gray.onnx"
    onnx.save(b.model([y]), str(src))
    code, _, err = run_main(capsys, "analyze", src)
    assert code == 2
    suggestion = re.search(r"--input-shape (\S+)", err).group(1)
    code, _, err = run_main(capsys, "analyze", src, "--input-shape", suggestion)
    assert code == 0, err


# -- 2. bad input: exit code, one line on stderr, nothing written ------------------------
def _valid_bytes():
    return net().SerializeToString()


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def case_directory(tmp_path, out):
    d = tmp_path / "adir.onnx"
    d.mkdir()
    return [d, out]


def case_missing(tmp_path, out):
    return [tmp_path / "nope.onnx", out]


def case_empty(tmp_path, out):
    return [_write(tmp_path, "empty.onnx", b""), out]


def case_truncated(tmp_path, out):
    data = _valid_bytes()
    return [_write(tmp_path, "trunc.onnx", data[: len(data) // 2]), out]


def case_random_bytes(tmp_path, out):
    return [_write(tmp_path, "random.onnx", np.random.default_rng(0).bytes(4096)), out]


def case_checker_fails(tmp_path, out):
    m = net()
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    conv.input[0] = "undefined_tensor"
    return [_write(tmp_path, "invalid.onnx", m.SerializeToString()), out]


def case_external_data_missing(tmp_path, out):
    p = tmp_path / "ext" / "ext.onnx"
    p.parent.mkdir()
    onnx.save_model(net(), str(p), save_as_external_data=True, size_threshold=0,
                    location="ext.onnx.data")
    (p.parent / "ext.onnx.data").unlink()
    return [p, out]


def case_opset9(tmp_path, out):
    b = GraphBuilder()
    y = b.conv(b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)]), 8, 4)
    p = tmp_path / "op9.onnx"
    onnx.save(b.model([y], opset=9), str(p))
    return [p, out]


def _dynamic(tmp_path):
    p = tmp_path / "dyn.onnx"
    onnx.save(net(x_shape=("N", 3, "H", "W")), str(p))
    return p


def case_dynamic_dims(tmp_path, out):
    return [_dynamic(tmp_path), out]


def case_bad_input_shape(tmp_path, out):
    return [_dynamic(tmp_path), out, "--input-shape", "x=1,3,8,8"]


def case_input_shape_not_numbers(tmp_path, out):
    return [_dynamic(tmp_path), out, "--input-shape", "x:1,3,a,8"]


def case_input_shape_unknown_name(tmp_path, out):
    return [_dynamic(tmp_path), out, "--input-shape", "y:1,3,8,8"]


def _good(tmp_path):
    p = tmp_path / "good.onnx"
    if not p.exists():
        p.write_bytes(_valid_bytes())
    return p


def case_output_dir_missing(tmp_path, out):
    return [_good(tmp_path), tmp_path / "no" / "such" / "dir" / "out.onnx"]


def case_output_dir_readonly(tmp_path, out):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        ro.chmod(0o755)
        pytest.skip("running as a user (root) for whom a 0555 directory is still writable")
    return [_good(tmp_path), ro / "out.onnx"]


def case_output_is_directory(tmp_path, out):
    return [_good(tmp_path), out.parent]


def case_ratio_one(tmp_path, out):
    return [_good(tmp_path), out, "--ratio", "1.0"]


def case_ratio_negative(tmp_path, out):
    return [_good(tmp_path), out, "--ratio", "-0.1"]


def case_ratio_above_one(tmp_path, out):
    return [_good(tmp_path), out, "--ratio", "1.5"]


def case_ratio_not_a_number(tmp_path, out):
    return [_good(tmp_path), out, "--ratio", "half"]


def case_unknown_criterion(tmp_path, out):
    return [_good(tmp_path), out, "--criterion", "taylor"]


def case_bad_scope(tmp_path, out):
    return [_good(tmp_path), out, "--scope", "everywhere"]


def case_unknown_option(tmp_path, out):
    return [_good(tmp_path), out, "--bogus"]


def case_missing_output_arg(tmp_path, out):
    return [_good(tmp_path)]


def case_negative_tolerance(tmp_path, out):
    return [_good(tmp_path), out, "--tolerance", "-1"]


def case_out_equals_in(tmp_path, out):
    p = _good(tmp_path)
    return [p, p]


def case_out_equals_in_relative(tmp_path, out):
    p = _good(tmp_path)
    # same file through another spelling: relative to the cwd (ROOT) via ../..
    rel = os.path.relpath(p, ROOT)
    return [p, os.path.join(".", "tests", "..", rel)]


def case_out_symlink_to_in(tmp_path, out):
    p = _good(tmp_path)
    link = tmp_path / "link.onnx"
    link.symlink_to(p)
    return [p, link]


def case_report_equals_in(tmp_path, out):
    p = _good(tmp_path)
    return [p, out, "--report", p]


def case_plan_out_equals_output(tmp_path, out):
    return [_good(tmp_path), out, "--plan-out", out]


def case_plan_unknown_node(tmp_path, out):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "removed": {"NoSuchNode": [0]}}))
    return [_good(tmp_path), out, "--plan", plan]


def case_plan_missing(tmp_path, out):
    return [_good(tmp_path), out, "--plan", tmp_path / "missing_plan.json"]


def case_plan_not_json(tmp_path, out):
    plan = tmp_path / "plan.json"
    plan.write_text("removed: everything")
    return [_good(tmp_path), out, "--plan", plan]


def case_analyze_missing(tmp_path, out):
    return ["analyze", tmp_path / "nope.onnx"]


BAD = [  # (case, exit code, phrase expected in the one stderr line; "re:" for a regex)
    (case_directory, 2, "input is not a file"),
    (case_missing, 2, "input file not found"),
    (case_empty, 2, "input file is empty"),
    (case_truncated, 2, "is not a readable ONNX model"),
    (case_random_bytes, 2, "re:is not (a readable|an) ONNX model"),
    (case_checker_fails, 2, "re:fails the ONNX checker.*'undefined_tensor'"),
    (case_external_data_missing, 2, "re:external data of .*ext.onnx"),
    (case_opset9, 2, "unsupported opset 9"),
    (case_dynamic_dims, 2, "re:dynamic dimensions .*; fix them with --input-shape x:1,3,"),
    (case_bad_input_shape, 2, "bad --input-shape 'x=1,3,8,8'"),
    (case_input_shape_not_numbers, 2, "bad --input-shape 'x:1,3,a,8'"),
    (case_input_shape_unknown_name, 2, "--input-shape names unknown input(s) ['y']"),
    (case_output_dir_missing, 2, "its directory does not exist"),
    (case_output_dir_readonly, 2, "is not writable"),
    (case_output_is_directory, 2, "it is a directory"),
    (case_ratio_one, 2, "--ratio must be in [0, 1), got 1.0"),
    (case_ratio_negative, 2, "--ratio must be in [0, 1), got -0.1"),
    (case_ratio_above_one, 2, "--ratio must be in [0, 1), got 1.5"),
    (case_ratio_not_a_number, 2, "argument --ratio: invalid float value: 'half'"),
    (case_unknown_criterion, 2, "unknown criterion 'taylor'"),
    (case_bad_scope, 2, "argument --scope: invalid choice: 'everywhere'"),
    (case_unknown_option, 2, "unrecognized arguments: --bogus"),
    (case_missing_output_arg, 2, "the following arguments are required: output"),
    (case_negative_tolerance, 2, "--tolerance must be >= 0"),
    (case_out_equals_in, 2, "output path equals the input path"),
    (case_out_equals_in_relative, 2, "output path equals the input path"),
    (case_out_symlink_to_in, 2, "output path equals the input path"),
    (case_report_equals_in, 2, "--report path equals the input path"),
    (case_plan_out_equals_output, 2, "--plan-out path equals the output path"),
    (case_plan_unknown_node, 2, "plan names 'NoSuchNode', which is not a channel producer"),
    (case_plan_missing, 2, "cannot read plan"),
    (case_plan_not_json, 2, "not a valid plan file"),
    (case_analyze_missing, 2, "input file not found"),
]


@pytest.mark.parametrize("case, code, phrase", BAD, ids=[c.__name__[5:] for c, _, _ in BAD])
def test_bad_input(tmp_path, case, code, phrase):
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "pruned.onnx"
    args = case(tmp_path, out)
    existing = {p: sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    got, stdout, stderr = run_cli(*args)
    assert got == code, (got, stderr)
    assert_one_line_error(stderr, phrase)
    assert "wrote" not in stdout
    assert not out.exists()
    assert list(outdir.iterdir()) == []                      # not even a temporary file
    now = {p: sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert now == existing                                   # nothing created, nothing modified


def test_checker_message_names_the_node(tmp_path):
    src = case_checker_fails(tmp_path, None)[0]
    node = next(n.name for n in onnx.load(str(src)).graph.node if "undefined_tensor" in n.input)
    code, _, err = run_cli(src, tmp_path / "out.onnx")
    assert code == 2
    assert_one_line_error(err, node)


def test_help_exits_zero():
    code, stdout, _ = run_cli("--help")
    assert code == 0 and "--ratio" in stdout and "--input-shape" in stdout


def test_prune_with_bench_reports_the_efficiency(tmp_path, model_path, capsys):
    code, out, _ = run_main(capsys, model_path, tmp_path / "out.onnx", "--ratio", "0.5", "--round-to", "1", "--bench",
                            "--runs", "3", "--warmup", "1", "--report", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    mac_speedup = report["before"]["macs"] / report["after"]["macs"]
    row = out.strip().splitlines()[-2].split()   # the pruned model's line of the bench table
    speedup, mmacs, efficiency = float(row[-3].rstrip("x")), float(row[-2]), float(row[-1])
    assert mac_speedup > 1 and mmacs == pytest.approx(report["after"]["macs"] / 1e6, abs=0.01)
    assert efficiency == pytest.approx(speedup / mac_speedup, abs=0.01)


# -- exit codes 1 and 3, and failures while writing (injected in-process) ------------------
def test_oracle_failure_exits_1_and_writes_nothing(tmp_path, model_path, capsys, monkeypatch):
    from onnxprune import verify
    monkeypatch.setattr(verify.OracleResult, "passed", lambda self, tolerance=0: False)
    out, plan = tmp_path / "out.onnx", tmp_path / "p.json"
    code, stdout, err = run_main(capsys, model_path, out, "--verify", "--plan-out", plan)
    assert code == 1
    assert_one_line_error(err, "; nothing written", prefix="onnxprune: masking oracle failed:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_oracle_failure_still_writes_the_report(tmp_path, model_path, capsys, monkeypatch):
    """The report says by how much the oracle failed; the model and the plan are not written."""
    from onnxprune import verify
    monkeypatch.setattr(verify.OracleResult, "passed", lambda self, tolerance=0: False)
    out, rep, plan = tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "p.json"
    code, stdout, err = run_main(capsys, model_path, out, "--ratio", "0.5", "--round-to", "1", "--verify",
                                 "--report", rep, "--plan-out", plan)
    assert code == 1
    assert_one_line_error(err, f"; model not written, report in {rep}", prefix="onnxprune: masking oracle failed:")
    assert "wrote" not in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "r.json"]
    report = json.loads(rep.read_text())
    assert report["oracle_passed"] is False
    assert isinstance(report["oracle_max_rel_diff"], float) and isinstance(report["oracle_noise"], float)
    assert report["after"]["params"] < report["before"]["params"]


def test_output_failing_the_checker_exits_3_and_writes_nothing(tmp_path, model_path, capsys, monkeypatch):
    """The CLI checks the pruned model's bytes while saving, before anything is written
    (onnxruntime's own run in the verify stage is switched off to reach it). The input passed
    the same check, so this is our bug: exit 3, not 2."""
    import onnxprune.api
    real = onnxprune.api.rewrite
    monkeypatch.setattr(onnxprune.api, "run_once", lambda slim, seed=0: None)

    def dangling(*args, **kwargs):
        slim = real(*args, **kwargs)
        slim.graph.node[-1].input.append("undefined_tensor")
        return slim
    monkeypatch.setattr(onnxprune.api, "rewrite", dangling)
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    code, _, err = run_main(capsys, model_path, out, "--report", rep)
    assert code == 3
    assert_one_line_error(err, "pruned model fails the ONNX checker", prefix="onnxprune: internal error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_internal_error_exits_3(tmp_path, model_path, capsys, monkeypatch):
    import onnxprune.api

    def boom(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(onnxprune.api, "prune_model", boom)
    monkeypatch.delenv("ONNXPRUNE_DEBUG", raising=False)
    code, _, err = run_main(capsys, model_path, tmp_path / "out.onnx")
    assert code == 3
    assert_one_line_error(err, "RuntimeError: boom", prefix="onnxprune: internal error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_unwritable_directory_even_as_root(tmp_path, model_path, capsys, monkeypatch):
    """The read-only case of the table is skipped as root; check the same branch in-process."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real(p, mode, **k))
    code, _, err = run_main(capsys, model_path, ro / "out.onnx")
    monkeypatch.undo()
    assert code == 2
    assert_one_line_error(err, f"directory {ro} is not writable")
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("fail_on", [".onnx", ".json"])
def test_write_failure_leaves_nothing(tmp_path, model_path, capsys, monkeypatch, fail_on):
    """A rename that fails (disk full, ...) while writing the model or the report: exit 2,
    no output, no report, no temporary file."""
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(fail_on):
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    before = sha(model_path)
    code, stdout, err = run_main(capsys, model_path, tmp_path / "out.onnx", "--report", tmp_path / "r.json")
    monkeypatch.undo()
    assert code == 2
    assert_one_line_error(err, "No space left on device")
    names = sorted(p.name for p in tmp_path.iterdir())
    # the report is renamed after the model: a report failure leaves the model in place
    assert names == (["model.onnx"] if fail_on == ".onnx" else ["model.onnx", "out.onnx"])
    assert sha(model_path) == before


# -- 3. control flow: If / Loop subgraphs reading an outer tensor ------------------------
def control_flow_net(kind: str):
    """conv1 -> relu -> conv2 -> [If | Loop] -> conv3, where the If branches / the Loop body
    read a channel tensor from the outer scope (with a (1, 8, 1, 1) constant) without the
    node listing it as an input. Returns the model and the conv producing that tensor."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    conv1 = b.nodes[-2].name
    h2 = b.conv(h, 8, 8)
    conv2 = b.nodes[-1].name
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    c_then = numpy_helper.from_array(np.full((1, 8, 1, 1), 0.5, np.float32), "c_then")
    c_else = numpy_helper.from_array(np.full((1, 8, 1, 1), 2.0, np.float32), "c_else")
    if kind == "If":  # branches read h2: conv2's output channels
        s = b.op("ReduceSum", [x], keepdims=0)
        cond = b.op("Greater", [s, b.const(np.array(0, np.float32))])
        then = helper.make_graph([helper.make_node("Add", [h2, "c_then"], ["t_out"], name="then_add")],
                                 "then", [], [out("t_out")], [c_then])
        other = helper.make_graph([helper.make_node("Mul", [h2, "c_else"], ["e_out"], name="else_mul")],
                                  "else", [], [out("e_out")], [c_else])
        b.nodes.append(helper.make_node("If", [cond], ["cf_out"], name="the_if",
                                        then_branch=then, else_branch=other))
        outer = conv2
    else:  # Loop over state = h2, 2 iterations of state = state * c + h (h: outer scope)
        state = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 8, 8])
        body = helper.make_graph(
            [helper.make_node("Mul", ["state_in", "c_else"], ["scaled"], name="body_mul"),
             helper.make_node("Add", ["scaled", h], ["state_out"], name="body_add"),
             helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), state("state_in")],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), state("state_out")],
            [c_else])
        trip = b.const(np.array(2, np.int64), "trip")
        cond = b.const(np.array(True), "cond")
        b.nodes.append(helper.make_node("Loop", [trip, cond, h2], ["cf_out"], name="the_loop", body=body))
        outer = conv1
    y = b.conv("cf_out", 8, 4)
    m = b.model([y])
    if not m.graph.output[0].type.tensor_type.HasField("shape"):  # inference stops at Loop
        m.graph.output[0].CopyFrom(helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4, 8, 8]))
    return m, outer


BROKEN_MODEL_SYMPTOMS = ("fails the ONNX checker", "cannot determine tensor shapes",
                         "cannot load the pruned model", "Incompatible dimensions", "InferenceError")


@pytest.mark.parametrize("kind", ["If", "Loop"])
def test_control_flow_prunes_safely_or_refuses(tmp_path, kind):
    src, out, rep = tmp_path / "cf.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    proto, outer = control_flow_net(kind)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(src))
    before = sha(src)
    code, stdout, stderr = run_cli(src, out, "--ratio", "0.5", "--round-to", "1", "--verify", "--report", rep)
    assert sha(src) == before
    assert "Traceback" not in stderr
    if code == 0:
        slim = onnx.load(str(out))
        onnx.checker.check_model(slim, full_check=True)
        runs_in_ort(out)
        report = json.loads(rep.read_text())
        assert report["oracle_passed"] is True
        # the channels the subgraph reads from the outer scope are frozen, naming the op
        touching = [g for g in report["groups"] if outer in g["feed_in"]]
        assert touching and all(g["frozen"] and kind in g["frozen"] for g in touching), touching
        assert all(g["channels_after"] == g["channels_before"] for g in touching)
    else:  # or a clear refusal, naming the op: not the symptom of having built a broken model
        assert code == 2, stderr
        assert_one_line_error(stderr, kind)
        assert not any(m in stderr for m in BROKEN_MODEL_SYMPTOMS), stderr
        assert not out.exists()


@pytest.mark.parametrize("kind", ["If", "Loop"])
def test_control_flow_never_writes_a_broken_model(tmp_path, kind):
    """Whatever the analysis decides, no invalid model is written and nothing crashes."""
    src, out = tmp_path / "cf.onnx", tmp_path / "out.onnx"
    onnx.save(control_flow_net(kind)[0], str(src))
    code, _, stderr = run_cli(src, out, "--ratio", "0.5", "--round-to", "1", "--verify")
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    if code == 0:
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
        runs_in_ort(out)
    else:
        assert_one_line_error(stderr, "")
        assert not out.exists()


def test_scalar_bool_input(tmp_path, capsys):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    b.inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    h = b.op("Relu", [b.conv(x, 3, 8)])
    h = b.op("Where", ["flag", h, b.op("Neg", [h])])
    src, out = tmp_path / "flag.onnx", tmp_path / "out.onnx"
    onnx.save(b.model([b.conv(h, 8, 4)]), str(src))
    code, _, err = run_main(capsys, src, out, "--ratio", "0.5", "--round-to", "1", "--verify")
    assert code == 0, err


# -- 4. QDQ-quantized convolutions ---------------------------------------------------------
def qdq_net():
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])

    def qdq(t):
        s, z = b.const(np.array(0.05, np.float32), "s"), b.const(np.array(0, np.int8), "z")
        return b.op("DequantizeLinear", [b.op("QuantizeLinear", [t, s, z]), s, z])

    def qconv(t, c_in, c_out):
        w = b.const(b.rng.integers(-100, 100, (c_out, c_in, 3, 3)).astype(np.int8), "wq")
        ws = b.const(b.rng.uniform(0.001, 0.01, c_out).astype(np.float32), "ws")
        wz = b.const(np.zeros(c_out, np.int8), "wz")
        wd = b.op("DequantizeLinear", [w, ws, wz], axis=0)
        return b.op("Conv", [t, wd, b.weight((c_out,), "b")], kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    h = b.op("Relu", [qconv(qdq(x), 3, 8)])
    h = b.op("Relu", [qconv(qdq(h), 8, 8)])
    h = b.op("Relu", [b.conv(h, 8, 8)])
    return b.model([b.conv(h, 8, 4)])


def test_qdq_channels_frozen(tmp_path):
    src, out, rep = tmp_path / "qdq.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(qdq_net(), str(src))
    before = sha(src)
    code, stdout, stderr = run_cli(src, out, "--ratio", "0.5", "--round-to", "1", "--verify", "--report", rep)
    assert code == 0, stderr
    assert sha(src) == before
    slim = onnx.load(str(out))
    onnx.checker.check_model(slim, full_check=True)
    runs_in_ort(out)
    report = json.loads(rep.read_text())
    assert report["oracle_passed"] is True
    reasons = [f["reason"] for f in report["frozen"]]
    assert any("QuantizeLinear" in r for r in reasons), reasons
    assert any("DequantizeLinear" in r for r in reasons), reasons
    # every group that a Q/DQ node feeds or that feeds one keeps all its channels
    q_nodes = {n.name for n in onnx.load(str(src)).graph.node if "Quantize" in n.op_type}
    for g in report["groups"]:
        if set(g["feed_in"]) & q_nodes or (g["frozen"] and "Quantize" in g["frozen"]):
            assert g["frozen"] and "Quantize" in g["frozen"], g
            assert g["channels_after"] == g["channels_before"]
    # the float tail after the last Q/DQ pair is still pruned
    assert report["after"]["params"] < report["before"]["params"]


def test_qdq_weights_stay_quantized(tmp_path, capsys):
    src, out = tmp_path / "qdq.onnx", tmp_path / "out.onnx"
    onnx.save(qdq_net(), str(src))
    assert run_main(capsys, src, out, "--ratio", "0")[0] == 0
    ops = lambda m: sorted(n.op_type for n in m.graph.node)
    assert ops(onnx.load(str(out))) == ops(onnx.load(str(src)))
    assert out.stat().st_size <= src.stat().st_size
