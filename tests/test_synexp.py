"""The SynExp allocator (onnxprune/synexp.py): the convex program, its solver, and the
rounded, repaired allocation on real graphs."""
import math
import os

import numpy as np
import onnx
import pytest
from scipy.optimize import minimize

import onnxprune
from helpers import GraphBuilder, prune_and_check
from onnxprune.api import analyze_model
from onnxprune.budget import FINAL_STEP_SLACK, floor_of, prunable_groups, removal_order
from onnxprune.cli import main as cli_main
from onnxprune.cost import CostTracker
from onnxprune.saliency import score
from onnxprune.sensitivity import group_weights
from onnxprune.synexp import Program, allocate_synexp, build_program, solve
from test_budget import grouped_net, resnet_like, wide_then_narrow


def random_program(rng) -> Program:
    """Terms of one to three groups (a depthwise weight, a conv between two groups, a conv
    reading a concat of two and writing a third), some with a squared exponent."""
    n = int(rng.integers(2, 12))
    expo = np.zeros((int(rng.integers(n, 3 * n)), n))
    for row in expo:
        for v in rng.choice(n, size=int(rng.integers(1, 4)), replace=False):
            row[v] += 1 + (rng.random() < 0.1)
    coef = rng.uniform(0.05, 3.0, len(expo))
    return Program(rng.uniform(0.0, 2.0, n), coef, expo, rng.uniform(0.2, 0.8) * coef.sum(),
                   np.log(rng.uniform(0.02, 0.4, n)))


def scipy_optimum(p: Program) -> np.ndarray:
    constraint = {"type": "ineq", "fun": lambda z: 1 - p.cost(z) / p.budget,
                  "jac": lambda z: -(p.expo.T @ (p.coef * np.exp(p.expo @ z))) / p.budget}
    best = None
    for start in (0.5 * p.lo, 0.9 * p.lo):
        r = minimize(lambda z: -p.a @ z, start, jac=lambda z: -p.a, method="SLSQP",
                     bounds=list(zip(p.lo, np.zeros(len(p.a)))), constraints=[constraint],
                     options={"ftol": 1e-13, "maxiter": 1000})
        if r.success and (best is None or p.a @ r.x > p.a @ best):
            best = r.x
    return best


@pytest.mark.parametrize("seed", range(12))
def test_solver_matches_a_general_purpose_solver(seed):
    p = random_program(np.random.default_rng(seed))
    x, reference = solve(p), scipy_optimum(p)
    assert reference is not None
    assert p.cost(x) <= p.budget * (1 + 1e-9)
    assert np.all(x >= p.lo) and np.all(x <= 0)
    assert p.a @ x == pytest.approx(p.a @ reference, rel=1e-6, abs=1e-7)
    assert p.a @ x >= p.a @ reference - 1e-7   # never worse than SLSQP's point


def test_solver_edge_cases():
    p = random_program(np.random.default_rng(0))
    loose = Program(p.a, p.coef, p.expo, p.coef.sum() * 1.01, p.lo)
    assert np.all(solve(loose) == 0)                 # everything fits: full width
    tight = Program(p.a, p.coef, p.expo, p.cost(p.lo) * 0.9, p.lo)
    assert np.all(solve(tight) == p.lo)             # not even the floors fit: the floors


def program_of(proto, metric="macs", target=0.5, min_keep=0.1):
    model, couplings = analyze_model(proto)
    tracker = CostTracker(model, couplings, fold=False)
    groups = prunable_groups(couplings)
    return model, couplings, tracker, groups, build_program(tracker, groups, metric, target, min_keep)


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_program_cost_is_the_tracked_cost_at_integer_counts(metric):
    model, couplings, tracker, groups, p = program_of(resnet_like(), metric)
    fixed = (tracker.macs0 if metric == "macs" else tracker.params0) * 0.5 - p.budget
    rng = np.random.default_rng(0)
    keep = {g.index: int(rng.integers(1, g.width + 1)) for g in groups}
    for g in groups:
        for c in g.classes[:g.width - keep[g.index]].tolist():
            tracker.remove(c)
    x = np.array([math.log(keep[g.index] / g.width) for g in groups])
    assert p.cost(x) + fixed == pytest.approx(tracker.macs if metric == "macs" else tracker.params, rel=1e-12)


