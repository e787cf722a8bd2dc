"""--target-latency: the measured per-layer latency table (cache, widths, one-layer models),
the latency-tracking greedy, the measured correction, and the options around them. Timings
are faked wherever a test asserts on what the allocator does with them; no test asserts on
a real timing."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from helpers import GraphBuilder
from onnxprune import latency_model
from onnxprune.api import analyze_model
from onnxprune.bench import Timing
from onnxprune.budget import default_round_to, prunable_groups
from onnxprune.cli import main
from onnxprune.latency_alloc import LatencyTracker, allocate_latency
from onnxprune.latency_model import TimingOptions, measure_layers, measurement_widths, timed_layers
from onnxprune.saliency import score


def two_branches(width=32):
    """Two independent conv pairs on one input: `big` at 32x32, `small` at 4x4, summed by
    a head. Each pair's middle channels are one prunable group."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [1, 3, 32, 32])
    big = b.op("Relu", [b.conv(x, 3, width)])
    big = b.op("GlobalAveragePool", [b.conv(big, width, 8)])
    small = b.op("MaxPool", [x], kernel_shape=[8, 8], strides=[8, 8])
    small = b.op("Relu", [b.conv(small, 3, width)])
    small = b.op("GlobalAveragePool", [b.conv(small, width, 8)])
    return b.model([b.op("Add", [big, small])])


def depthwise_block(width=32):
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 3, 16, 16])
    h = b.op("Relu", [b.conv(x, 3, width, k=1)])
    h = b.op("Relu", [b.conv(h, width, width, k=3, group=width)])
    return b.model([b.conv(h, width, 8, k=1)])


def fake_ms(per_channel):
    """A stand-in for time_widths: ms = 1 + per_channel(layer) x width."""
    def time_widths(model, layer, axis, widths, options):
        return [1.0 + per_channel(layer) * w for w in widths]
    return time_widths


@pytest.fixture
def table(tmp_path):
    return str(tmp_path / "table.json")


def test_timed_layers_and_widths_cover_each_prunable_axis():
    model, couplings = analyze_model(depthwise_block(64))
    groups = prunable_groups(couplings)
    classes = np.concatenate([g.classes for g in groups])
    layers = timed_layers(model, couplings, classes)
    block = default_round_to()
    widths = [measurement_widths(layer, couplings, groups, 0.1, block) for layer in layers]
    # expand (its input is the frozen graph input), depthwise, project (its output is the graph's)
    assert [list(w) for w in widths] == [["out"], ["both"], ["in"]]
    for w in widths:
        points = next(iter(w.values()))
        assert points[-1] == 64 and len(points) >= 4 and all(p % block == 0 for p in points)
    unaligned = measurement_widths(layers[1], couplings, groups, 0.1, 4)["both"]
    assert 64 in unaligned and any(w % 4 for w in unaligned)   # unaligned ones when the step allows them


@pytest.mark.parametrize("axis", ["in", "out", "both"])
def test_one_layer_model_runs_at_the_width_it_is_cut_to(axis):
    model, couplings = analyze_model(depthwise_block() if axis == "both" else two_branches())
    classes = np.concatenate([g.classes for g in prunable_groups(couplings)])
    layer = next(lay for lay in timed_layers(model, couplings, classes) if axis in lay.axes)
    proto, feeds = latency_model._layer_model(model, layer, axis, 8, batch=3)
    onnx.checker.check_model(proto, full_check=True)
    y = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]
    w = model.inits[layer.node.input[1]]
    assert y.shape[:2] == (3, w.shape[0] if axis == "in" else 8)
    assert feeds["x"].shape[1] == (w.shape[1] if axis == "out" else 8)


