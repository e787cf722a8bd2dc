"""FTWT: the estimate (onnxprune/ftwt.py), the gated model (onnxprune/gating.py) and
`onnxprune estimate`, on the trained digits models with a few dozen images."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.calibration import load_calibration
from onnxprune.cost import CostTracker, cost
from onnxprune.ftwt import build_estimator, estimate
from onnxprune.gating import emit_gated, fit_logistic, insert_gate, predicted_masks
from onnxprune.load import load
from onnxprune.recover import batches_of
from onnxprune.runtime import model_session
from onnxprune.saliency.data import CalibrationData
from onnxprune.saliency.heatmap import MassRanking
from test_cli import ROOT, assert_one_line_error, run_main, sha

MODELS = ["digits_resnet", "digits_mobilenet"]


@pytest.fixture(scope="module")
def digits():
    from models.digits import load_digits_split
    xtr, _, xte, yte = load_digits_split(16)
    return xtr[:48], xte[:60], yte[:60]


@pytest.fixture(scope="module", params=[(m, r) for m in MODELS for r in (1, 8)], ids=lambda p: f"{p[0]}-round{p[1]}")
def built(request, digits):
    name, round_to = request.param
    path = str(ROOT / "models" / f"{name}.onnx")
    return path, build_estimator(path, [{"input": digits[0]}], round_to=round_to)


def test_mass_ranking_keeps_the_fewest_channels_reaching_r():
    x = np.array([[5.0, 3.0, 2.0, 0.0]]).reshape(1, 4, 1, 1)       # shares 0.5, 0.3, 0.2, 0
    ranking = MassRanking.of(x, 1, np.arange(4), 4)
    assert ranking.keep(0.5).tolist() == [[True, False, False, False]]
    assert ranking.keep(0.7).tolist() == [[True, True, False, False]]
    assert ranking.keep(0.81).tolist() == [[True, True, True, False]]
    assert ranking.keep(1.0).tolist() == [[True, True, True, False]]   # a silent channel never counts


def test_static_estimate_is_the_macs_the_prune_achieves(built):
    """The issue's bar: the static MACs predicted for r within 2 points of what pruning by
    that r's plan reaches, over a range of r, with and without rounding."""
    path, (_, _, _, _, estimator) = built
    for r in (0.6, 0.8, 0.9, 0.97):
        point = estimator.point(r)
        _, report = onnxprune.apply_plan(path, estimator.static_plan(point))
        achieved = report.after["macs"] / report.before["macs"]
        assert abs(point.static_macs - achieved) < 0.02, (r, point.static_macs, achieved)
        assert achieved < 1.0


def test_costs_grow_with_r_and_bisection_hits_the_target(built):
    _, (_, _, _, _, estimator) = built
    points = [estimator.point(r) for r in (0.3, 0.6, 0.8, 0.95, 1.0)]
    for a, b in zip(points, points[1:]):
        assert b.dynamic_macs >= a.dynamic_macs and b.static_macs >= a.static_macs
        assert all(kb >= ka for ka, kb in zip(a.kept, b.kept))
    for kind in ("dynamic", "static"):
        r = estimator.solve(0.75, kind)
        macs = [getattr(estimator.point(m), f"{kind}_macs") for m in (r, min(1.0, r + 0.02))]
        assert macs[0] <= 0.75 < macs[1] or r == 1.0


def test_dynamic_macs_of_one_sample_equal_the_tracked_removal(built):
    """macs_without_each (all samples at once) agrees with removing the same classes one by one."""
    _, (model, couplings, _, _, estimator) = built
    rng = np.random.default_rng(0)
    removed = rng.random((3, len(estimator.classes))) < 0.4
    batch = estimator.tracker.macs_without_each(estimator.slots, removed)
    for row, value in zip(removed, batch):
        tracker = CostTracker(model, couplings)
        for c in estimator.classes[row]:
            tracker.remove(int(c))
        assert value == pytest.approx(tracker.macs)


def test_logistic_heads_learn_separable_masks():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * 3 + 1
    y = np.stack([x[:, 0] > 1, x[:, 1] + x[:, 2] < 2, np.ones(200, bool)], axis=1)
    weight, bias = fit_logistic(x, y)
    assert ((x @ weight.T + bias > 0) == y).mean() > 0.97


def test_gate_that_keeps_everything_changes_nothing_and_one_that_drops_a_channel_zeroes_it(built, digits):
    _, (model, _, _, _, estimator) = built
    layer = estimator.layers[0]
    head_input = model.index().nodes[layer.feed_in].input[0]
    c, k = model.shapes[head_input][1], len(layer.classes)
    bias = np.full(k, 5.0)
    bias[0] = -5.0                                             # channel 0 always off
    gated = model.copy()
    insert_gate(gated, layer, head_input, np.zeros((k, c)), bias)
    onnx.checker.check_model(gated.to_proto(), full_check=True)
    feeds = {"input": digits[1][:1]}
    before = model_session(model, outputs=[layer.tensor]).run(None, feeds)
    masked = [n.output[0] for n in gated.graph.node if n.op_type == "Mul" and layer.tensor in n.input][0]
    after = model_session(gated, outputs=[masked]).run(None, feeds)
    assert np.all(after[-1][:, 0] == 0) and np.any(before[-1][:, 0] != 0)
    np.testing.assert_array_equal(after[-1][:, 1:], before[-1][:, 1:])


