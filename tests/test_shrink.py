"""`onnxprune shrink` (onnxprune/shrink.py, onnxprune/liveness.py): models whose pruned
channels are only zeroed come out smaller and compute what they computed.

The masks (models/masks.py: random or smallest filters, zeroed BN scales, zeroed Gemm
columns; Gemm rows below) come at several rates on a ResNet and a DenseNet; the shrunk model is compared with the masked one
by onnxruntime here, independently of the report's own comparison."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune.cli import main
from models import masks
from onnxprune.ops.layers import CONV, CONV_TRANSPOSE

RATES = (0.2, 0.5, 0.8)


@pytest.fixture(scope="module")
def zoo_models():
    from models import build
    return {name: build(name) for name in ("small_resnet", "densenet_small")}


# -- masks ---------------------------------------------------------------------------------
def _set(proto, name, change):
    t = next(t for t in proto.graph.initializer if t.name == name)
    a = numpy_helper.to_array(t).copy()
    change(a)
    t.CopyFrom(numpy_helper.from_array(a, name))


def _outputs(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _max_rel_diff(a_proto, b_proto, seed=0):
    shape = [d.dim_value or 1 for d in a_proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed + 7)
    worst = 0.0
    for _ in range(2):
        feeds = {a_proto.graph.input[0].name: rng.uniform(-1, 1, shape).astype(np.float32)}
        for a, b in zip(_outputs(a_proto, feeds), _outputs(b_proto, feeds)):
            worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-3)))
    return worst


def _params(proto):
    return sum(numpy_helper.to_array(t).size for t in proto.graph.initializer)


# -- the shrunk model equals the masked one --------------------------------------------------
@pytest.mark.parametrize("name", ["small_resnet", "densenet_small"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("styles", [("random",), ("bn", "inputs", "gemm"), ("magnitude", "slimming", "gemm")])
def test_shrunk_model_equals_masked_model(zoo_models, name, rate, styles):
    masked = masks.masked(zoo_models[name], rate, styles)
    before = masked.SerializeToString()
    slim, report = onnxprune.shrink(masked, verify=True)
    assert masked.SerializeToString() == before          # the input is never modified
    onnx.checker.check_model(slim, full_check=True)
    assert report.shrink["exact"] and report.oracle_passed
    assert _max_rel_diff(masked, slim) <= 1e-5
    assert _params(slim) < _params(masked)
    assert report.shrink["classes_removed"] > 0
    if rate >= 0.5:   # at these rates a sizeable part goes
        assert report.after["params"] < 0.9 * report.before["params"]


def test_approximate_removes_more_and_says_the_output_differs(zoo_models):
    masked = masks.masked(zoo_models["small_resnet"], 0.5, ("bn",))
    _, exact = onnxprune.shrink(masked)
    slim, approx = onnxprune.shrink(masked, approximate=True, verify=True)
    assert exact.shrink["classes_kept_inexact"] > 0 and approx.shrink["classes_kept_inexact"] == 0
    assert approx.shrink["classes_removed"] == exact.shrink["classes_removed"] + exact.shrink["classes_kept_inexact"]
    assert approx.after["params"] < exact.after["params"]
    assert not approx.shrink["exact"] and any("approximately" in n for n in approx.notes)
    assert approx.oracle_passed    # the rewrite itself is right; the constants are what changed
    assert _max_rel_diff(masked, slim) == pytest.approx(approx.shrink["max_rel_diff_to_input"], rel=0.5, abs=1e-6)
    assert approx.shrink["max_rel_diff_to_input"] > 1e-4


# -- fixed point in both directions ------------------------------------------------------------
def _chain(width=8):
    """conv1 -> relu -> conv2 -> relu -> conv3 (1x1, so every constant folds exactly) -> pool -> Gemm."""
    b = GraphBuilder(seed=3)
    h, names = b.input("x", [1, 3, 6, 6]), []
    for c_in in (3, width, width):
        h = b.conv(h, c_in, width, k=1)
        names.append(b.last())
        h = b.op("Relu", [h])
    conv1, conv2, conv3 = names
    h3 = h
    p = b.op("Flatten", [b.op("GlobalAveragePool", [h3])])
    y = b.op("Gemm", [p, b.weight((4, width)), b.weight((4,))], transB=1)
    proto = b.model([y])
    names = {n.name: n for n in proto.graph.node}
    return proto, names[conv1], names[conv2], names[conv3]


def _conv_out(proto, node):
    return next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == node.input[1]).shape[0]


def test_filters_reading_only_dead_channels_die_too():
    proto, conv1, conv2, conv3 = _chain()
    _set(proto, conv1.input[1], lambda a: a.__setitem__(slice(0, 3), 0))          # conv1 filters 0-2 zeroed
    _set(proto, conv2.input[1], lambda a: a.__setitem__((slice(0, 2), slice(3, None)), 0))  # conv2 0-1 read only them
    slim, report = onnxprune.shrink(proto, verify=True)
    names = {n.name: n for n in slim.graph.node}
    assert _conv_out(slim, names[conv1.name]) == 5
    assert _conv_out(slim, names[conv2.name]) == 6      # forward: conv2's filters 0 and 1 are constants
    assert report.shrink["classes_removed_dead"] == 5
    assert report.shrink["filters_zeroed"] == 3         # what the pruner zeroed, not what followed
    assert _max_rel_diff(proto, slim) <= 1e-5


def test_filters_nobody_reads_are_removed_back_to_front():
    proto, conv1, conv2, conv3 = _chain()
    _set(proto, conv3.input[1], lambda a: a.__setitem__((slice(None), slice(0, 2)), 0))   # conv2 0-1 unread
    _set(proto, conv2.input[1], lambda a: a.__setitem__((slice(2, None), slice(5, 7)), 0))  # conv1 5-6 read only by them
    slim, report = onnxprune.shrink(proto, verify=True)
    names = {n.name: n for n in slim.graph.node}
    assert _conv_out(slim, names[conv2.name]) == 6
    assert _conv_out(slim, names[conv1.name]) == 6      # backward through two layers
    assert report.shrink["classes_removed_unused"] == 4 and report.shrink["filters_zeroed"] == 0
    assert _max_rel_diff(proto, slim) <= 1e-5


@pytest.mark.parametrize("gate_reads_them", [True, False])
def test_a_one_channel_gate_reads_every_channel(gate_reads_them):
    """y = x * sigmoid(conv_g(x)) with a one-channel gate, then conv2(y) with zero columns
    on x's channels 0-2: they are still read through the gate, unless the gate's weights
    on them are zero too (found by a fuzzed graph: the gate's channel was taken for unused)."""
    b = GraphBuilder(seed=9)
    x = b.conv(b.input("x", [1, 3, 6, 6]), 3, 8, k=1)
    conv1 = b.last()
    gate = b.op("Sigmoid", [b.conv(x, 8, 1, k=1)])
    conv_g = b.nodes[-2]
    y = b.conv(b.op("Mul", [x, gate]), 8, 4, k=1)
    conv2 = b.last()
    proto = b.model([y])
    names = {n.name: n for n in proto.graph.node}
    _set(proto, names[conv2].input[1], lambda a: a.__setitem__((slice(None), slice(0, 3)), 0))
    if not gate_reads_them:
        _set(proto, conv_g.input[1], lambda a: a.__setitem__((slice(None), slice(0, 3)), 0))
    slim, report = onnxprune.shrink(proto, verify=True)
    assert _conv_out(slim, next(n for n in slim.graph.node if n.name == conv1)) == (8 if gate_reads_them else 5)
    assert _max_rel_diff(proto, slim) <= 1e-5


def test_a_zero_constant_factor_kills_its_channels():
    """x * c with c[0:2] = 0 (the registry's `factor` of Mul): those channels are dead
    after the Mul, though the filters that write them are not zero."""
    b = GraphBuilder(seed=11)
    x = b.conv(b.input("x", [1, 3, 6, 6]), 3, 6, k=1)
    conv1 = b.last()
    scale = np.ones((1, 6, 1, 1), np.float32)
    scale[0, :2] = 0
    y = b.conv(b.op("Relu", [b.op("Mul", [x, b.const(scale, "c")])]), 6, 4, k=1)
    proto = b.model([y])
    slim, report = onnxprune.shrink(proto, verify=True)
    assert _conv_out(slim, next(n for n in slim.graph.node if n.name == conv1)) == 4
    assert report.shrink["filters_zeroed"] == 2 and report.shrink["classes_removed_dead"] == 2
    assert _max_rel_diff(proto, slim) <= 1e-5


def test_gemm_rows_and_columns():
    b = GraphBuilder(seed=5)
    h, gemms = b.input("x", [2, 16]), []
    for k, n in ((16, 32), (32, 32), (32, 4)):
        h = b.gemm(h, k, n)
        gemms.append(b.last())
        y, h = h, b.op("Relu", [h])
    b.nodes.pop()          # no Relu after the last Gemm
    g1, g2, g3 = gemms
    proto = b.model([y])
    names = {n.name: n for n in proto.graph.node}
    _set(proto, names[g1].input[1], lambda a: a.__setitem__(slice(0, 6), 0))               # rows: dead neurons
    _set(proto, names[g3].input[1], lambda a: a.__setitem__((slice(None), slice(10, 14)), 0))  # columns: unused
    slim, report = onnxprune.shrink(proto, verify=True)
    sizes = {n.name: numpy_helper.to_array(next(t for t in slim.graph.initializer if t.name == n.input[1])).shape
             for n in slim.graph.node if n.op_type == "Gemm"}
    assert sizes == {g1: (26, 16), g2: (28, 26), g3: (4, 28)}
    assert report.shrink["classes_removed_dead"] == 6 and report.shrink["classes_removed_unused"] == 4
    assert _max_rel_diff(proto, slim) <= 1e-5     # relu(bias) of the dead rows went into the next bias


def test_tolerance_counts_near_zero_filters_as_zero():
    proto, conv1, conv2, conv3 = _chain()
    _set(proto, conv1.input[1], lambda a: a.__setitem__(slice(0, 3), a[:3] * 1e-3))   # |w| < 1e-3
    _, strict = onnxprune.shrink(proto)
    slim, loose = onnxprune.shrink(proto, tolerance=1e-3, verify=True)
    assert strict.shrink["classes_removed"] == 0 and strict.after["params"] == strict.before["params"]
    assert loose.shrink["classes_removed"] == 3 and loose.shrink["filters_zeroed"] == 3
    assert not loose.shrink["exact"] and loose.oracle_passed    # the oracle's reference has them zeroed
    assert 0 < _max_rel_diff(proto, slim) == pytest.approx(loose.shrink["max_rel_diff_to_input"], rel=0.5)
    assert loose.shrink["max_rel_diff_to_input"] < 1e-2


def test_report_sets_the_zeroed_fraction_against_the_real_costs():
    proto = residual_net()
    conv = [n for n in proto.graph.node if n.op_type == "Conv"][1]     # the inner conv of the block
    _set(proto, conv.input[1], lambda a: a.__setitem__(slice(0, 4), 0))
    slim, report = onnxprune.shrink(proto)
    s = report.shrink
    filters = 8 + 8 + 8 + 4                    # three convolutions and the Gemm
    assert (s["filters"], s["filters_zeroed"]) == (filters, 4)
    assert s["predicted_kept_fraction"] == pytest.approx(1 - 4 / filters)
    assert s["params_kept_fraction"] == pytest.approx(_params(slim) / _params(proto))
    assert s["macs_kept_fraction"] == report.after["macs"] / report.before["macs"] < s["predicted_kept_fraction"]
    inner = next(g for g in report.groups if g["feed_in"] == [conv.name])
    assert inner["zeroed"] == 4 and inner["channels_after"] == 8 - s["classes_removed"]
    table = report.table()
    assert "Zeroed filters" in table and "predicted" in table
    assert json.loads(report.to_json())["shrink"]["filters_zeroed"] == 4


def test_frozen_channels_stay_and_the_report_says_why():
    proto, conv1, conv2, conv3 = _chain()
    _set(proto, conv1.input[1], lambda a: a.__setitem__(slice(0, 3), 0))
    slim, report = onnxprune.shrink(proto, exclude=[conv1.name])
    assert report.shrink["classes_removed"] == 0
    assert any("frozen: excluded by --exclude" in n and n.startswith("shrink: 3 zeroed") for n in report.notes)


def test_layer_connections_follow_the_groups():
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=2)
    links = CONV.connections(conv, np.ones((4, 3, 1, 1), dtype=bool))     # 6 inputs, 4 outputs, 2 groups
    assert links.tolist() == [[1, 1, 1, 0, 0, 0]] * 2 + [[0, 0, 0, 1, 1, 1]] * 2
    up = onnx.helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2)
    links = CONV_TRANSPOSE.connections(up, np.ones((4, 3, 1, 1), dtype=bool))  # 4 inputs, 6 outputs
    assert links.tolist() == [[1, 1, 0, 0]] * 3 + [[0, 0, 1, 1]] * 3