def test_measured_table_is_saved_reused_and_keyed_by_batch(table, monkeypatch):
    model, couplings = analyze_model(two_branches())
    layers, note = measure_layers(model, couplings, 0.1, 8, "all", TimingOptions(table=table))
    assert "0 reused" in note and all(np.all(ms > 0) for lay in layers for _, ms in lay.curves.values())
    calls = []
    monkeypatch.setattr(latency_model, "time_widths", lambda *a: calls.append(a) or [1.0] * len(a[3]))
    again, note = measure_layers(model, couplings, 0.1, 8, "all", TimingOptions(table=table))
    assert calls == [] and " 0 width curve(s) measured" in note
    assert [lay.curves["out"][1].tolist() for lay in again if "out" in lay.curves] == \
        [lay.curves["out"][1].tolist() for lay in layers if "out" in lay.curves]
    measure_layers(model, couplings, 0.1, 8, "all", TimingOptions(batch=2, table=table))
    assert calls   # another batch is another machine context
    contexts = json.load(open(table))["contexts"]
    assert sorted(k.split("|")[-1].strip() for k in contexts) == ["batch 1", "batch 2"]


def test_a_file_that_is_not_a_table_is_refused(table):
    open(table, "w").write('{"weights": [1, 2]}')
    model, couplings = analyze_model(two_branches())
    with pytest.raises(onnxprune.OnnxPruneError, match="not an onnxprune latency table"):
        measure_layers(model, couplings, 0.1, 8, "all", TimingOptions(table=table))


def _tracker_setup(monkeypatch, table, per_channel=lambda layer: 0.1):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(per_channel))
    model, couplings = analyze_model(two_branches())
    layers, _ = measure_layers(model, couplings, 0.1, 1, "all", TimingOptions(table=table))
    return model, couplings, layers


def test_tracker_preview_equals_the_change_removal_makes(monkeypatch, table):
    model, couplings, layers = _tracker_setup(monkeypatch, table)
    tracker = LatencyTracker(model, couplings, True, layers)
    assert tracker.latency0 == pytest.approx(sum(lay.full_ms() for lay in layers))
    group = prunable_groups(couplings)[0]
    chunk = group.classes[:5].tolist()
    predicted = tracker.preview_latency(chunk)
    for c in chunk:
        tracker.remove(c)
    assert predicted < 0 and tracker.latency == pytest.approx(tracker.latency0 + predicted)
    # the producer loses 5 output channels and the consumer 5 inputs: 0.1 ms each on fake curves,
    # relative to the width each curve is scaled by
    per_layer = [lay.predict(w) - lay.predict(lay.full) for lay, w in zip(tracker.layers, tracker.widths)]
    assert sum(per_layer) == pytest.approx(predicted)


def test_greedy_thins_the_group_that_saves_most_latency_per_score(monkeypatch, table):
    big = lambda layer: 0.5 if layer.input_shape[-1] == 32 else 0.001   # noqa: E731
    model, couplings, layers = _tracker_setup(monkeypatch, table, big)
    scores = np.ones(couplings.n_classes)   # equal importance everywhere
    result = allocate_latency(model, couplings, scores, 0.7, layers, round_to=1)
    removed_from = {int(couplings.group_of[c]) for c in result.removed}
    big_group = next(g.index for g in prunable_groups(couplings)
                     if any(lay.input_shape[-1] == 32 and g.classes[0] in couplings.class_of[ids]
                            for lay in layers for ids in lay.axes.values()))
    assert removed_from == {big_group}
    assert result.achieved <= 0.7 + 1e-9 and result.metric == "latency"


def _fake_compare(ratio_of, calls):
    """bench.compare stand-in: the original takes 10 ms, a pruned model 10 x ratio_of(call)."""
    def compare(protos, provider, threads, batch, warmup, runs, input_shapes, names=None):
        calls.append(len(protos))
        out = [Timing("model0", 10.0, 10.0, 10.0, 1.0)]
        if len(protos) > 1:
            r = ratio_of(len([c for c in calls if c > 1]))
            out.append(Timing("model1", 10.0 * r, 10.0 * r, 10.0 * r, 1 / r))
        return out
    return compare