def test_emitted_heads_predict_in_onnx_what_was_fitted(built, digits):
    path, (model, _, calib, _, estimator) = built
    held = load_calibration([{"input": digits[1], "labels": digits[2]}], model)
    gated = emit_gated(estimator, calib, 0.85, held)
    assert len(gated.heads) == len(estimator.layers) > 0
    masks = predicted_masks(gated.model, gated.heads, CalibrationData(batches_of(model, calib), len(calib)))
    for head, mask in zip(gated.heads, masks):
        assert mask.mean() == pytest.approx(head.predicted_kept, abs=1 / mask.size + 1e-9)
        assert head.agreement > 0.6
    assert gated.head_macs > 0 and gated.head_macs + 0.2 < gated.dynamic_macs < 1.0
    accuracy = gated.fidelity.outputs[0].accuracy_pruned
    assert accuracy is not None and 0.5 < accuracy <= 1.0
    onnx.checker.check_model(gated.model.to_proto(), full_check=True)


def test_estimate_table_and_target(built):
    _, (_, _, _, _, estimator) = built
    result = estimate(estimator, (0.7, 1.0), target_macs=0.8)
    assert [p.mass for p in result.points] == [0.7, 1.0]
    assert result.target["dynamic"].dynamic_macs <= 0.8 and result.target["static"].static_macs <= 0.8
    assert "target MACs 0.8 (static): r = " in result.table()
    assert json.loads(json.dumps(result.to_dict()))["target"]["macs"] == 0.8


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    d = tmp_path_factory.mktemp("ftwt")
    np.savez(d / "calib.npz", input=digits[0])
    np.savez(d / "test.npz", input=digits[1], labels=digits[2])
    return d


def test_cli_estimate_writes_gated_model_plan_and_json(files, tmp_path, capsys):
    model = ROOT / "models" / "digits_resnet.onnx"
    before = sha(model)
    code, out, err = run_main(capsys, "estimate", model, "--calib", files / "calib.npz", "--target-macs", "0.75",
                              "--emit-gated", tmp_path / "gated.onnx", "--plan-out", tmp_path / "plan.json",
                              "--json", tmp_path / "e.json", "--eval-data", files / "test.npz", "--round-to", "1")
    assert code == 0, err
    assert "target MACs 0.75 (dynamic): r = " in out and "runs no faster" in out
    assert sha(model) == before
    onnx.checker.check_model(str(tmp_path / "gated.onnx"), full_check=True)
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["gated"]["fidelity"]["outputs"][0]["accuracy_pruned"] is not None
    code, out, err = run_main(capsys, "prune", model, tmp_path / "static.onnx", "--plan", tmp_path / "plan.json",
                              "--recover", "none")
    assert code == 0, err
    achieved = cost(load(str(tmp_path / "static.onnx"))).macs / cost(load(str(model))).macs
    assert abs(achieved - record["target"]["static"]["static_macs"]) < 0.02


@pytest.mark.parametrize("args, phrase", [
    ([], "the following arguments are required: --calib"),
    (["--calib", "{calib}", "--emit-gated", "{tmp}/g.onnx"], "--emit-gated and --plan-out need --target-macs or --mass"),
    (["--calib", "{calib}", "--target-macs", "0"], "--target-macs must be in (0, 1], got 0.0"),
    (["--calib", "{calib}", "--masses", "0.5,2"], "--masses must be fractions in (0, 1], got 2"),
    (["--calib", "{calib}", "--mass", "0.8", "--emit-gated", "{model}"], "output path equals the input path"),
    (["--calib", "{tmp}/missing.npz"], "missing.npz"),
    (["--calib", "{calib}", "--target-macs", "0.01", "--emit-gated", "{tmp}/g.onnx"], "is not reachable by gating"),
])
def test_cli_estimate_bad_input(files, tmp_path, capsys, args, phrase):
    model = ROOT / "models" / "digits_resnet.onnx"
    before = sha(model)
    filled = [a.format(calib=files / "calib.npz", tmp=tmp_path, model=model) for a in args]
    code, _, err = run_main(capsys, "estimate", model, *filled)
    assert code == 2
    assert_one_line_error(err, phrase)
    assert sha(model) == before and not (tmp_path / "g.onnx").exists()


def test_cli_estimate_on_a_model_without_gated_layers(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).random((4, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "one.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).random((8, 3, 8, 8), dtype=np.float32))
    code, out, err = run_main(capsys, "estimate", tmp_path / "one.onnx", "--calib", tmp_path / "calib.npz")
    assert code == 0 and out.startswith("no layer can be gated: "), (out, err)
    code, _, err = run_main(capsys, "estimate", tmp_path / "one.onnx", "--calib", tmp_path / "calib.npz",
                            "--mass", "0.9", "--emit-gated", tmp_path / "g.onnx")
    assert code == 2 and not (tmp_path / "g.onnx").exists()
    assert_one_line_error(err, "--emit-gated and --plan-out: no layer can be gated")