def depthwise_net():
    b = GraphBuilder(seed=4)
    x = b.input("x", [1, 3, 12, 12])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 16, k=1), 16)])
    h = b.op("Relu", [b.bn(b.conv(h, 16, 16, group=16), 16)])
    out = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(h, 16, 8, k=1)])])
    return b.model([out])


def test_depthwise_weight_is_counted_once():
    *_, groups, p = program_of(depthwise_net())
    (i,) = [i for i, g in enumerate(groups) if g.width == 16]
    # log p of the 1x1 conv writing it, of the depthwise conv, of the 1x1 conv reading it
    assert p.a[i] == pytest.approx(3.0)
    assert p.expo[:, i].max() == 1        # its MACs scale with c, not c²


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("target", [0.8, 0.5])
def test_budget_met_after_rounding_and_repair(metric, target):
    _, report = prune_and_check(resnet_like(width=32), criterion="l1", allocator="synexp", round_to=4,
                                recover="none", **{f"target_{metric}": target})
    assert target - 0.05 <= report.after[metric] / report.before[metric] <= target + 1e-9
    for g in report.groups:
        if not g["frozen"]:
            assert g["channels_after"] % 4 == 0 or g["channels_after"] == g["channels_before"]


def test_floors_are_respected():
    model, couplings = analyze_model(resnet_like(width=32))
    scores = score(model, couplings, "l1").values
    result = allocate_synexp(model, couplings, scores, "macs", 0.05, min_keep=0.25)
    assert not result.reached                       # 5 % is below what the floors allow
    for g in prunable_groups(couplings):
        kept = g.width - len(set(g.classes.tolist()) & result.removed)
        assert kept == floor_of(g.width, 0.25)


def test_grouped_convolutions_keep_their_divisibility():
    slim, report = prune_and_check(grouped_net(4), criterion="l1", allocator="synexp", round_to=1,
                                   target_macs=0.5, recover="none")
    conv = next(n for n in slim.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i == 4
                                                                          for a in n.attribute))
    w = next(i for i in slim.graph.initializer if i.name == conv.input[1])
    assert w.dims[0] % 4 == 0 and w.dims[0] < 32
    assert report.after["macs"] <= 0.5 * report.before["macs"]


def test_continuous_optimum_thins_the_cheap_wide_block_first():
    # as for the density allocator (tests/test_budget.py): the 64-wide group loses less
    # log-density per MAC saved than the 8-wide one
    _, report = prune_and_check(wide_then_narrow(), criterion="l1", allocator="synexp", target_macs=0.8,
                                round_to=1, recover="none")
    kept = {g["channels_before"]: g["channels_after"] for g in report.groups if not g["frozen"]}
    assert kept[64] < 64 and kept[8] == 8, kept


def test_weights_move_channels_to_the_weighted_group():
    model, couplings = analyze_model(resnet_like(width=32))
    scores = score(model, couplings, "l1").values
    groups = prunable_groups(couplings)
    plain = allocate_synexp(model, couplings, scores, "macs", 0.5, round_to=1)
    heavy = groups[1].index
    weights = {g.index: (20.0 if g.index == heavy else 1.0) for g in groups}
    weighted = allocate_synexp(model, couplings, scores, "macs", 0.5, round_to=1, weights=weights)

    def kept(result, g):
        return g.width - len(set(g.classes.tolist()) & result.removed)
    assert kept(weighted, groups[1]) > kept(plain, groups[1])
    assert weighted.reached and plain.reached