# -- command line ------------------------------------------------------------------------------
def test_cli_writes_a_smaller_model_and_its_report(tmp_path, capsys):
    proto, conv1, _, _ = _chain()
    _set(proto, conv1.input[1], lambda a: a.__setitem__(slice(0, 3), 0))
    src, out, rep = tmp_path / "masked.onnx", tmp_path / "slim.onnx", tmp_path / "r.json"
    onnx.save(proto, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert main(["shrink", str(src), str(out), "--verify", "--report-json", str(rep)]) == 0
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert json.loads(rep.read_text())["shrink"]["classes_removed"] == 3
    assert _max_rel_diff(proto, onnx.load(out)) <= 1e-5
    assert "Zeroed filters" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tolerance", "-1"], "--tolerance must be >= 0 and finite"),
    (["--tolerance", "nan"], "--tolerance must be >= 0 and finite"),
    (["--approximate", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_bad_options_exit_2(tmp_path, capsys, args, message):
    src = tmp_path / "m.onnx"
    onnx.save(_chain()[0], src)
    assert main(["shrink", str(src), str(tmp_path / "o.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_cli_never_writes_over_its_input(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_chain()[0], src)
    before = src.read_bytes()
    assert main(["shrink", str(src), str(src)]) == 2
    assert "the input is never overwritten" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert main(["shrink", str(tmp_path / "missing.onnx"), str(tmp_path / "o.onnx")]) == 2


# -- fuzzed graphs -------------------------------------------------------------------------------
@pytest.mark.parametrize("first, residual", [(0, "coupled"), (40, "coupled"), (0, "independent")])
def test_fuzzed_graphs_shrink_to_what_they_compute(first, residual):
    """Random CNN DAGs (tests/fuzz_graphs.py: residual Adds, Concat/Split/Slice, gates,
    shuffles, Resize, unknown ops, ...) with 30 % of their filters, convolution inputs, BN
    scales and Gemm columns zeroed: shrink either refuses with a message or writes a model
    that computes what the masked one computes."""
    import fuzz_graphs as fg
    from onnxprune.errors import OnnxPruneError
    removed = 0
    for seed in range(first, first + 40):
        proto = masks.masked(fg.generate(seed, max_nodes=20).proto, 0.3, ("random", "inputs", "bn", "gemm"),
                             seed=seed)
        try:
            slim, report = onnxprune.shrink(proto, verify=True, residual=residual)
        except OnnxPruneError:
            continue      # e.g. a zeroed Resize input the masks made unrunnable: a message, no model
        assert report.oracle_passed and report.shrink["max_rel_diff_to_input"] <= 1e-4, seed
        if len(proto.graph.input) == 1:
            assert _max_rel_diff(proto, slim) <= 1e-4, seed
        removed += report.shrink["classes_removed"]
    assert removed > 100


# -- masks that differ across the branches of a residual Add (--residual independent) -------------
def _residual_block(width=8):
    """conv_a -> s; s -> relu -> conv_b -> relu -> conv_c -> (+ s) -> conv_d -> pool -> Gemm (1x1
    convs: every constant folds exactly)."""
    b = GraphBuilder(seed=4)
    s = b.conv(b.input("x", [1, 3, 6, 6]), 3, width, k=1)
    h = b.op("Relu", [b.conv(b.op("Relu", [s]), width, width, k=1)])
    branch = b.conv(h, width, width, k=1)
    conv_c = b.last()
    y = b.conv(b.op("Add", [s, branch]), width, width, k=1)
    p = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [y])])])
    proto = b.model([b.op("Gemm", [p, b.weight((4, width)), b.weight((4,))], transB=1)])
    return proto, next(n for n in proto.graph.node if n.name == conv_c)


def test_independent_residual_removes_what_one_branch_alone_lost():
    proto, conv_c = _residual_block()
    zero_rows = lambda a: a.__setitem__(slice(0, 3), 0)   # noqa: E731 - filters 0-2 and their biases
    _set(proto, conv_c.input[1], zero_rows)
    _set(proto, conv_c.input[2], zero_rows)
    coupled, c_report = onnxprune.shrink(proto, verify=True)
    independent, i_report = onnxprune.shrink(proto, verify=True, residual="independent")
    assert _conv_out(coupled, conv_c) == 8          # the stream keeps channels 0-2: coupled cannot drop them
    assert _conv_out(independent, conv_c) == 5      # the branch alone lost them: independent does
    assert any(n.op_type == "Gather" for n in independent.graph.node)
    for slim, report in ((coupled, c_report), (independent, i_report)):
        assert report.oracle_passed and _max_rel_diff(proto, slim) <= 1e-5
    assert i_report.after["macs"] < c_report.after["macs"]
    assert i_report.options["residual"] == "independent"


def test_independent_residual_keeps_a_branch_channel_that_carries_a_constant():
    """A dead branch channel with a bias is a constant the sum still adds: dropping it
    would change the output, so it stays (the stream keeps the channel)."""
    proto, conv_c = _residual_block()
    _set(proto, conv_c.input[1], lambda a: a.__setitem__(slice(0, 3), 0))   # biases left non-zero
    slim, report = onnxprune.shrink(proto, verify=True, residual="independent")
    assert _conv_out(slim, conv_c) == 8 and _max_rel_diff(proto, slim) <= 1e-5


@pytest.mark.parametrize("name", ["small_resnet", "mobilenet_v2"])
def test_independent_residual_shrinks_random_masks_exactly(name):
    from models import build
    base = build(name)
    for rate in (0.2, 0.5):
        masked = masks.masked(base, rate, ("random",), seed=1)
        slim, report = onnxprune.shrink(masked, verify=True, residual="independent")
        assert report.oracle_passed and report.shrink["exact"], (name, rate)
        assert _max_rel_diff(masked, slim) <= 1e-4, (name, rate)
        _, coupled = onnxprune.shrink(masked, residual="coupled")
        assert report.after["macs"] <= coupled.after["macs"]


def test_cli_shrink_takes_the_residual_option(tmp_path, capsys):
    proto, conv_c = _residual_block()
    _set(proto, conv_c.input[1], lambda a: a.__setitem__(slice(0, 3), 0))
    _set(proto, conv_c.input[2], lambda a: a.__setitem__(slice(0, 3), 0))
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(proto, src)
    assert main(["shrink", str(src), str(out), "--residual", "independent", "--verify"]) == 0
    assert _conv_out(onnx.load(out), conv_c) == 5
    assert main(["shrink", str(src), str(tmp_path / "p.onnx"), "--residual", "sideways"]) == 2
