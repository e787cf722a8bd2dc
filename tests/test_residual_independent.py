"""`--residual independent` (indexation-addition, docs/methods.md §2): each branch of a
residual Add keeps its own channels, the Add reads a branch that lacks some of the union's
channels through Pad + Gather, and the result matches the masking oracle."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import fuzz_graphs as fg
import onnxprune
from helpers import GraphBuilder, prune_and_check, residual_net
from onnxprune.api import analyze_model
from onnxprune.layer_data import refit_targets
from onnxprune.plan import classes_from_plan
from onnxprune.residual import DERIVED_REASON, propagate_scores
from onnxprune.saliency import score
from test_cli import run_main

INDEPENDENT = {"residual": "independent"}


def resnet_style():
    """A stem, two identity blocks on an 8-channel stream, then a strided block whose
    shortcut is a 1x1 projection to 16 channels; pooled into a Gemm."""
    b = GraphBuilder(1)
    x = b.input("x", [1, 3, 8, 8])
    s = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    for _ in range(2):
        y = b.bn(b.conv(b.op("Relu", [b.bn(b.conv(s, 8, 8), 8)]), 8, 8), 8)
        s = b.op("Relu", [b.op("Add", [s, y])])
    shortcut = b.bn(b.conv(s, 8, 16, k=1, stride=2), 16)
    y = b.bn(b.conv(b.op("Relu", [b.bn(b.conv(s, 8, 16, stride=2), 16)]), 16, 16), 16)
    s = b.op("Relu", [b.op("Add", [shortcut, y])])
    out = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [s])]), 16, 4)
    return b.model([out])


def mobilenet_v2_style():
    """Inverted residual blocks: 1x1 expansion, 3x3 depthwise, linear 1x1 projection added to
    the stream (no activation after the Add), then a 1x1 head conv."""
    b = GraphBuilder(2)
    x = b.input("x", [1, 3, 8, 8])

    def relu6(t):
        return b.op("Clip", [t, b.floats(0.0), b.floats(6.0)])

    s = b.bn(b.conv(x, 3, 8), 8)
    for _ in range(3):
        h = relu6(b.bn(b.conv(s, 8, 24, k=1), 24))
        h = relu6(b.bn(b.conv(h, 24, 24, group=24), 24))
        s = b.op("Add", [s, b.bn(b.conv(h, 24, 8, k=1), 8)])
    h = relu6(b.bn(b.conv(s, 8, 16, k=1), 16))
    out = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])]), 16, 4)
    return b.model([out])


def op_count(proto, op_type):
    return sum(n.op_type == op_type for n in proto.graph.node)


def branch_producers(proto):
    """Feed-in layers of the groups that are branches of an independent sum, by name."""
    _, couplings = analyze_model(proto, residual="independent")
    return sorted(n for g in couplings.groups if g.residual for n in g.feed_in)


# -- analysis -----------------------------------------------------------------------------------
def test_coupled_default_unifies_the_stream_and_independent_keeps_branches_apart():
    proto = resnet_style()
    _, coupled = analyze_model(proto)
    _, independent = analyze_model(proto, residual="independent")
    assert not coupled.joins and len(independent.joins) == 3
    assert max(len(g.feed_in) for g in coupled.groups) == 3      # stem + two blocks write one stream
    assert max(len(g.feed_in) for g in independent.groups) == 1  # each branch alone
    assert len(branch_producers(proto)) == 5
    sums = [g for g in independent.groups if g.frozen == DERIVED_REASON]
    assert sums and all(not g.feed_in for g in sums)


# -- exactness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [resnet_style, mobilenet_v2_style, residual_net])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_random_choices_disagree_across_branches_and_match_the_oracle(build, ratio):
    proto = build()
    for seed in range(2):
        slim, report = prune_and_check(proto, ratio, criterion="random", seed=seed, **INDEPENDENT)
        assert any("residual independent" in n for n in report.notes)
        assert op_count(slim, "Gather") == op_count(slim, "Pad") > 0   # one of each per scattered branch


@pytest.mark.parametrize("criterion", ["l1", "bn-variance", "bgsc"])
def test_each_criterion_prunes_independent_branches_exactly(criterion):
    prune_and_check(mobilenet_v2_style(), 0.5, criterion=criterion, **INDEPENDENT)
    prune_and_check(resnet_style(), 0.5, criterion=criterion, **INDEPENDENT)


def test_forced_disagreement_gathers_both_branches_into_the_union():
    proto = residual_net()
    a, b = branch_producers(proto)   # the stem and the block's last conv
    plan = onnxprune.Plan({a: [0, 1], b: [2, 3]})
    slim, report = prune_and_check(proto, plan=plan, **INDEPENDENT)
    assert op_count(slim, "Gather") == 2 and op_count(slim, "Pad") == 2
    gemm = next(n for n in slim.graph.node if n.op_type == "Gemm")
    width = next(t for t in slim.graph.initializer if t.name == gemm.input[1]).dims[1]
    assert width == 8                       # no channel is missing from both branches
    assert "2 of 1" not in " ".join(report.notes) and "1 of 1 residual sum" in " ".join(report.notes)


def test_agreeing_branches_need_no_gather_and_shrink_the_readers():
    proto = residual_net()
    a, b = branch_producers(proto)   # the stem and the block's last conv
    slim, report = prune_and_check(proto, plan=onnxprune.Plan({a: [0, 1, 5], b: [0, 1, 5]}), **INDEPENDENT)
    assert op_count(slim, "Gather") == 0 and op_count(slim, "Pad") == 0
    gemm = next(n for n in slim.graph.node if n.op_type == "Gemm")
    assert next(t for t in slim.graph.initializer if t.name == gemm.input[1]).dims[1] == 5
    # the same channels removed in coupled mode give the same model, byte for byte in weights
    coupled, _ = onnxprune.prune(proto, plan=onnxprune.Plan({a: [0, 1, 5]}), round_to=1)
    assert sorted(t.dims[0] if t.dims else 0 for t in slim.graph.initializer) == \
        sorted(t.dims[0] if t.dims else 0 for t in coupled.graph.initializer)


# -- scores and budgets --------------------------------------------------------------------------
def test_branch_shares_of_a_sum_score_add_up_to_it():
    model, couplings = analyze_model(residual_net(), residual="independent")
    (join,) = couplings.joins
    out = couplings.class_of[join.ids]
    raw = np.zeros(couplings.n_classes)
    raw[out] = 1.0 + np.arange(len(out))       # only the sum's readers score anything
    total = propagate_scores(model, couplings, raw)
    a, b = (total[couplings.class_of[c.ids]] for _, c in join.operands)
    assert np.allclose(a + b, raw[out]) and not np.allclose(a, b)   # shares by BN variance
    scores = score(model, couplings, "bn-variance").values           # the branches disagree
    a, b = (scores[couplings.class_of[c.ids]] for _, c in join.operands)
    assert (a > 0).all() and (b > 0).all() and not np.allclose(a, b)


@pytest.mark.parametrize("build", [resnet_style, mobilenet_v2_style])
@pytest.mark.parametrize("target", [0.8, 0.5])
@pytest.mark.parametrize("allocator", ["rank", "density"])
def test_mac_target_is_reached_and_tracked_exactly(build, target, allocator):
    slim, report = prune_and_check(build(), target_macs=target, criterion="bn-variance", coupled="all",
                                   allocator=allocator, **INDEPENDENT)
    achieved = report.after["macs"] / report.before["macs"]
    assert achieved <= target
    note = next(n for n in report.notes if n.startswith("target macs"))
    assert f"reached {achieved:.4f}" in note


def test_plan_round_trip_keeps_the_same_model():
    proto = resnet_style()
    plan, _ = onnxprune.plan(proto, 0.5, criterion="random", round_to=1, **INDEPENDENT)
    a, _ = onnxprune.apply_plan(proto, plan, **INDEPENDENT)
    b, _ = onnxprune.prune(proto, 0.5, criterion="random", round_to=1, **INDEPENDENT)
    assert a.SerializeToString() == b.SerializeToString()
    assert plan.meta["residual"] == "independent"
    with pytest.raises(onnxprune.OnnxPruneError, match="made with --residual independent"):
        onnxprune.apply_plan(proto, plan)   # the coupled analysis's classes would not line up
    coupled_plan, _ = onnxprune.plan(proto, 0.5, criterion="random", round_to=1)
    with pytest.raises(onnxprune.OnnxPruneError, match="made with --residual coupled"):
        onnxprune.prune(proto, plan=coupled_plan, **INDEPENDENT)


def test_recovery_runs_on_gathered_branches():
    calib = {"x": np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)}
    slim, report = onnxprune.prune(resnet_style(), 0.5, criterion="random", round_to=1, calibration=[calib],
                                   **INDEPENDENT)
    onnx.checker.check_model(slim)
    assert report.fidelity is not None and report.fidelity.outputs


# -- interface ----------------------------------------------------------------------------------
def test_cli_option_and_bad_values(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(resnet_style(), str(src))
    report = tmp_path / "r.json"
    code, _, _ = run_main(capsys, src, out, "--ratio", "0.5", "--criterion", "random", "--round-to", "1",
                          "--residual", "independent", "--verify", "--report", report)
    written = json.loads(report.read_text())
    assert code == 0 and written["options"]["residual"] == "independent"
    assert any("residual independent" in n for n in written["notes"])
    assert op_count(onnx.load(str(out)), "Gather") > 0
    assert run_main(capsys, src, out, "--residual", "both")[0] == 2
    with pytest.raises(onnxprune.OnnxPruneError, match="--residual must be one of"):
        onnxprune.prune(resnet_style(), 0.5, residual="both")


# -- random graphs ------------------------------------------------------------------------------
def test_random_graphs_with_residual_sums_match_the_oracle():
    checked = 0
    for seed in range(60):
        proto = fg.generate(seed, max_nodes=20).proto
        _, couplings = analyze_model(proto, residual="independent")
        if not couplings.joins:
            continue
        for ratio in (0.3, 0.6):
            # no second oracle: a removed branch channel's constant is dropped where its sum
            # keeps the channel (the oracle zeroes it there), not folded
            outcome = fg.run_case(proto, ratio, "random", seed, exact_fold_check=False, options=INDEPENDENT)
            assert outcome.kind in ("pass", "refusal"), (seed, ratio, outcome)
            checked += outcome.kind == "pass"
        if checked >= 16:
            break
    assert checked >= 10


def test_readers_of_a_sum_that_lost_a_branch_are_recovered_too():
    proto = residual_net()
    model, couplings = analyze_model(proto, residual="independent")
    last = next(g.feed_in[0] for g in couplings.groups if g.residual and not g.feed_out)  # the block's last conv
    removed = classes_from_plan(couplings, onnxprune.Plan({last: [2, 3]}))
    kept = couplings.kept_fn(removed)
    gemm = next(n.name for n in model.graph.node if n.op_type == "Gemm")
    assert kept(couplings.tensors[model.index().nodes[gemm].input[0]].ids).all()   # it lost no input
    assert gemm in refit_targets(model, couplings, kept)                           # but its input changed
    _, report = onnxprune.prune(proto, plan=onnxprune.Plan({last: [2, 3]}), recover="stats", **INDEPENDENT)
    assert any("correct_statistics: 1 layer(s)" in n for n in report.notes), report.notes   # the Gemm


def test_analyze_command_shows_the_branches_and_their_sums(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(resnet_style(), str(src))
    code, out, _ = run_main(capsys, "analyze", src, "--residual", "independent", "--json")
    rows = json.loads(out)
    assert code == 0 and sum(r["frozen"] == DERIVED_REASON for r in rows) >= 2
    code, out, _ = run_main(capsys, "analyze", src, "--json")
    assert code == 0 and not any(r["frozen"] == DERIVED_REASON for r in json.loads(out))


def test_sweep_passes_the_option_on():
    from onnxprune.sweep import sweep
    result = sweep(resnet_style(), [0.7], criterion="random", round_to=1, **INDEPENDENT)
    assert result.options["residual"] == "independent"
