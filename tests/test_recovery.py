"""Recovery passes (docs/methods.md §5): each does what its formula says on calibration data,
and together they win back fidelity that plain pruning loses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxprune
from helpers import GraphBuilder
from onnxprune.api import analyze_model, prune_model
from onnxprune.errors import OnnxPruneError
from onnxprune.plan import Plan, classes_from_plan
from onnxprune.recover import parse_methods, recover
from onnxprune.runtime import model_session

ROOT = Path(__file__).resolve().parents[1]


def _samples(n=64, shape=(1, 4, 6, 6), seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + shape[1:]).astype(np.float32)


def _linear_pair(redundant=True, group=1):
    """x -> conv1 (1x1, 8 channels) -> conv2 (1x1 or 3x3): no nonlinearity, so a removed
    channel that is a combination of kept ones can be rebuilt exactly by refitting conv2."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [None, 4, 6, 6])
    w1 = b.rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    if redundant:
        w1[7] = w1[0] + 0.5 * w1[1]        # channel 7 = channel 0 + half of channel 1
    h = b.op("Conv", [x, b.const(w1), b.const(np.zeros(8, np.float32))])
    c1 = b.last()
    y = b.conv(h, 8, 6, k=3, group=group)
    c2 = b.last()
    return b.model([y]), c1, c2


def _batches(samples, size=16):
    return lambda: ({"x": samples[i:i + size]} for i in range(0, len(samples), size))


def _pruned(proto, plan, fold="none"):
    model, couplings = analyze_model(proto)
    slim, report = prune_model(proto, plan=plan, verify=True, fold=fold)
    assert report.oracle_passed
    return model, couplings, classes_from_plan(couplings, plan), slim


def _error(original, slim, samples):
    a = model_session(original).run(None, {"x": samples})[0]
    b = model_session(slim).run(None, {"x": samples})[0]
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_reconstruct_rebuilds_a_redundant_channel_exactly():
    proto, c1, c2 = _linear_pair()
    model, couplings, removed, slim = _pruned(proto, Plan({c1: [7]}))
    calib, held = _samples(64), _samples(32, seed=2)
    assert _error(model, slim, held) > 0.05
    fixed, notes = recover(model, slim, couplings, removed, _batches(calib), len(calib), "lsq")
    assert _error(model, fixed, held) < 1e-3   # exact up to the ridge term
    assert any(n.startswith("reconstruct: 1 layer(s) refit") for n in notes), notes
    # the rewrite's structure is untouched: same shapes, only values changed
    assert {k: v.shape for k, v in fixed.inits.items() if "recovered" not in k} == \
        {k: v.shape for k, v in slim.inits.items() if k in fixed.inits and "recovered" not in k}


def test_reconstruct_error_of_an_exact_fit_is_zero_not_a_crash():
    # normal equations can leave an exact fit a tiny negative sum of squares; the PP-OCRv4
    # recognition model hit it (math domain error) before the error was clipped at zero
    from onnxprune.passes.reconstruct import relative_error
    assert relative_error(-1e-12, 4.0) == 0.0
    assert relative_error(1.0, 4.0) == 0.5
    assert relative_error(0.0, 0.0) == 0.0


def test_reconstruct_per_conv_group():
    proto, c1, c2 = _linear_pair(redundant=False, group=2)
    model, couplings, removed, slim = _pruned(proto, Plan({c1: [3, 7]}))  # position 3 of both groups
    calib, held = _samples(64), _samples(32, seed=2)
    fixed, _ = recover(model, slim, couplings, removed, _batches(calib), len(calib), "lsq")
    assert _error(model, fixed, held) < 0.5 * _error(model, slim, held)
    w = fixed.inits[next(n for n in fixed.graph.node if n.name == c2).input[1]]
    assert w.shape == (6, 3, 3, 3)   # 2 groups of 3 inputs: grouped structure kept


def test_reconstruct_refits_a_gemm_after_flatten():
    b = GraphBuilder(seed=4)
    x = b.input("x", [None, 4, 6, 6])
    h = b.conv(x, 4, 8)
    c1 = b.last()
    h = b.op("Relu", [h])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    y = b.op("Gemm", [h, b.weight((5, 8)), b.weight((5,))], transB=1)
    proto = b.model([y])
    model, couplings, removed, slim = _pruned(proto, Plan({c1: [0, 5]}))
    calib, held = _samples(128), _samples(64, seed=2)
    fixed, _ = recover(model, slim, couplings, removed, _batches(calib), len(calib), "lsq")
    assert _error(model, fixed, held) < _error(model, slim, held)