def test_off_target_measurement_is_corrected_once(monkeypatch, table):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    calls = []
    # first plan measures 0.8 for a target of 0.6; the corrected one 0.61
    monkeypatch.setattr("onnxprune.bench.compare", _fake_compare(lambda k: 0.8 if k == 1 else 0.61, calls))
    slim, report = onnxprune.prune(two_branches(), target_latency=0.6, round_to=1,
                                   timing=TimingOptions(table=table))
    note = next(n for n in report.notes if n.startswith("target latency"))
    assert "target latency 0.6, achieved 0.610" in note and "2 allocation(s) timed" in note
    assert calls == [2, 2]
    aim = float(note.split("for an aim of ")[1].split(";")[0])
    predicted = float(note.split("predicted ")[1].split(" ")[0])
    # measured saving 0.2 of a predicted ~0.4: twice the saving asked for next (bounded)
    assert aim == pytest.approx(1 - 0.4 * min(2.0, (1 - predicted) / 0.2), abs=1e-3) and aim < 0.6
    assert report.options["target_latency"] == 0.6


def test_a_second_miss_takes_one_secant_step(monkeypatch, table):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    calls = []
    # measured 0.8, then 0.7, then on target: three allocations, the last kept
    monkeypatch.setattr("onnxprune.bench.compare", _fake_compare(lambda k: {1: 0.8, 2: 0.7}.get(k, 0.6), calls))
    _, report = onnxprune.prune(two_branches(), target_latency=0.6, round_to=1, timing=TimingOptions(table=table))
    note = next(n for n in report.notes if n.startswith("target latency"))
    assert calls == [2, 2, 2] and "achieved 0.600" in note and "3 allocation(s) timed" in note
    aim = float(note.split("for an aim of ")[1].split(";")[0])
    assert aim < 0.2 + 1e-9   # the secant through (0.6, 0.8) and (the first correction, 0.7) aims below it


def test_on_target_measurement_is_not_redone(monkeypatch, table):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    calls = []
    monkeypatch.setattr("onnxprune.bench.compare", _fake_compare(lambda k: 0.59, calls))
    _, report = onnxprune.prune(two_branches(), target_latency=0.6, round_to=1, timing=TimingOptions(table=table))
    assert calls == [2] and any("achieved 0.590" in n and "1 allocation(s)" in n for n in report.notes)


@pytest.mark.parametrize("ratios,kept", [({1: 0.59}, 1), ({1: 0.8, 2: 0.61}, 2), ({1: 0.625, 2: 0.7, 3: 0.75}, 1)])
def test_the_kept_plan_is_not_rewritten_again(monkeypatch, table, ratios, kept):
    """Each timed plan is rewritten once and no more: prune hands on the kept one's model,
    the exact rewrite of the plan it reports (the oracle passes)."""
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    monkeypatch.setattr("onnxprune.bench.compare", _fake_compare(lambda k: ratios.get(k, 0.6), []))
    import onnxprune.api as api
    built = []
    real = api.rewrite
    monkeypatch.setattr(api, "rewrite", lambda *a: built.append(frozenset(a[2])) or real(*a))
    slim, report = onnxprune.prune(two_branches(), target_latency=0.6, round_to=1, verify=True,
                                   timing=TimingOptions(table=table))
    assert len(built) == len(ratios)       # one rewrite per timed allocation, none after
    assert report.oracle_passed
    assert built[kept - 1] == frozenset(api.classes_from_plan(*_couplings_and(report.plan)))


def _couplings_and(plan):
    from onnxprune.api import analyze_model
    _, couplings = analyze_model(two_branches())
    return couplings, plan


def test_real_timing_end_to_end_with_calibration_recovery(table, capsys):
    """A real (tiny) measurement: no assertion on the figures, only that they are there and
    that recovery on calibration data runs after the latency allocation."""
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((16, 3, 32, 32)).astype(np.float32)}]
    slim, report = onnxprune.prune(two_branches(), target_latency=0.7, calibration=calib, verify=False,
                                   timing=TimingOptions(runs=5, warmup=1, table=table))
    assert any(n.startswith("target latency 0.7, achieved ") for n in report.notes)
    assert any(n.startswith("sensitivity: 2 group(s)") for n in report.notes)   # importance measured on the data
    assert report.recovery.get("methods") or report.fidelity is not None
    assert report.after["macs"] < report.before["macs"]