def test_data_free_weights_follow_the_score_share_of_the_weak_half():
    model, couplings = analyze_model(resnet_like(width=32))
    groups = prunable_groups(couplings)
    scores = np.ones(couplings.n_classes)
    flat = groups[0]
    skewed = groups[1]
    order = removal_order([skewed], scores, "global", "raw")
    scores[order[:skewed.width // 2]] = 1e-3          # its weak half carries almost nothing
    weights, notes = group_weights(model, couplings, scores, groups, 0.1, 1)
    assert weights[skewed.index] < 0.1 < weights[flat.index]
    assert np.mean(list(weights.values())) == pytest.approx(1.0, rel=0.05)
    assert "data-free" in notes[0]


def test_weighted_allocator_with_calibration_measures_sensitivity():
    proto = resnet_like()
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((40, 3, 16, 16)).astype(np.float32)}
    _, report = onnxprune.prune(proto, target_macs=0.6, criterion="l1", allocator="synexp-weighted",
                                calibration=calib, recover="none", round_to=4)
    assert any(n.startswith("sensitivity:") for n in report.notes)
    assert report.after["macs"] <= 0.6 * report.before["macs"]


def test_cli_accepts_the_synexp_allocators(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(resnet_like(), path)
    for allocator in ("synexp", "synexp-weighted"):
        out = tmp_path / f"{allocator}.onnx"
        assert cli_main([str(path), str(out), "--target-macs", "0.7", "--allocator", allocator,
                         "--criterion", "l1", "--recover", "none", "-q"]) == 0
        assert out.exists()
    assert cli_main([str(path), str(tmp_path / "x.onnx"), "--ratio", "0.3", "--allocator", "synexp", "-q"]) == 2


@pytest.mark.parametrize("allocator", ["synexp", "synexp-weighted"])
@pytest.mark.parametrize("macs, params", [(0.7, 0.5), (0.5, 0.9), (0.6, 0.6)])
def test_macs_and_params_budgets_together(allocator, macs, params):
    """Both are constraints of the program, and the repair meets the first, then the second
    (only removing, so the first stays met): on the written model, each cost is within its
    budget, and the binding one is close to it."""
    _, report = prune_and_check(resnet_like(width=32), criterion="l1", allocator=allocator, round_to=1,
                                recover="none", target_macs=macs, target_params=params)
    kept = {m: report.after[m] / report.before[m] for m in ("macs", "params")}
    assert kept["macs"] <= macs + 1e-9 and kept["params"] <= params + 1e-9, kept
    assert max(kept["macs"] - macs + 0.06, kept["params"] - params + 0.06) >= 0, kept  # not far below both
    assert sum(n.startswith("target macs") or n.startswith("target params") for n in report.notes) == 2, report.notes


def test_both_budgets_with_another_allocator_or_budget_is_one_line(tmp_path, capsys):
    path = tmp_path / "in.onnx"
    onnx.save(resnet_like(), path)
    with pytest.raises(onnxprune.OnnxPruneError, match="together need --allocator synexp"):
        onnxprune.prune(path, target_macs=0.7, target_params=0.7)
    for args, phrase in ((["--target-macs", "0.7", "--allocator", "density"], "together need --allocator synexp"),
                         (["--target-macs", "0.7", "--allocator", "synexp", "--ratio", "0.3"], "not allowed with"),
                         (["--ratio", "0.3"], "give one budget"), (["--target-latency", "0.5"], "give one budget")):
        assert cli_main([str(path), str(tmp_path / "x.onnx"), "--target-params", "0.7", *args, "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], err
    assert cli_main([str(path), str(tmp_path / "y.onnx"), "--target-macs", "0.7", "--target-params", "0.6",
                     "--allocator", "synexp", "--criterion", "l1", "--recover", "none", "-q"]) == 0
    assert not (tmp_path / "x.onnx").exists() and (tmp_path / "y.onnx").exists()


@pytest.mark.zoo
def test_resnet152_program_solves_well_under_a_second():
    import time

    from models.export import ZOO, export_onnx
    factory, shape = ZOO["resnet152"]
    *_, p = program_of(export_onnx(factory(), shape), target=0.6)
    start = time.perf_counter()
    x = solve(p)
    assert time.perf_counter() - start < 0.5
    assert p.cost(x) <= p.budget * (1 + 1e-9)


def test_repair_does_not_step_far_below_the_target():
    # the digits DenseNet at round_to 1: one class of a stream read by every later layer
    # saves over 1 % of the MACs; the repair takes smaller steps first (it landed at 0.786)
    path = os.path.join(os.path.dirname(__file__), "..", "models", "digits_densenet.onnx")
    model, couplings = analyze_model(path)
    scores = score(model, couplings, "bn-variance").values
    result = allocate_synexp(model, couplings, scores, "macs", 0.8, round_to=1)
    assert 0.8 - FINAL_STEP_SLACK <= result.achieved <= 0.8
