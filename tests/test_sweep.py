"""`onnxprune sweep` and onnxprune.sweep: one prune per target of the trained digits ResNet,
with tiny calibration and labelled evaluation sets (48 train and 80 test images) so that
the whole file runs in seconds."""
from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest

import onnxprune.sweep as sweep_module
from onnxprune import OnnxPruneError, cli
from onnxprune.calibration import CalibrationSet
from onnxprune.cost import cost
from onnxprune.load import load
from onnxprune.sweep import parse_targets, sweep
from test_cli import ROOT, assert_one_line_error, run_main

MODEL = ROOT / "models" / "digits_resnet.onnx"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from models.digits import load_digits_split
    xtr, _, xte, yte = load_digits_split(16)
    d = tmp_path_factory.mktemp("sweep_data")
    np.savez(d / "calib.npz", input=xtr[:48])
    np.savez(d / "test.npz", input=xte[:80], labels=yte[:80])
    return d


@pytest.fixture(scope="module")
def cli_sweep(data, tmp_path_factory):
    """The full CLI once: calibration, labelled evaluation, bench, plot, JSON, saved models."""
    out = tmp_path_factory.mktemp("sweep_out")
    stdout, stderr = io.StringIO(), io.StringIO()   # in this process: no interpreter start
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["sweep", str(MODEL), "--targets", "0.6,0.8", "--calib", str(data / "calib.npz"),
                         "--eval-data", str(data / "test.npz"), "--bench", "--runs", "3", "--warmup", "1",
                         "--plot", str(out / "s.png"), "--json", str(out / "s.json"),
                         "--save-dir", str(out / "models")])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), json.loads((out / "s.json").read_text())


def table_rows(stdout: str) -> dict[str, list[str]]:
    """First cell -> cells, for the original's line and each target's."""
    lines = [line.split() for line in stdout.splitlines()]
    return {cells[0]: cells for cells in lines if cells and cells[0] in ("original", "0.8", "0.6")}


def test_table_has_a_row_per_target_largest_first(cli_sweep):
    _, stdout, result = cli_sweep
    rows = table_rows(stdout)
    assert list(rows) == ["original", "0.8", "0.6"]
    header = next(line.split() for line in stdout.splitlines() if line.split()[:2] == ["target", "MACs"])
    for column in ("accuracy", "top-1", "speedup", "latency"):
        assert column in header, header
    for row in result["rows"]:   # the table prints the JSON's numbers
        assert f"{row['macs_fraction']:.3f}" in rows[f"{row['target']:g}"]
        assert f"{row['fidelity']['accuracy']:.1%}" in rows[f"{row['target']:g}"]


def test_cost_falls_with_the_target_and_stays_under_it(cli_sweep):
    _, _, result = cli_sweep
    rows = result["rows"]
    assert [r["target"] for r in rows] == [0.8, 0.6]
    for r in rows:
        assert r["macs_fraction"] <= r["target"]
        assert r["macs"] == round(r["macs_fraction"] * result["original"]["macs"])
    assert rows[0]["macs"] > rows[1]["macs"] and rows[0]["params"] >= rows[1]["params"]


def test_accuracy_with_and_without_recovery_and_latency(cli_sweep):
    _, _, result = cli_sweep
    assert result["recovery"] == ["lsq"] and result["evaluation"]["samples"] == 80
    assert result["calibration"]["samples"] == 48        # all of it: the held-out set is --eval-data
    assert result["original"]["accuracy"] > 0.9
    for r in result["rows"]:
        f, u = r["fidelity"], r["fidelity_without_recovery"]
        assert f["samples"] == 80 and 0 <= f["accuracy"] <= 1 and 0 <= u["accuracy"] <= 1
        assert f["accuracy"] > u["accuracy"]            # lsq wins back what plain slicing lost
        assert r["fidelity_per_output"][0]["labelled_samples"] == 80
        assert r["latency"]["median_ms"] > 0 and r["latency"]["speedup"] > 0
    assert result["bench"]["runs"] == 3 and result["original"]["latency"]["median_ms"] > 0


