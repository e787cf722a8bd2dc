"""PreConfig (`onnxprune reconfigure`, onnxprune/reconfigure.py): the widening rewrite
(passes/widen_groups.py) is exact when nothing reads the new channels, the program with
widening bounds and two budgets (onnxprune/synexp.py), budgets met on the written model,
the CLI's bad-input handling and the input left untouched."""
import functools
import hashlib
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy.optimize import minimize

import onnxprune
from helpers import GraphBuilder, param
from onnxprune.api import analyze_model
from onnxprune.budget import prunable_groups
from onnxprune.cli import main
from onnxprune.cost import cost
from onnxprune.load import load
from onnxprune.pipeline import WIDEN_PASSES, Step, run_passes
from onnxprune.synexp import Program, solve
from onnxprune.passes.widen_groups import blockers
from test_synexp import random_program

torch = pytest.importorskip("torch")


@functools.lru_cache(maxsize=None)
def zoo_model(name):
    from models import build
    torch.set_num_threads(2)
    return build(name)


def widened(proto, extra=3, zero_new_inputs=True, seed=0):
    """Every group that can grow gets `extra` more channels; returns (proto, widths before, after)."""
    model, couplings = analyze_model(proto)
    cannot = blockers(model, couplings)
    widen = {g.index: g.width + extra for g in prunable_groups(couplings) if g.index not in cannot}
    wide = model.copy()
    run_passes(wide, WIDEN_PASSES, Step(couplings, widen=widen, rng=np.random.default_rng(seed),
                                        zero_new_inputs=zero_new_inputs))
    after = {g.index: g.width for g in analyze_model(wide.to_proto())[1].groups}
    return wide.to_proto(), widen, after


