"""The command line around the pipeline: --version, subcommands and the short form, -q/-v,
progress on a terminal, nonsense option values, the report's schema, the CUDA check made
before anything is written, and the exit codes of a model onnxruntime cannot run."""
from __future__ import annotations

import argparse
import ast
import io
import json
import logging
import sys

import onnx
import pytest

import onnxprune
from helpers import residual_net
from onnxprune import cli, progress
from test_api import break_the_rewrite, unrunnable_model
from test_cli import ROOT, assert_one_line_error, run_cli, run_main, sha

STAGES = ["load", "analyze", "score", "allocate", "fold", "rewrite", "verify", "recover", "save"]  # recover: BN statistics


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(residual_net(), str(path))
    return path


def dynamic_model(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(residual_net(x_shape=("N", 3, "H", "W")), str(path))
    return path


# -- --version, subcommands, the short form ----------------------------------------------------
def test_version_is_a_plain_literal_printed_by_the_cli():
    tree = ast.parse((ROOT / "onnxprune" / "__init__.py").read_text())
    literals = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)]
    assert literals == [onnxprune.__version__]
    code, out, err = run_cli("--version")
    assert (code, out, err) == (0, f"onnxprune {onnxprune.__version__}\n", "")


def test_help_lists_the_subcommands_with_one_line_descriptions(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    commands = out[out.index("commands:"):out.index("The short form")]
    for name in ("prune", "shrink", "analyze", "bench", "evaluate", "sweep", "estimate"):
        (line,) = [line for line in commands.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) > 3, line  # a description after the name
    assert "usage: onnxprune prune " in out   # the short form's options, as before subcommands
    for name in ("prune", "shrink", "analyze", "bench", "evaluate", "sweep", "estimate"):
        code, out, _ = run_main(capsys, name, "--help")
        assert code == 0 and out.startswith(f"usage: onnxprune {name} "), out


def test_subcommands_are_argparse_subparsers():
    top, parsers = cli._parsers()
    (action,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(action.choices) == ["analyze", "bench", "estimate", "evaluate", "prune", "reconfigure", "shrink", "sweep"]
    assert all(action.choices[name] is parsers[name] for name in parsers)


def test_prune_subcommand_is_the_short_form(tmp_path, model_path, capsys):
    short, long = tmp_path / "short.onnx", tmp_path / "long.onnx"
    code, out_short, err = run_main(capsys, model_path, short, "--ratio", "0.5", "--round-to", "1")
    assert code == 0, err
    code, out_long, err = run_main(capsys, "prune", model_path, long, "--ratio", "0.5", "--round-to", "1")
    assert code == 0, err
    assert short.read_bytes() == long.read_bytes()
    strip = lambda out: [line for line in out.splitlines() if "Pass time" not in line and "wrote" not in line]
    assert strip(out_short) == strip(out_long)


def test_subcommand_errors_point_to_their_own_help(tmp_path, model_path):
    code, _, err = run_cli("bench", model_path, "--bogus")
    assert code == 2
    assert err == "onnxprune: error: unrecognized arguments: --bogus (see 'onnxprune bench --help')\n"
    code, _, err = run_cli(model_path, tmp_path / "out.onnx", "--bogus")
    assert code == 2
    assert err == "onnxprune: error: unrecognized arguments: --bogus (see 'onnxprune prune --help')\n"
    assert not (tmp_path / "out.onnx").exists()


# -- -q / -v ------------------------------------------------------------------------------------
def test_quiet_prints_nothing_but_writes(tmp_path, model_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_main(capsys, "-q", model_path, out, "--ratio", "0.5", "--round-to", "1")
    assert (code, stdout, stderr) == (0, "", "")
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_quiet_still_prints_errors(tmp_path, capsys):
    code, stdout, stderr = run_main(capsys, "prune", "--quiet", tmp_path / "nope.onnx", tmp_path / "out.onnx")
    assert code == 2 and stdout == ""
    assert stderr == f"onnxprune: error: input file not found: {tmp_path / 'nope.onnx'}\n"


def test_verbose_adds_stage_timings_on_stderr_only(tmp_path, model_path, capsys):
    args = ["--ratio", "0.5", "--round-to", "1"]
    code, plain, err = run_main(capsys, model_path, tmp_path / "a.onnx", *args)
    assert code == 0 and err == ""
    code, verbose, err = run_main(capsys, model_path, tmp_path / "b.onnx", "-v", *args)
    assert code == 0
    strip = lambda out: [line for line in out.splitlines() if "Pass time" not in line and "wrote" not in line]
    assert strip(verbose) == strip(plain)          # stdout: today's output
    timed = [line.split()[3].rstrip(":") for line in err.splitlines() if line.startswith("onnxprune: debug: stage ")]
    assert timed == STAGES, err
    assert all(line.startswith("onnxprune: debug: ") for line in err.splitlines()), err
    assert "channel classes" in err                # debug detail beyond the timings


def test_quiet_and_verbose_on_analyze_and_bench(model_path, capsys):
    code, listing, err = run_main(capsys, "analyze", model_path)
    assert code == 0 and err == ""
    code, quiet, err = run_main(capsys, "analyze", "-q", model_path)
    assert (code, quiet, err) == (0, listing, "")  # the listing is the result, not a log
    code, verbose, err = run_main(capsys, "analyze", "-v", model_path)
    assert code == 0 and verbose == listing
    assert "onnxprune: debug: stage load: " in err and "onnxprune: debug: stage analyze: " in err
    code, table, err = run_main(capsys, "bench", "-v", model_path, "--runs", "2", "--warmup", "0")
    assert code == 0 and "speedup" in table
    assert "onnxprune: debug: stage sessions: " in err
    code, table, err = run_main(capsys, "bench", "-q", model_path, "--runs", "2", "--warmup", "0")
    assert code == 0 and "speedup" in table and err == ""


def test_quiet_and_verbose_exclude_each_other(tmp_path, model_path):
    code, _, err = run_cli(model_path, tmp_path / "out.onnx", "-q", "-v")
    assert code == 2
    assert_one_line_error(err, "argument -v/--verbose: not allowed with argument -q/--quiet")
    assert not (tmp_path / "out.onnx").exists()


def test_the_cli_leaves_logging_as_it_found_it(tmp_path, model_path, capsys):
    logger = logging.getLogger("onnxprune")
    before = (list(logger.handlers), logger.level, logger.propagate)
    assert run_main(capsys, "-v", model_path, tmp_path / "out.onnx")[0] == 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before


# -- progress -------------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class RecordingTicker:
    started: list = []

    def __init__(self, name):
        RecordingTicker.started.append(name)

    def stop(self):
        pass


@pytest.mark.parametrize("flags, terminal, shown", [([], True, STAGES), (["-q"], True, []), ([], False, [])],
                         ids=["terminal", "terminal-quiet", "pipe"])
def test_progress_only_on_a_terminal_and_not_quiet(tmp_path, model_path, capsys, monkeypatch, flags, terminal,
                                                   shown):
    monkeypatch.setattr(progress, "_Ticker", RecordingTicker)
    monkeypatch.setattr(RecordingTicker, "started", [])
    if terminal:
        monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert cli.main([*flags, str(model_path), str(tmp_path / "out.onnx"), "--verify"]) == 0
    assert RecordingTicker.started == shown
    assert not progress.enabled()   # switched off again after the command


def test_progress_draws_and_erases_a_slow_stage(monkeypatch):
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress, "DELAY_S", 0.01)
    previous = progress.enable(True)
    timings = {}
    try:
        with progress.stage("score", timings):
            for _ in range(500):  # until the ticker has drawn once (5 s at most)
                if stream.getvalue():
                    break
                progress.time.sleep(0.01)
    finally:
        progress.enable(previous)
    text = stream.getvalue()
    assert text.startswith("\ronnxprune: score ") and text.endswith("\r\033[K"), repr(text)
    assert timings["score"] > 0


def test_progress_is_silent_when_disabled(monkeypatch):
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    assert not progress.enabled()
    with progress.stage("score"):
        progress.time.sleep(0.05)
    assert stream.getvalue() == ""


# -- the report's schema ---------------------------------------------------------------------------
def test_report_starts_with_schema_version(tmp_path, model_path, capsys):
    rep = tmp_path / "r.json"
    assert run_main(capsys, model_path, tmp_path / "out.onnx", "--report", rep)[0] == 0
    report = json.loads(rep.read_text())
    assert list(report)[0] == "schema_version" and report["schema_version"] == 1


# -- nonsense option values: exit 2, one line, nothing written --------------------------------------
def _plan(tmp_path, content: bytes | str):
    path = tmp_path / "plan.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


NONSENSE = [  # (arguments after IN OUT, or a function of tmp_path giving them; the whole stderr line)
    (["--min-keep", "inf"], "--min-keep must be a count >= 1 or a fraction in (0, 1), got 'inf'"),
    (["--min-keep", "nan"], "--min-keep must be a count >= 1 or a fraction in (0, 1), got 'nan'"),
    (["--min-keep", "-1"], "--min-keep must be a count >= 1 or a fraction in (0, 1), got '-1'"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
    (["--bench", "--runs", "0"], "--runs must be an integer >= 1, got 0"),
    (["--tolerance", "nan"], "--tolerance must be >= 0 and finite, got nan"),
    (["--tolerance", "inf"], "--tolerance must be >= 0 and finite, got inf"),
    (["--ratio", "nan"], "--ratio must be in [0, 1), got nan"),
    (["--target-macs", "nan"], "--target-macs must be in (0, 1], got nan"),
    (["--target-macs", "inf"], "--target-macs must be in (0, 1], got inf"),
    (["--target-macs", "0"], "--target-macs must be in (0, 1], got 0.0"),
    (["--target-macs", "1.5"], "--target-macs must be in (0, 1], got 1.5"),
    (["--target-params", "-0.5"], "--target-params must be in (0, 1], got -0.5"),
    (["--round-to", "0"], "--round-to must be an integer >= 1, got 0"),
    (["--input-shape", "x:1,3,8,8", "--input-shape", "x:1,3,16,16"],
     "--input-shape gives 'x' two different shapes: 1,3,8,8 and 1,3,16,16"),
    (lambda t: ["--plan", _plan(t, '{"removed": {"Conv4": [1.5]}}')],
     'PLAN: not a valid plan file (removed["Conv4"] holds 1.5; channel indices are integers)'),
    (lambda t: ["--plan", _plan(t, '{"removed": {"Conv4": ["3"]}}')],
     "PLAN: not a valid plan file (removed[\"Conv4\"] holds '3'; channel indices are integers)"),
    (lambda t: ["--plan", _plan(t, '{"removed": {"Conv4": [true]}}')],
     'PLAN: not a valid plan file (removed["Conv4"] holds True; channel indices are integers)'),
    (lambda t: ["--plan", _plan(t, b'{"removed": {"\xff": [1]}}')], "PLAN: not a valid plan file (not UTF-8 text)"),
    (lambda t: ["--plan", _plan(t, "[" * 100_000 + "]" * 100_000)],
     "PLAN: not a valid plan file (JSON nested too deeply)"),
    (lambda t: ["--plan", _plan(t, '{"removed": [["Conv4", 1]]}')],
     'PLAN: not a valid plan file ("removed" must be an object {producer node: [channel indices]}, got an array)'),
    (lambda t: ["--plan", _plan(t, '{"removed": {"Conv4": 1}}')],
     'PLAN: not a valid plan file (removed["Conv4"] must be a list of channel indices, got a number)'),
    (lambda t: ["--plan", _plan(t, '[{"removed": {}}]')],
     'PLAN: not a valid plan file (expected an object with a "removed" entry)'),
]


@pytest.mark.parametrize("args, message", NONSENSE, ids=[str(i) for i in range(len(NONSENSE))])
def test_nonsense_option_values(tmp_path, args, message, capsys):
    args = args(tmp_path) if callable(args) else args
    src = dynamic_model(tmp_path) if "--input-shape" in args else tmp_path / "model.onnx"
    if not src.exists():
        onnx.save(residual_net(), str(src))
    outdir = tmp_path / "out"
    outdir.mkdir()
    existing = {p: sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    code, stdout, stderr = run_main(capsys, src, outdir / "pruned.onnx", *args)
    assert code == 2
    assert stderr == f"onnxprune: error: {message.replace('PLAN', str(tmp_path / 'plan.json'))}\n"
    assert stdout == ""                       # refused before any work: no table either
    assert list(outdir.iterdir()) == []
    assert {p: sha(p) for p in tmp_path.rglob("*") if p.is_file()} == existing


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs must be an integer >= 1, got 0"),
    (["--batch", "0"], "--batch must be an integer >= 1, got 0"),
    (["--threads", "-1"], "--threads must be an integer >= 1, got -1"),
    (["--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
    (["--input-shape", "x:1,3,8,8", "--input-shape", "x:1,3,9,9"],
     "--input-shape gives 'x' two different shapes: 1,3,8,8 and 1,3,9,9"),
])
def test_nonsense_bench_values(model_path, capsys, args, message):
    code, stdout, stderr = run_main(capsys, "bench", model_path, *args)
    assert (code, stdout, stderr) == (2, "", f"onnxprune: error: {message}\n")


def test_nonsense_values_are_refused_by_a_real_process(tmp_path, model_path):
    """The in-process cases above, once through `python -m onnxprune`: no traceback either."""
    out = tmp_path / "out.onnx"
    code, stdout, stderr = run_cli(model_path, out, "--min-keep", "inf")
    assert code == 2 and stdout == ""
    assert stderr == "onnxprune: error: --min-keep must be a count >= 1 or a fraction in (0, 1), got 'inf'\n"
    assert not out.exists()


def test_the_same_input_shape_twice_is_fine(tmp_path, capsys):
    src, out = dynamic_model(tmp_path), tmp_path / "out.onnx"
    code, _, err = run_main(capsys, src, out, "--input-shape", "x:1,3,8,8", "--input-shape", "x:1,3,8,8")
    assert code == 0, err
    assert out.exists()


# -- CUDA: checked before anything is written ---------------------------------------------------------
def test_bench_with_an_absent_provider_fails_before_writing(tmp_path, model_path, capsys, monkeypatch):
    from onnxprune import bench
    monkeypatch.setattr(bench, "provider_available", lambda provider: provider == "cpu")
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, stderr = run_main(capsys, model_path, out, "--bench", "--provider", "cuda", "--report", rep)
    assert code == 2
    assert stderr == ("onnxprune: error: the cuda execution provider is not available in this onnxruntime "
                      "build (install onnxruntime-gpu on a machine with a GPU)\n")
    assert stdout == ""                            # not even pruned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    code, _, stderr = run_main(capsys, "bench", model_path, "--provider", "cuda")
    assert code == 2 and "cuda execution provider is not available" in stderr
    # without --bench the provider does not matter
    assert run_main(capsys, model_path, out, "--provider", "cuda")[0] == 0


# -- a model onnxruntime cannot run ------------------------------------------------------------------
@pytest.mark.parametrize("options", [[], ["--verify"], ["--fold", "none"]])
def test_input_onnxruntime_cannot_run_is_bad_input(tmp_path, options):
    src, out = tmp_path / "bf16.onnx", tmp_path / "out.onnx"
    onnx.save(unrunnable_model(), str(src))
    code, stdout, stderr = run_cli(src, out, "--ratio", "0.5", "--round-to", "1", *options)
    assert code == 2
    assert_one_line_error(stderr, "re:^onnxprune: error: onnxruntime cannot run the input model: "
                                  r".*LpNorm")
    assert not out.exists()


@pytest.mark.parametrize("options", [[], ["--verify"]])
def test_pruned_model_onnxruntime_cannot_run_is_an_internal_error(tmp_path, model_path, capsys, monkeypatch,
                                                                  options):
    break_the_rewrite(monkeypatch)
    monkeypatch.delenv("ONNXPRUNE_DEBUG", raising=False)
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, stderr = run_main(capsys, model_path, out, "--report", rep, *options)
    assert code == 3
    assert_one_line_error(stderr, "RuntimeError: onnxruntime cannot run the pruned model, though it runs the "
                                  "input model: ", prefix="onnxprune: internal error:")
    assert "com.example" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