def test_plot_and_saved_models(cli_sweep):
    out, stdout, result = cli_sweep
    png = (out / "s.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    for r in result["rows"]:
        path = out / "models" / f"digits_resnet_macs{r['target']:g}.onnx"
        assert cost(load(str(path))).macs == r["macs"]
        assert f"wrote {path}" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["models", "s.json", "s.png"]   # no temporary left


def test_library_reads_the_model_and_the_data_once(data, monkeypatch):
    reads, loads = [], []
    real_read, real_load = sweep_module.read_proto, sweep_module.load_calibration
    monkeypatch.setattr(sweep_module, "read_proto", lambda p: reads.append(p) or real_read(p))
    monkeypatch.setattr(sweep_module, "load_calibration", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    result = sweep(str(MODEL), [0.7, 0.9], metric="params", calibration=str(data / "calib.npz"),
                   calibration_limit=30, eval_data=str(data / "test.npz"), criterion="l2")
    assert len(reads) == 1 and len(loads) == 2
    assert [r.target for r in result.rows] == [0.9, 0.7]
    assert all(r.params_fraction <= r.target for r in result.rows)
    assert result.calibration["samples"] == 30 and result.options["criterion"] == "l2"
    assert all(isinstance(r.report.fidelity.outputs[0].accuracy_pruned, float) for r in result.rows)
    assert all(r.model is None and r.latency is None for r in result.rows)   # nothing kept unasked
    assert "latency" not in result.table() and result.to_dict()["bench"] is None


def test_library_takes_loaded_sets_and_refuses_its_own_arguments(data):
    from onnxprune.calibration import load_calibration
    held = load_calibration(str(data / "test.npz"), str(MODEL))
    assert isinstance(held, CalibrationSet)
    result = sweep(str(MODEL), "0.8", eval_data=held, recover="none")
    assert result.rows[0].fidelity["accuracy"] is not None and result.rows[0].fidelity_unrecovered is None
    with pytest.raises(OnnxPruneError, match="sweep sets \\['ratio'\\] itself"):
        sweep(str(MODEL), [0.8], ratio=0.3)
    with pytest.raises(OnnxPruneError, match="target kind"):
        sweep(str(MODEL), [0.8], metric="flops")


def test_without_calibration_cost_only_and_data_free_recovery(tmp_path, capsys):
    code, out, err = run_main(capsys, "sweep", MODEL, "--targets", "0.8", "--json", tmp_path / "s.json")
    assert code == 0, err
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["recovery"] == ["stats"]            # `auto` without data: from the BN statistics
    assert result["rows"][0]["fidelity"] is None and result["evaluation"] is None
    header = next(line.split() for line in out.splitlines() if line.startswith("  target"))
    assert header == ["target", "MACs", "MAC", "frac", "params", "param", "frac", "prune", "s"]


def test_eval_data_alone_measures_data_free_recovery(data, capsys):
    code, out, err = run_main(capsys, "sweep", MODEL, "--targets", "0.8", "--eval-data", data / "test.npz")
    assert code == 0, err
    assert "acc. no rec." in out and "with labels" in out


def test_parse_targets():
    assert parse_targets("0.5, 0.9,0.7") == [0.9, 0.7, 0.5]
    assert parse_targets([1, 0.25]) == [1.0, 0.25]
    for bad, message in (("1.5", "fractions in (0, 1], got 1.5"), ("0", "got 0"), ("nan", "got nan"),
                         ("abc", "comma list of numbers"), ("", "comma list of numbers"),
                         ("0.8,0.8", "repeats a target"), ([], "gives no target"), ([True], "numbers")):
        with pytest.raises(OnnxPruneError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            parse_targets(bad)


@pytest.mark.parametrize("args, phrase", [
    (["nope.onnx", "--targets", "0.8"], "input file not found"),
    ([MODEL, "--targets", "1.5"], "--targets must be fractions in (0, 1], got 1.5"),
    ([MODEL, "--targets", "abc"], "--targets must be a comma list of numbers, got 'abc'"),
    ([MODEL], "the following arguments are required: --targets"),
    ([MODEL, "--targets", "0.8", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ([MODEL, "--targets", "0.8", "--target-kind", "flops"], "invalid choice: 'flops'"),
    ([MODEL, "--targets", "0.8", "--runs", "0"], "--runs must be an integer >= 1"),
    ([MODEL, "--targets", "0.8", "--criterion", "taylor"], "unknown criterion 'taylor'"),
    ([MODEL, "--targets", "0.8", "--json", MODEL], "--json path"),
    ([MODEL, "--targets", "0.8", "--plot", "{tmp}/no/such/dir/s.png"], "directory"),
    ([MODEL, "--targets", "0.8", "--json", "{tmp}/a", "--plot", "{tmp}/a"], "would be written twice"),
    ([MODEL, "--targets", "0.8", "--save-dir", "{tmp}/file"], "is not a directory"),
    ([MODEL, "--targets", "0.8", "--calib", "{tmp}/missing.npz"], "calibration data not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, phrase):
    (tmp_path / "file").write_text("")
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run_main(capsys, "sweep", *args, "--json", tmp_path / "out.json") if "--json" not in args \
        else run_main(capsys, "sweep", *args)
    assert code == 2
    assert_one_line_error(err, phrase)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_plot_without_matplotlib_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib now raises ImportError
    monkeypatch.setattr(sweep_module, "prune_model", lambda *a, **k: pytest.fail("pruned before the check"))
    code, _, err = run_main(capsys, "sweep", MODEL, "--targets", "0.8", "--plot", tmp_path / "s.png")
    assert code == 2
    assert_one_line_error(err, "--plot needs matplotlib, which is not installed (pip install 'onnxprune[plot]')")
    assert not list(tmp_path.iterdir())