def outputs(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def reshape_net():
    """Conv -> BN -> PRelu -> x*c -> Reshape(flatten C×H×W) -> Gemm, and a depthwise conv."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 4, 4])
    h = b.bn(b.conv(x, 3, 8), 8)
    h = b.op("PRelu", [h, b.const(np.full((8, 1, 1), 0.1, np.float32), "slope")])
    h = b.op("Mul", [h, b.const(np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(8, 1, 1), "scale")])
    h = b.op("Relu", [b.conv(h, 8, 8, group=8)])
    h = b.op("Reshape", [h, b.ints([1, -1])])
    return b.model([b.gemm(h, 128, 10)])


@pytest.mark.parametrize("name", ["reshape_net", "small_resnet", "mobilenet_v2", "vgg11_bn", "densenet_small"])
def test_widening_with_zero_new_inputs_changes_nothing(name):
    proto = reshape_net() if name == "reshape_net" else zoo_model(name)
    wide, widen, after = widened(proto)
    onnx.checker.check_model(wide, full_check=True)
    assert widen and all(after[g] == w for g, w in widen.items())
    assert cost(load(wide)).params > cost(load(proto)).params
    x = np.random.default_rng(1).standard_normal([d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim])
    for a, b in zip(outputs(proto, x.astype(np.float32)), outputs(wide, x.astype(np.float32))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_new_entries_are_a_fresh_layers():
    proto = reshape_net()
    wide, _, _ = widened(proto, extra=4, zero_new_inputs=False, seed=7)
    conv, bn, prelu, mul, dw, gemm = (n.name for n in wide.graph.node if n.op_type in
                                      ("Conv", "BatchNormalization", "PRelu", "Mul", "Gemm"))
    w, w0 = param(wide, conv, 1), param(proto, conv, 1)
    np.testing.assert_array_equal(w[:8], w0)                       # old rows untouched
    assert w.shape == (12, 3, 3, 3) and np.abs(w[8:]).max() <= 1 / math.sqrt(27) and w[8:].std() > 0
    assert np.abs(param(wide, conv, 2)[8:]).max() <= 1 / math.sqrt(27)
    for index, value in ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)):  # BN: gamma 1, beta 0, mean 0, var 1
        assert np.all(param(wide, bn, index)[8:] == value)
    assert np.all(param(wide, prelu, 1)[8:] == 0.25) and np.all(param(wide, mul, 1)[8:] == 1.0)
    assert node_attr(wide, dw, "group") == 12 and param(wide, dw, 1).shape == (12, 1, 3, 3)
    g = param(wide, gemm, 1)
    assert g.shape == (10, 12 * 16) and np.abs(g[:, 128:]).max() <= 1 / math.sqrt(12 * 16) and g[:, 128:].std() > 0
    np.testing.assert_array_equal(g[:, :128], param(proto, gemm, 1))
    again, _, _ = widened(proto, extra=4, zero_new_inputs=False, seed=7)
    np.testing.assert_array_equal(param(again, gemm, 1), g)            # seeded: the same draw


def node_attr(proto, name, key):
    node = next(n for n in proto.graph.node if n.name == name)
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == key)


def test_grouped_convolution_groups_do_not_grow():
    model, couplings = analyze_model(zoo_model("resnext_small"))
    reasons = set(blockers(model, couplings).values())
    assert reasons == {"a class stands for several channels (grouped convolution, shuffle or attention head)"}


@pytest.mark.parametrize("seed", range(6))
def test_solver_with_widening_and_two_budgets_matches_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    p, q = random_program(rng), random_program(rng)
    n = min(len(p.a), len(q.a))
    lo, hi = p.lo[:n], np.log(rng.uniform(1.0, 3.0, n))
    parts = [(c, e[:, :n]) for c, e in ((p.coef, p.expo), (q.coef, q.expo))]
    # each budget between what the floors and the widest widths cost: both bind somewhere
    (c1, e1, b1), (c2, e2, b2) = [(c, e, c @ np.exp(e @ lo) + f * (c @ np.exp(e @ hi) - c @ np.exp(e @ lo)))
                                  for (c, e), f in zip(parts, rng.uniform(0.2, 0.8, 2))]
    both = Program(p.a[:n], c1, e1, b1, lo, hi, ((c2, e2, b2),))
    x = solve(both)
    assert both.fits(x) and np.all(x >= both.lo - 1e-12) and np.all(x <= hi + 1e-12)
    cons = [{"type": "ineq", "fun": lambda z, c=c, e=e, b=b: 1 - c @ np.exp(e @ z) / b}
            for c, e, b in both.constraints()]
    best = max((minimize(lambda z: -both.a @ z, s * both.lo, method="SLSQP", constraints=cons,
                         bounds=list(zip(both.lo, hi)), options={"ftol": 1e-13, "maxiter": 1000})
                for s in (0.5, 0.9)), key=lambda r: both.a @ r.x if r.success else -np.inf)
    assert both.a @ x >= both.a @ best.x - 1e-6 * both.a.sum()


@pytest.mark.parametrize("budget", [dict(target_macs=0.5), dict(target_params=0.6),
                                    dict(target_macs=0.7, target_params=0.5),
                                    dict(target_macs=0.9, target_params=0.8, max_widen=2.0)])
@pytest.mark.parametrize("name", ["small_resnet", "mobilenet_v2"])
def test_budgets_are_met_on_the_written_model(name, budget):
    proto = zoo_model(name)
    out, report = onnxprune.reconfigure(proto, **budget)
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).standard_normal([d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim])
    assert np.all(np.isfinite(outputs(out, x.astype(np.float32))[0]))
    before, after = cost(load(proto)), cost(load(out))
    for metric in ("macs", "params"):
        if f"target_{metric}" in budget:
            assert getattr(after, metric) <= budget[f"target_{metric}"] * getattr(before, metric)
            assert getattr(after, metric) >= 0.8 * budget[f"target_{metric}"] * getattr(before, metric)  # not far under
    assert report.budgets_met and report.achieved["macs"] == after.macs / before.macs


def test_widening_redistributes_width_when_allowed():
    """At the input's own MACs, the density program moves width from the blocks' inner
    channels to the residual streams that every block reads and writes."""
    proto = zoo_model("small_resnet")
    _, narrow_only = onnxprune.reconfigure(proto, target_macs=1.0)
    assert all(g["channels_after"] == g["channels_before"] for g in narrow_only.groups)
    out, report = onnxprune.reconfigure(proto, target_macs=1.0, max_widen=2.0, round_to=4)
    grown = [g for g in report.groups if g["channels_after"] > g["channels_before"]]
    shrunk = [g for g in report.groups if g["channels_after"] < g["channels_before"]]
    assert grown and shrunk and report.budgets_met
    assert all(g["channels_after"] <= 2 * g["channels_before"] for g in grown)
    assert all(g["channels_after"] % 4 == 0 for g in grown + shrunk)
    assert cost(load(out)).macs <= cost(load(proto)).macs


def test_a_budget_below_the_floors_is_reported_not_met():
    out, report = onnxprune.reconfigure(zoo_model("small_resnet"), target_macs=0.01)
    assert not report.budgets_met and report.achieved["macs"] > 0.01
    assert any(n.startswith("budget not reached") for n in report.notes)
    assert all(g["channels_after"] == math.ceil(0.1 * g["channels_before"])
               for g in report.groups if not g["frozen"])   # every group at its floor


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("argv, message", [
    (["--target-macs", "1.5"], "--max-widen > 1"),
    ([], "needs --target-macs and/or --target-params"),
    (["--target-params", "0"], "positive fraction"),
    (["--target-macs", "0.5", "--max-widen", "0.5"], "--max-widen must be a number >= 1"),
    (["--target-macs", "0.5", "--round-to", "0"], "--round-to must be an integer >= 1"),
    (["--target-macs", "abc"], "invalid float value"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    src = tmp_path / "in.onnx"
    onnx.save(zoo_model("small_resnet"), src)
    digest = _digest(src)
    assert main(["reconfigure", str(src), str(tmp_path / "out.onnx"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists() and _digest(src) == digest


def test_cli_writes_a_valid_model_and_report_and_leaves_the_input(tmp_path, capsys):
    src, dst, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(zoo_model("small_resnet"), src)
    digest = _digest(src)
    assert main(["reconfigure", str(src), str(dst), "--target-macs", "0.8", "--target-params", "0.9",
                 "--max-widen", "2", "--seed", "3", "--report", str(rep)]) == 0
    assert _digest(src) == digest
    onnx.checker.check_model(str(dst), full_check=True)
    import json
    report = json.loads(rep.read_text())
    assert report["budgets_met"] and report["options"]["max_widen"] == 2.0
    before, after = cost(load(str(src))), cost(load(str(dst)))
    assert after.macs <= 0.8 * before.macs and after.params <= 0.9 * before.params
    assert any(g["channels_after"] > g["channels_before"] for g in report["groups"])
    assert "widened" in capsys.readouterr().out