def test_correct_statistics_gives_each_channel_the_original_mean_and_std():
    proto, c1, c2 = _linear_pair(redundant=False)
    model, couplings, removed, slim = _pruned(proto, Plan({c1: [2, 5]}))
    calib = _samples(64)
    fixed, _ = recover(model, slim, couplings, removed, _batches(calib), len(calib), "stats")
    out = next(n for n in model.graph.node if n.name == c2).output[0]
    a = model_session(model).run(None, {"x": calib})[0]
    b = model_session(fixed).run(None, {"x": calib})[0]
    assert out == model.output_names[0]
    np.testing.assert_allclose(b.mean(axis=(0, 2, 3)), a.mean(axis=(0, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(b.std(axis=(0, 2, 3)), a.std(axis=(0, 2, 3)), rtol=1e-3)


def test_compensate_means_restores_the_expected_output():
    """A 1x1 consumer of channels with a non-zero mean: after compensation the mean of the
    output over the calibration data is the original's (exact in expectation)."""
    b = GraphBuilder(seed=5)
    x = b.input("x", [None, 4, 6, 6])
    h = b.conv(x, 4, 8, k=1)
    c1 = b.last()
    h = b.op("Relu", [h])          # relu: channels with positive means
    y = b.conv(h, 8, 3, k=1)
    y_node = b.last()
    proto = b.model([y])
    model, couplings, removed, slim = _pruned(proto, Plan({c1: [1, 4, 6]}))
    calib = _samples(128)
    fixed, notes = recover(model, slim, couplings, removed, _batches(calib), len(calib), "means")
    # with the default fold the removed channels' zeroed-filter value relu(b) was folded:
    # the expectation replaces it and lands on the same bias
    from onnxprune.passes.fold_removed_constants import plan_folds
    folds, _ = plan_folds(model, couplings, removed, "exact")
    assert folds, "relu(bias) of the removed channels is a constant the fold takes"
    _, _, _, folded = _pruned(proto, Plan({c1: [1, 4, 6]}), fold="exact")
    refixed, _ = recover(model, folded, couplings, removed, _batches(calib), len(calib), "means", folds)
    bias_of = lambda m: m.inits[next(n for n in m.graph.node if n.name == y_node).input[2]]  # noqa: E731
    np.testing.assert_allclose(bias_of(refixed), bias_of(fixed), atol=1e-6)
    a = model_session(model).run(None, {"x": calib})[0].mean(axis=(0, 2, 3))
    before = model_session(slim).run(None, {"x": calib})[0].mean(axis=(0, 2, 3))
    after = model_session(fixed).run(None, {"x": calib})[0].mean(axis=(0, 2, 3))
    assert np.abs(before - a).max() > 1e-2
    np.testing.assert_allclose(after, a, atol=1e-4)
    assert any(n.startswith("compensate_means") for n in notes)


def test_methods_are_parsed_and_checked():
    assert parse_methods("lsq,means") == ("means", "lsq")   # pipeline order, whatever the spelling
    assert parse_methods("none") == ()
    with pytest.raises(OnnxPruneError, match="unknown recovery method"):
        parse_methods("magic")


def test_recover_without_calibration_is_an_error():
    proto, c1, _ = _linear_pair()
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        onnxprune.prune(proto, 0.5, round_to=1, recover="lsq")
    with pytest.raises(OnnxPruneError, match="recover must be a string"):
        onnxprune.prune(proto, 0.5, round_to=1, recover=True)


# -- end to end on a trained model -------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    from models.digits import load_digits_split
    xtr, _, xte, yte = load_digits_split(16)
    d = tmp_path_factory.mktemp("digits")
    idx = np.random.default_rng(0).choice(len(xtr), 256, replace=False)
    np.savez(d / "calib.npz", input=xtr[idx])
    np.savez(d / "test.npz", input=xte, labels=yte)
    return d


def test_calibration_recovers_the_trained_digits_resnet(digits_data):
    """Plain pruning of the trained digits ResNet to 60 % of its MACs leaves ~10 % accuracy;
    least squares and the end-to-end fit on 256 unlabelled training images bring it back near
    the original's."""
    src = ROOT / "models" / "digits_resnet.onnx"
    _, plain = onnxprune.prune(str(src), target_macs=0.6, calibration=str(digits_data / "calib.npz"),
                               eval_data=str(digits_data / "test.npz"), recover="none")
    _, fixed = onnxprune.prune(str(src), target_macs=0.6, calibration=str(digits_data / "calib.npz"),
                               eval_data=str(digits_data / "test.npz"), verify=True)
    out = fixed.fidelity.outputs[0]
    assert plain.fidelity.outputs[0].accuracy_pruned < 0.5
    assert out.accuracy_original > 0.99 and out.accuracy_pruned > 0.95, fixed.fidelity.summary()
    assert fixed.fidelity_unrecovered.outputs[0].accuracy_pruned < 0.5
    assert fixed.oracle_passed          # the oracle judged the exact rewrite, before recovery
    assert fixed.recovery["methods"] == ["lsq", "fit"] and fixed.recovery["calibration"]["samples"] == 256
    assert fixed.to_dict()["fidelity"]["outputs"][0]["top1_agreement"] > 0.95


def test_cli_prune_with_calibration_and_evaluate(digits_data, tmp_path):
    src, out, rep = ROOT / "models" / "digits_resnet.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "onnxprune", src, out, "--target-macs", "0.7", "--calib",
                        digits_data / "calib.npz", "--report", rep], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "With recovery (lsq, fit)" in p.stdout and "top-1 agreement" in p.stdout
    report = json.loads(rep.read_text())
    assert report["recovery"]["calibration"]["samples"] == 205      # a fifth held out
    assert report["recovery"]["evaluation"]["samples"] == 51
    e = subprocess.run([sys.executable, "-m", "onnxprune", "evaluate", src, out, "--data",
                        digits_data / "test.npz", "--labels", "labels", "--json"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert e.returncode == 0, e.stderr
    fid = json.loads(e.stdout)
    assert fid["outputs"][0]["accuracy_pruned"] > 0.9


def test_cli_bad_calibration_is_one_line(digits_data, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, wrong_name=np.zeros((4, 1, 16, 16), np.float32))
    p = subprocess.run([sys.executable, "-m", "onnxprune", ROOT / "models" / "digits_resnet.onnx",
                        tmp_path / "out.onnx", "--calib", bad], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:") and "input" in lines[0], p.stderr
    assert not (tmp_path / "out.onnx").exists()


def _drifting_case():
    """Calibrating on constant images teaches the refit nothing about the held-out ones: the
    least-squares layers drift."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 1, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 1, 16), 16)])
    h = b.op("Relu", [b.bn(b.conv(h, 16, 16), 16)])
    proto = b.model([b.conv(h, 16, 4)])
    rng = np.random.default_rng(0)
    calib = {"x": np.full((64, 1, 8, 8), 0.5, dtype=np.float32) + 0.01 * rng.standard_normal((64, 1, 8, 8)).astype(np.float32)}
    held = {"x": rng.standard_normal((32, 1, 8, 8)).astype(np.float32)}
    return proto, calib, dict(criterion="l1", round_to=1, eval_data=held)   # the same channels in every run


def test_auto_recovery_that_makes_held_out_outputs_worse_is_not_handed_back(monkeypatch):
    """When every recovery `auto` tries makes the held-out outputs worse, it returns the exact
    rewrite instead (saying so); asked for by name, recovery is kept and the report says it
    made things worse."""
    import onnxprune.recover
    monkeypatch.setattr(onnxprune.recover, "AUTO_ALTERNATIVE", "lsq")   # both tries drift
    proto, calib, same = _drifting_case()
    bare, bare_report = onnxprune.prune(proto, 0.5, recover="none", **same)
    slim, report = onnxprune.prune(proto, 0.5, calibration=calib, **same)
    assert report.recovery["rejected"]["methods"] == ["lsq", "fit"] and report.recovery["methods"] == []
    assert any("made the held-out outputs worse" in n for n in report.notes), report.notes
    assert report.fidelity.max_rel_error == pytest.approx(bare_report.fidelity.max_rel_error)
    assert {i.name: i.raw_data for i in slim.graph.initializer} == {i.name: i.raw_data for i in bare.graph.initializer}
    _, asked = onnxprune.prune(proto, 0.5, calibration=calib, recover="lsq", **same)
    assert asked.recovery["methods"] == ["lsq"] and "rejected" not in asked.recovery
    assert asked.fidelity.max_rel_error > bare_report.fidelity.max_rel_error
    assert any("made the held-out outputs worse" in n for n in asked.notes)


def test_auto_recovery_keeps_the_try_closest_to_the_original_on_held_out_data():
    """`auto` with real data tries lsq and mean compensation and keeps the better on the
    held-out samples (here the drifting lsq loses), or neither."""
    proto, calib, same = _drifting_case()
    error = {}
    for methods in ("none", "lsq", "means"):
        _, r = onnxprune.prune(proto, 0.5, calibration=calib, recover=methods, **same)
        error[methods] = r.fidelity.outputs[0].mean_rel_error
    _, auto = onnxprune.prune(proto, 0.5, calibration=calib, **same)
    chosen = ",".join(auto.recovery["methods"]) or "none"
    assert error[chosen] == min(error.values()), (chosen, error)
    assert auto.fidelity.outputs[0].mean_rel_error == pytest.approx(error[chosen])
    assert chosen == "means"   # what this case measures: lsq drifts, means helps
    assert any("means kept instead of lsq" in n for n in auto.notes), auto.notes
