"""`--allocator auto` (onnxprune/plan_choice.py): candidate allocations are rewritten,
recovered on calibration samples (real, or without data synthetic images) and compared on
held-out ones."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from helpers import GraphBuilder
from test_budget import resnet_like
from onnxprune.arguments import default_allocator
from onnxprune.fidelity import evaluate
from onnxprune.plan_choice import (Candidate, candidates, choose_plan, trial_recovery, trial_samples,
                                   with_finer_steps)

ROOT = Path(__file__).resolve().parents[1]


def _allocations(plans):
    return lambda c: (plans[c], None, [f"allocated {c}"])


def test_candidates():
    assert candidates("all", "raw", True) == [Candidate("rank", "all"), Candidate("rank", "last"),
                                              Candidate("rank", "all", "normalized"), Candidate("density", "all")]
    assert candidates("all", "normalized", False) == [Candidate("rank", "all"), Candidate("rank", "last"),
                                                      Candidate("rank", "all", "raw")]
    assert candidates("last", "raw", True) == [Candidate("rank", "last"), Candidate("rank", "last", "normalized"),
                                               Candidate("density", "last")]
    assert str(Candidate("rank", "last", "normalized")) == "rank (coupled last) (normalized ranking)"


def test_where_the_rounding_cannot_reach_the_target_each_candidate_is_also_tried_at_the_finer_step(monkeypatch):
    opts = candidates("all", "raw", False)
    assert with_finer_steps(opts, None) == opts
    assert with_finer_steps(opts, 8) == opts + [replace(c, round_to=8) for c in opts]
    assert str(replace(opts[2], round_to=8)) == "rank (normalized ranking) (round-to 8)"
    # every group is 16 wide: at round_to 16 nothing can shrink, so the plans go to steps of 8
    import onnxprune.api as api
    tried, real = [], api.choose_plan
    monkeypatch.setattr(api, "choose_plan", lambda options, *rest: tried.append(options) or real(options, *rest))
    calib = [{"x": np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32)}]
    _, report = onnxprune.prune(resnet_like(width=16, blocks=2), target_macs=0.5, round_to=16, calibration=calib)
    base = candidates("all", "raw", True)
    assert tried == [base + [replace(c, round_to=8) for c in base]]
    assert report.after["macs"] <= 0.5 * report.before["macs"]
    _, report = onnxprune.prune(resnet_like(width=32, blocks=2), target_macs=0.7, round_to=16, calibration=calib)
    assert tried[1] == base   # reachable at 16: nothing more is tried


def test_trained_resnet_at_half_its_macs_and_round_to_16(digits):
    """No plan at multiples of 16 reaches 0.5 of the digits ResNet's MACs. Continuing the
    rounded plans in steps of 8 kept 93.8 % (seed 0); the plans made whole at 8 keep ~99 %."""
    src = str(ROOT / "models" / "digits_resnet.onnx")
    calib, test = digits
    slim, report = onnxprune.prune(src, target_macs=0.5, round_to=16, calibration=calib)   # test images unseen
    assert report.after["macs"] <= 0.5 * report.before["macs"] and report.options["round_to"] == 8
    assert evaluate(src, slim, test).outputs[0].accuracy_pruned > 0.976   # the bar: 2 points under 99.6


def test_one_plan_under_several_names_runs_no_trial():
    tried = []
    opts = candidates("all", "raw", True)
    kept, allocation, notes = choose_plan(opts, _allocations(dict.fromkeys(opts, {1, 2})),
                                          lambda removed: tried.append(removed), "trials")
    assert (kept, allocation[0], notes, tried) == (opts[0], {1, 2}, [], [])


@pytest.mark.parametrize("errors, kept", [((0.4, 0.1, 0.2, 0.3), 1), ((0.1, 0.4, 0.2, 0.3), 0),
                                          ((0.3, 0.3, 0.3, 0.3), 0), ((None, 0.3, 0.2, 0.25), 2),
                                          ((0.5, 0.4, 0.3, 0.05), 3), ((None, None, None, None), 0)])
def test_the_lower_held_out_error_wins(errors, kept):
    opts = candidates("all", "raw", True)
    plans = {opts[0]: {1, 2, 3}, opts[1]: {4, 5}, opts[2]: {6}, opts[3]: {7, 8}}
    by_plan = {frozenset(plans[c]): e for c, e in zip(opts, errors)}
    chosen, allocation, notes = choose_plan(opts, _allocations(plans), lambda removed: by_plan[frozenset(removed)],
                                           "recovery (lsq) on 32 calibration samples")
    assert chosen == opts[kept] and allocation == (plans[opts[kept]], None, [f"allocated {opts[kept]}"])
    assert len(notes) == 1 and notes[0].startswith(f"--allocator auto: {opts[kept]} kept")
    assert "error after recovery (lsq) on 32 calibration samples: rank: " in notes[0]


def test_same_plans_are_tried_once():
    opts = candidates("all", "raw", True)
    plans = {opts[0]: {1, 2}, opts[1]: {3}, opts[2]: {2, 1}, opts[3]: {3}}
    tried = []
    chosen, _, _ = choose_plan(opts, _allocations(plans), lambda removed: tried.append(set(removed)) or 0.5, "")
    assert tried == [{1, 2}, {3}] and chosen == opts[0]


def test_auto_is_the_default_where_there_is_an_allocation_to_choose():
    assert default_allocator(None, None) == "auto"
    assert default_allocator(None, 0.5) == "rank"   # --target-latency allocates by its own measurements


def _image_net():
    return resnet_like(width=16, blocks=2)


@pytest.mark.synthetic_default
def test_without_data_auto_measures_the_plans_on_synthetic_images():
    _, report = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1)
    note = next(n for n in report.notes if n.startswith("--allocator auto"))
    assert "synthetic calibration samples" in note and note.count(":") >= 3   # at least two plans measured
    assert report.recovery["methods"] == ["lsq"] and any(n.startswith("no calibration data") for n in report.notes)
    kept = report.options
    _, same = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1, allocator=kept["allocator"],
                              coupled=kept["coupled"], ranking=kept["ranking"])
    assert same.plan.removed == report.plan.removed
    plan, _ = onnxprune.plan(_image_net(), target_macs=0.6, round_to=1)   # plan() chooses the same way
    assert plan.removed == report.plan.removed


@pytest.mark.synthetic_default
def test_without_anything_to_measure_on_the_default_is_rank():
    # --recover stats: no synthetic calibration, so nothing to judge plans on
    _, report = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1, recover="stats")
    assert report.options["allocator"] == "rank" and not any("--allocator auto" in n for n in report.notes)
    with pytest.raises(onnxprune.OnnxPruneError, match="--allocator auto measures its candidate plans"):
        onnxprune.prune(_image_net(), target_macs=0.6, allocator="auto", recover="stats")
    b = GraphBuilder()   # not an image model: synthetic images cannot feed it
    x = b.input("x", [1, 12])
    h = b.op("Relu", [b.op("Gemm", [x, b.weight((16, 12)), b.weight((16,))], transB=1)])
    proto = b.model([b.op("Gemm", [h, b.weight((4, 16)), b.weight((4,))], transB=1)])
    _, report = onnxprune.prune(proto, target_macs=0.6, round_to=1)
    assert report.options["allocator"] == "rank"
    with pytest.raises(onnxprune.OnnxPruneError, match="--allocator auto measures its candidate plans"):
        onnxprune.prune(proto, target_macs=0.6, allocator="auto")


@pytest.mark.synthetic_default
def test_a_failing_data_free_choice_falls_back_to_rank(monkeypatch):
    """The data-free default must not break a prune that works without it."""
    import onnxprune.api as api
    _, rank = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1, allocator="rank")

    def broken(*args, **kwargs):
        raise RuntimeError("synthetic run failed")
    monkeypatch.setattr(api, "calibration_sets", broken)
    _, report = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1)
    assert report.options["allocator"] == "rank" and report.plan.removed == rank.plan.removed
    assert any(n.startswith("--allocator auto on synthetic images could not run (synthetic run failed)")
               for n in report.notes)
    with pytest.raises(RuntimeError):   # with data the user gave, a failure is not hidden
        onnxprune.prune(_image_net(), target_macs=0.6, round_to=1, calibration="synthetic", allocator="auto")


def test_a_net_without_streams_tries_rank_and_density():
    """No coupled group: rank and rank-with-streams-last are one plan; density may differ.
    The kept plan is the one `prune` with that allocator gives."""
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.conv(b.op("Relu", [b.conv(b.op("Relu", [b.conv(x, 3, 16)]), 16, 16)]), 16, 8)
    proto = b.model([y])
    calib = [{"x": np.random.default_rng(0).normal(size=(40, 3, 8, 8)).astype(np.float32)}]
    _, auto = onnxprune.prune(proto, target_macs=0.6, round_to=1, calibration=calib)
    assert auto.options["allocator"] in ("rank", "density") and auto.options["coupled"] == "all"
    _, same = onnxprune.prune(proto, target_macs=0.6, round_to=1, calibration=calib,
                              allocator=auto.options["allocator"], ranking=auto.options["ranking"])
    assert auto.plan.removed == same.plan.removed and auto.plan.removed


@pytest.fixture(scope="module")
def digits():
    from models.digits import load_digits_split
    xtr, _, xte, yte = load_digits_split(16)
    calib = xtr[np.random.default_rng(0).permutation(len(xtr))][:256]
    return [{"input": calib}], [{"input": xte, "labels": yte}]


def test_trained_resnet_keeps_its_streams_where_one_ranking_would_crush_them(digits):
    """At --round-to 8 one activation ranking takes the digits ResNet's last stream to 8 of
    64 channels and the refit model to about 90 %; auto measures the candidates and keeps
    one that does not (about 99 %). With the least-squares refit alone: the end-to-end fit
    of the default repairs even the crushed plan to about 98.7 %."""
    src = str(ROOT / "models" / "digits_resnet.onnx")
    calib, test = digits
    same = dict(target_macs=0.7, round_to=8, calibration=calib, eval_data=test, recover="lsq")
    slim, auto = onnxprune.prune(src, **same)
    _, rank = onnxprune.prune(src, allocator="rank", **same)
    chosen = (auto.options["allocator"], auto.options["coupled"], auto.options["ranking"])
    assert auto.options["criterion"] == "activation" and chosen != ("rank", "all", "raw")
    note = next(n for n in auto.notes if n.startswith("--allocator auto"))
    assert "recovery (lsq) on 256 calibration samples" in note   # all of them, as the prune recovers: a small model
    accuracy = {name: r.fidelity.outputs[0].accuracy_pruned for name, r in (("auto", auto), ("rank", rank))}
    assert accuracy["auto"] > 0.97 and accuracy["rank"] < 0.95, accuracy
    _, same = onnxprune.prune(src, allocator=auto.options["allocator"], coupled=auto.options["coupled"],
                              ranking=auto.options["ranking"], **same)
    assert same.plan.removed == auto.plan.removed
    again, _ = onnxprune.apply_plan(src, auto.plan)   # the report's plan replays the structure
    assert [i.dims for i in again.graph.initializer] == [i.dims for i in slim.graph.initializer]


def test_trials_use_every_sample_a_small_model_affords():
    assert trial_samples(3e6, 205) == 205                # the digits ResNet
    assert trial_samples(4.1e9, 410) == 64               # ResNet-50 at 224 x 224: the floor
    assert trial_samples(1e9, 410) == 250 and trial_samples(1e9, 40) == 40


def test_trials_beyond_the_budget_recover_by_mean_compensation():
    assert trial_recovery("auto", 205, 205) == "auto" and trial_recovery("lsq", 64, 410) == "means"
    assert trial_recovery("none", 64, 410) == "none"


def test_a_big_model_is_chosen_by_cheap_trials(monkeypatch):
    """Beyond the budget the trials run mean compensation on MIN_TRIAL_SAMPLES samples and are
    judged on as many held-out ones; the note says so."""
    import onnxprune.plan_choice as plan_choice
    monkeypatch.setattr(plan_choice, "TRIAL_MACS", 1.0)   # every model is "big"
    src = str(ROOT / "models" / "digits_resnet.onnx")
    from models.digits import load_digits_split
    x = load_digits_split(16)[0][:200]
    _, report = onnxprune.prune(src, target_macs=0.7, round_to=8, calibration=[{"input": x}])
    note = next(n for n in report.notes if n.startswith("--allocator auto"))
    assert "recovery (means) on 64 calibration samples" in note, note
    assert report.recovery["methods"] == ["lsq", "fit"]   # the final recovery is still the prune's own


@pytest.mark.synthetic_default
def test_a_big_model_without_data_recovers_on_the_synthetic_images_that_chose(monkeypatch):
    """Beyond the trial budget, without data: cheap trials on synthetic images choose, and the
    final recovery reuses those images instead of making them again. The result is the prune
    with the chosen options, which makes its own."""
    import onnxprune.plan_choice as plan_choice
    import onnxprune.recover as recover
    monkeypatch.setattr(plan_choice, "TRIAL_MACS", 1.0)
    made, real_sets = [], recover.calibration_sets
    monkeypatch.setattr(recover, "calibration_sets", lambda *a, **k: made.append(1) or real_sets(*a, **k))
    slim, report = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1)
    note = next(n for n in report.notes if n.startswith("--allocator auto"))
    assert "recovery (means) on 64 synthetic calibration samples" in note, note
    assert report.recovery["methods"] == ["lsq"] and made == []   # the choice's images, not new ones
    kept = report.options
    again, _ = onnxprune.prune(_image_net(), target_macs=0.6, round_to=1, allocator=kept["allocator"],
                               coupled=kept["coupled"], ranking=kept["ranking"])
    assert made == [1]
    assert [i.raw_data for i in slim.graph.initializer] == [i.raw_data for i in again.graph.initializer]


def test_the_chosen_trial_is_the_recovery(monkeypatch, digits):
    """Within the trial budget the chosen plan's trial ran the prune's own recovery on the same
    samples: prune hands that back instead of recovering again, and it is the same result a
    prune with the chosen allocator gives."""
    import onnxprune.api as api
    import onnxprune.plan_choice as plan_choice
    calls = []
    real = api.recover_stage
    for module in (api, plan_choice):   # the prune's own recovery, and the trials'
        monkeypatch.setattr(module, "recover_stage", lambda *a, **k: calls.append(1) or real(*a, **k))
    src = str(ROOT / "models" / "digits_resnet.onnx")
    calib, test = digits
    options = dict(target_macs=0.7, round_to=8, calibration=calib, eval_data=test, recover="lsq")
    slim, auto = onnxprune.prune(src, **options)
    trials = len(next(n for n in auto.notes if n.startswith("--allocator auto")).split(";"))
    assert trials >= 2 and len(calls) == trials    # no recovery after the trials
    assert "recover" in auto.timings and auto.recovery["methods"] == ["lsq"]
    again, same = onnxprune.prune(src, allocator=auto.options["allocator"], coupled=auto.options["coupled"],
                                  ranking=auto.options["ranking"], **options)
    assert same.fidelity.outputs[0].mean_rel_error == auto.fidelity.outputs[0].mean_rel_error
    for a, b in zip(slim.graph.initializer, again.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