@pytest.mark.parametrize("args, message", [
    (["--target-latency", "0.5", "--target-macs", "0.5"], "not allowed with argument"),
    (["--target-latency", "1.5"], "--target-latency must be in (0, 1]"),
    (["--target-latency", "0.5", "--allocator", "density"], "has its own allocator"),
    (["--latency-table", "t.json"], "--latency-table goes with --target-latency or --allocator latency"),
    (["--target-latency", "0.5", "--latency-table", "IN"], "--latency-table is the input path"),
])
def test_cli_refuses_bad_latency_options_in_one_line(tmp_path, capsys, args, message):
    src = str(tmp_path / "in.onnx")
    onnx.save(two_branches(), src)
    before = open(src, "rb").read()
    args = [a.replace("IN", src).replace("t.json", str(tmp_path / "t.json")) for a in args]
    assert main([src, str(tmp_path / "out.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert open(src, "rb").read() == before and not (tmp_path / "out.onnx").exists()


def test_cli_corrupt_table_is_one_line_exit_2(tmp_path, capsys):
    src, bad = str(tmp_path / "in.onnx"), tmp_path / "t.json"
    onnx.save(two_branches(), src)
    bad.write_text("not json")
    assert main([src, str(tmp_path / "out.onnx"), "--target-latency", "0.5", "--latency-table", str(bad)]) == 2
    assert "not an onnxprune latency table" in capsys.readouterr().err
    assert bad.read_text() == "not json"


def test_cli_prints_target_and_measured_latency(tmp_path, capsys):
    src, out = str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx")
    onnx.save(two_branches(), src)
    assert main([src, out, "--target-latency", "0.8", "--latency-table", str(tmp_path / "t.json"), "--runs", "5",
                 "--recover", "stats"]) == 0
    printed = capsys.readouterr().out
    assert "note: target latency 0.8, achieved " in printed and "latency table: " in printed
    assert onnx.load(out) and (tmp_path / "t.json").exists()


def test_plan_with_a_latency_target_is_what_prune_applies(monkeypatch, table):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    monkeypatch.setattr("onnxprune.bench.compare", _fake_compare(lambda k: 0.6, []))
    kw = dict(target_latency=0.6, round_to=1, timing=TimingOptions(table=table))
    plan, info = onnxprune.plan(two_branches(), **kw)
    _, report = onnxprune.prune(two_branches(), **kw)
    assert plan.removed == report.plan.removed and plan.removed
    assert any(n.startswith("target latency 0.6, achieved 0.600") for n in info.notes)


def test_api_checks_timing_options():
    with pytest.raises(onnxprune.OnnxPruneError, match="TimingOptions"):
        onnxprune.prune(two_branches(), target_latency=0.5, timing={"batch": 8})
    with pytest.raises(onnxprune.OnnxPruneError, match="--threads"):
        onnxprune.prune(two_branches(), target_latency=0.5, timing=TimingOptions(threads=0))


def test_scores_are_used_by_the_default_criterion(monkeypatch, table):
    """The allocator's loss is the criterion's score: zero-score channels go first."""
    model, couplings, layers = _tracker_setup(monkeypatch, table)
    scores = score(model, couplings, "l1").values.copy()
    group = prunable_groups(couplings)[1]
    scores[group.classes[:8]] = 0.0
    result = allocate_latency(model, couplings, scores, 0.97, layers, round_to=1)
    assert set(result.removed) <= set(group.classes[:8].tolist()) and result.removed


def test_noise_cannot_make_a_narrower_aligned_width_slower():
    assert latency_model.nondecreasing([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert latency_model.nondecreasing([1.0, 2.0, 9.0, 3.0]) == [1.0, 2.0, 6.0, 6.0]


def test_with_measured_curves_the_flat_group_is_thinned_first(monkeypatch, table):
    from onnxprune.sensitivity import _Curve
    model, couplings, layers = _tracker_setup(monkeypatch, table)   # every channel saves the same time
    flat, steep = prunable_groups(couplings)
    curves = {flat.index: _Curve([flat.width, 0], [0.0, 0.01]), steep.index: _Curve([steep.width, 0], [0.0, 5.0])}
    result = allocate_latency(model, couplings, np.ones(couplings.n_classes), 0.8, layers, round_to=1, curves=curves)
    assert result.removed and {int(couplings.group_of[c]) for c in result.removed} == {flat.index}


@pytest.mark.parametrize("target, predicted, measured, aim", [
    (0.9, 0.9, 0.82, 1 - 0.1 * 0.1 / 0.18),   # saved more than predicted: ask for less
    (0.5, 0.5, 0.6, 1 - 0.5 * 1.25),          # saved 0.4 of a predicted 0.5: ask for more
    (0.7, 0.7, 0.1, 1 - 0.3 * 0.5),           # bounded to half the saving
    (0.5, 0.5, 0.9, 0.01),                    # bounded to twice the saving, then to 1 %
    (0.9, 0.9, 1.05, 1 - 0.1 * 2.0),          # slower than the original: twice the saving
])
def test_corrected_aim_rescales_the_saving(target, predicted, measured, aim):
    from onnxprune.latency_alloc import corrected_aim
    assert corrected_aim(target, predicted, measured) == pytest.approx(aim)


def test_transformer_projections_and_mlps_are_timed_and_cut(monkeypatch, table):
    """A ViT has no convolution to prune: its timed layers are the constant-matrix MatMuls
    (in_proj, MLP) and Gemms (out_proj), each one-layer model runs at a cut width, and
    --target-latency prunes it (before, the table was empty and nothing was removed)."""
    pytest.importorskip("torch")
    from helpers import exported
    proto = exported("torchvision_vit")
    model, couplings = analyze_model(proto)
    groups = prunable_groups(couplings)
    layers = timed_layers(model, couplings, np.concatenate([g.classes for g in groups]))
    kinds = sorted(layer.node.op_type for layer in layers)
    assert kinds.count("MatMul") == 6 and kinds.count("Gemm") == 2     # in_proj, fc1, fc2; out_proj
    for layer in layers:
        for axis, full in layer.full.items():
            for width in (full, full - 1):
                m, feeds = latency_model._layer_model(model, layer, axis, width, 2)
                (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
                out = width if axis == "out" else layer.full.get("out", model.shapes[layer.node.output[0]][-1])
                assert y.shape[-1] == out and y.shape[0] == 2 * layer.input_shape[0]
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.01))
    monkeypatch.setattr("onnxprune.bench.compare", _fake_compare(lambda k: 0.7, []))
    _, report = onnxprune.prune(proto, target_latency=0.7, round_to=1, verify=True, timing=TimingOptions(table=table))
    assert report.after["macs"] < report.before["macs"] and report.oracle_passed
    assert any(n.startswith("latency table: 8 layer(s)") for n in report.notes)


def _group_touching(couplings, layers, side):
    """The prunable group whose classes sit on a layer with a side x side input."""
    return next(g for g in prunable_groups(couplings)
                if any(lay.input_shape[-1] == side and g.classes[0] in couplings.class_of[ids]
                       for lay in layers for ids in lay.axes.values()))


def test_speed_weight_moves_a_mac_budget_onto_the_layers_slow_for_their_macs(monkeypatch, table):
    """The small branch (4x4 maps) has 1/64 of the big one's MACs per channel, but on these
    fake curves it is 100 times slower per channel: with weight 0 the allocator thins the big
    branch (importance per MAC), with a large weight it takes the small one to its floor first,
    and both meet the MAC budget."""
    from onnxprune.latency_alloc import allocate_speed_weighted
    slow_small = lambda layer: 0.001 if layer.input_shape[-1] == 32 else 0.1   # noqa: E731
    model, couplings, layers = _tracker_setup(monkeypatch, table, slow_small)
    scores = np.ones(couplings.n_classes)
    small = set(_group_touching(couplings, layers, 4).classes.tolist())
    results = {w: allocate_speed_weighted(model, couplings, scores, "macs", 0.7, layers, w, round_to=1)
               for w in (0.0, 32.0)}
    for result, _ in results.values():
        assert result.metric == "macs" and result.reached and result.achieved <= 0.7 + 1e-9
    (importance_only, latency0), (speedy, latency32) = results[0.0], results[32.0]
    assert not small & importance_only.removed
    assert len(small & speedy.removed) == len(small) - 4   # 32 channels, floor 0.1 -> 4 kept
    assert latency32 < latency0


def test_allocator_latency_through_prune_meets_the_mac_budget_and_says_so(monkeypatch, table):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    slim, report = onnxprune.prune(two_branches(), target_macs=0.6, allocator="latency", speed_weight=4,
                                   recover="none", verify=True, timing=TimingOptions(table=table))
    assert report.oracle_passed and report.after["macs"] <= 0.6 * report.before["macs"]
    assert report.options["allocator"] == "latency" and report.options["speed_weight"] == 4
    assert any(n.startswith("allocator latency, speed weight 4: predicted latency ") for n in report.notes)


@pytest.mark.parametrize("kw, message", [
    ({"speed_weight": 2}, "--speed-weight goes with --allocator latency"),
    ({"allocator": "latency", "speed_weight": -1}, "--speed-weight must be a finite number >= 0"),
    ({"allocator": "latency", "speed_weight": "fast"}, "speed_weight must be a number"),
    ({"allocator": "latency", "target_macs": None, "ratio": 0.3}, "--allocator latency needs a cost budget"),
])
def test_speed_weight_is_checked_before_any_work(kw, message):
    args = {"target_macs": 0.6, **kw}
    with pytest.raises(onnxprune.OnnxPruneError, match=message.replace("(", r"\(")):
        onnxprune.prune(two_branches(), **args)


def test_cli_allocator_latency_prints_the_predicted_latency(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    src, out, table = (str(tmp_path / n) for n in ("in.onnx", "out.onnx", "t.json"))
    onnx.save(two_branches(), src)
    assert main([src, out, "--target-macs", "0.6", "--allocator", "latency", "--latency-table", table,
                 "--recover", "none"]) == 0
    assert "allocator latency, speed weight 128: predicted latency" in capsys.readouterr().out
    assert os.path.exists(table) and onnx.load(out).graph.node


def test_sweep_takes_the_latency_allocator_and_its_weight(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # the default table lands here
    src = str(tmp_path / "in.onnx")
    onnx.save(two_branches(), src)
    assert main(["sweep", src, "--targets", "0.8,0.6", "--allocator", "latency", "--speed-weight", "2",
                 "--recover", "none", "--json", str(tmp_path / "s.json")]) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    rows = result["rows"]
    assert [r["target"] for r in rows] == [0.8, 0.6] and all(r["macs_fraction"] <= r["target"] for r in rows)
    assert result["options"]["allocator"] == "latency" and result["options"]["speed_weight"] == 2
    assert os.path.exists(latency_model.default_table_path())


def test_allocator_latency_meets_a_parameter_budget_too(monkeypatch, table):
    monkeypatch.setattr(latency_model, "time_widths", fake_ms(lambda layer: 0.1))
    slim, report = onnxprune.prune(two_branches(), target_params=0.7, allocator="latency", recover="none",
                                   timing=TimingOptions(table=table))
    assert report.after["params"] <= 0.7 * report.before["params"]
    assert any(" of its params (" in n for n in report.notes)
