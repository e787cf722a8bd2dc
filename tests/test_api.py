"""The library API: explicit signatures, arguments checked before any work, plan /
apply_plan, and the one onnxruntime run of every pruned model."""
from __future__ import annotations

import inspect

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune import api
from onnxprune.plan import Plan
from test_budget import resnet_like


# -- signatures -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [onnxprune.prune, api.prune_model, onnxprune.plan, onnxprune.apply_plan])
def test_signatures_are_explicit_typed_and_documented(fn):
    params = list(inspect.signature(fn).parameters.values())
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    assert params[0].name == "source" and params[0].default is inspect.Parameter.empty
    options = params[2:]
    assert options and all(p.kind is p.KEYWORD_ONLY for p in options)
    assert all(p.annotation is not inspect.Parameter.empty for p in params)
    assert all(p.default is not inspect.Parameter.empty for p in options)
    # prune's docstring lists the options; the others refer to it and document their own extras
    assert fn is onnxprune.prune or "`prune`" in fn.__doc__
    own = {"check_output"} if fn is api.prune_model else set()
    for p in options:
        doc = fn.__doc__ if p.name in own else onnxprune.prune.__doc__
        assert f"\n      {p.name}:" in doc or f"`{p.name}" in doc, p.name


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="prune_coupled"):
        onnxprune.prune(residual_net(), prune_coupled="none")


def test_public_names():
    assert {"prune", "plan", "apply_plan", "analyze_model", "Plan", "PlanInfo", "Report",
            "OnnxPruneError"} <= set(onnxprune.__all__)
    from onnxprune.plan import Plan as PlanClass  # the module stays importable next to the function
    assert PlanClass is onnxprune.Plan


# -- arguments: one OnnxPruneError naming the argument, before any work -----------------------------
BAD_ARGUMENTS = [
    ({"ratio": "0.3"}, "ratio must be a number, got '0.3' (str)"),
    ({"ratio": float("nan")}, "--ratio must be in [0, 1), got nan"),
    ({"target_macs": True}, "target_macs must be a number, got True (bool)"),
    ({"target_params": [0.5]}, "target_params must be a number, got [0.5] (list)"),
    ({"target_macs": 0}, "--target-macs must be in (0, 1], got 0.0"),
    ({"exclude": "conv1"}, "exclude must be a list of node-name patterns, not a string: write exclude=['conv1']"),
    ({"exclude": [1, 2]}, "exclude must be a list of node-name patterns (strings), got [1, 2]"),
    ({"input_shapes": [("x", (1, 3, 8, 8))]}, "input_shapes must be a dict {input name: shape}, got list"),
    ({"input_shapes": {"x": "1,3,8,8"}}, "input_shapes must map input names to shapes of positive integers, "
                                         "got 'x': '1,3,8,8'"),
    ({"input_shapes": {"x": (1, 3, 0, 8)}}, "input_shapes must map input names to shapes of positive integers, "
                                            "got 'x': (1, 3, 0, 8)"),
    ({"seed": -1}, "--seed must be an integer >= 0, got -1"),
    ({"seed": 1.5}, "--seed must be an integer >= 0, got 1.5"),
    ({"round_to": 0}, "--round-to must be an integer >= 1, got 0"),
    ({"round_to": True}, "--round-to must be an integer >= 1, got True"),
    ({"min_keep": float("inf")}, "--min-keep must be a count >= 1 or a fraction in (0, 1), got inf"),
    ({"min_keep": True}, "--min-keep must be a count >= 1 or a fraction in (0, 1), got True"),
    ({"criterion": "taylor"}, "unknown criterion 'taylor'; choose from ['activation', 'bgsc', 'bgsc-position', "
                              "'bn-variance', 'fluctuation', 'heatmap', 'l1', 'l2', 'lsq-aware', 'random']"),
    ({"scope": "everywhere"}, "--scope must be one of ('local', 'global'), got 'everywhere'"),
    ({"coupled": "some"}, "--coupled must be one of ('all', 'only', 'none', 'last'), got 'some'"),
    ({"fold": "maybe"}, "--fold must be one of ('none', 'exact', 'approx'), got 'maybe'"),
    ({"verify": "yes"}, "verify must be True or False, got 'yes'"),
    ({"tolerance": "1e-4"}, "tolerance must be a number, got '1e-4' (str)"),
    ({"tolerance": -1}, "--tolerance must be >= 0 and finite, got -1.0"),
    ({"plan": {"removed": {}}}, "plan must be an onnxprune.Plan, got dict"),
    ({"plan": Plan({"Conv4": [0.5]})}, 'not a valid plan (removed["Conv4"] holds 0.5; channel indices are integers)'),
    ({"ratio": 0.3, "target_macs": 0.5}, "give one budget"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS, ids=[str(i) for i in range(len(BAD_ARGUMENTS))])
def test_bad_arguments_name_the_argument_before_loading(tmp_path, kwargs, message):
    # the source does not exist: an argument error must come first, before any work
    with pytest.raises(onnxprune.OnnxPruneError) as e:
        onnxprune.prune(tmp_path / "missing.onnx", **kwargs)
    assert str(e.value).startswith(message), str(e.value)


def test_bad_source_and_plan_types():
    with pytest.raises(onnxprune.OnnxPruneError, match="source must be a path or an onnx.ModelProto, got int"):
        onnxprune.prune(123)
    with pytest.raises(onnxprune.OnnxPruneError, match="plan must be an onnxprune.Plan, got str"):
        onnxprune.apply_plan(residual_net(), "plan.json")
    with pytest.raises(onnxprune.OnnxPruneError, match="check_output must be True or False"):
        api.prune_model(residual_net(), check_output=None)
    with pytest.raises(onnxprune.OnnxPruneError, match="exclude must be a list"):
        onnxprune.analyze_model(residual_net(), exclude="Conv4")


def test_exclude_as_a_list_still_works():
    _, report = onnxprune.prune(residual_net(), 0.5, round_to=1, exclude=["Conv4"])
    (group,) = [g for g in report.groups if "Conv4" in g["feed_in"]]
    assert group["frozen"] and group["channels_after"] == group["channels_before"]


def test_numpy_numbers_are_numbers():
    _, report = onnxprune.prune(residual_net(), np.float32(0.5), round_to=np.int64(1), seed=np.int64(3))
    assert report.options["round_to"] == 1 and report.options["seed"] == 3


# -- plan / apply_plan --------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{"ratio": 0.3}, {"ratio": 0.3, "round_to": 1},
                                     {"target_macs": 0.6, "criterion": "bgsc", "round_to": 1}],
                         ids=["ratio-default-rounding", "ratio", "target-bgsc"])
def test_apply_plan_of_plan_is_prune(options):
    proto = resnet_like(width=32)
    pruned, report = onnxprune.prune(proto, **options)
    the_plan, info = onnxprune.plan(proto, **options)
    assert the_plan.removed and the_plan.removed == report.plan.removed
    slim, applied = onnxprune.apply_plan(proto, the_plan)
    assert slim.SerializeToString() == pruned.SerializeToString()
    assert applied.after == report.after
    # the plan survives its JSON form
    again, _ = onnxprune.apply_plan(proto, Plan.from_json(the_plan.to_json()))
    assert again.SerializeToString() == pruned.SerializeToString()
    # what plan() reports is what prune() did, without the rewrite
    assert [g["channels_after"] for g in info.groups] == [g["channels_after"] for g in report.groups]
    assert info.before == report.before and info.options == report.options
    assert "score" in info.timings and "rewrite" not in info.timings
    assert list(info.to_dict())[0] == "schema_version"


def test_plan_does_not_modify_its_input():
    proto = resnet_like(width=32)
    before = proto.SerializeToString()
    onnxprune.plan(proto, ratio=0.5, round_to=1)
    assert proto.SerializeToString() == before


def test_plan_with_a_mac_target_notes_what_it_reached():
    _, info = onnxprune.plan(resnet_like(width=32), target_macs=0.5, round_to=1)
    assert any(n.startswith("target macs 0.5: reached ") for n in info.notes), info.notes


# -- the pruned model is run once -------------------------------------------------------------------
def unrunnable_model():
    """Valid ONNX (the full checker passes) that onnxruntime cannot run: its CPU kernel of
    LpNormalization only takes p = 1 or 2. conv1's channels stay prunable."""
    b = GraphBuilder()
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    h = b.conv(h, 8, 8)
    h = b.op("LpNormalization", [h], axis=-1, p=3)
    m = b.model([b.conv(b.op("Relu", [b.conv(h, 8, 8)]), 8, 4)])
    onnx.checker.check_model(m, full_check=True)
    return m


def break_the_rewrite(monkeypatch):
    """Make the rewrite emit a model that passes the checker but that onnxruntime cannot
    load: a Relu moved to a domain it does not know."""
    import onnxprune.api
    real = onnxprune.api.rewrite

    def broken(*args, **kwargs):
        slim = real(*args, **kwargs)
        next(n for n in slim.graph.node if n.op_type == "Relu").domain = "com.example"
        slim.opset_imports.append(helper.make_opsetid("com.example", 1))
        return slim
    monkeypatch.setattr(onnxprune.api, "rewrite", broken)


@pytest.mark.parametrize("options", [{}, {"verify": True}, {"fold": "none"}])
def test_input_onnxruntime_cannot_run(options):
    with pytest.raises(onnxprune.OnnxPruneError, match=r"^onnxruntime cannot run the input model: .*LpNorm"):
        onnxprune.prune(unrunnable_model(), 0.5, round_to=1, **options)


def test_pruned_model_that_cannot_load_is_our_bug(monkeypatch):
    break_the_rewrite(monkeypatch)
    with pytest.raises(RuntimeError, match="onnxruntime cannot run the pruned model, though it runs the input") as e:
        onnxprune.prune(residual_net(), 0.5, round_to=1)
    assert not isinstance(e.value, onnxprune.OnnxPruneError)


def test_pruned_model_is_run_not_only_opened(monkeypatch):
    """A failure that only shows when the model runs (an index out of range) is caught too."""
    import onnxprune.api
    real = onnxprune.api.rewrite

    def gather_out_of_range(*args, **kwargs):
        slim = real(*args, **kwargs)
        out = slim.graph.output[0].name
        producer = next(n for n in slim.graph.node if out in n.output)
        producer.output[list(producer.output).index(out)] = "before_gather"
        slim.inits["bad_index"] = np.array([0, 1, 2, 99], dtype=np.int64)  # the output has 4 columns
        slim.graph.node.append(helper.make_node("Gather", ["before_gather", "bad_index"], [out], axis=1,
                                                name="bad_gather"))
        return slim
    monkeypatch.setattr(onnxprune.api, "rewrite", gather_out_of_range)
    with pytest.raises(RuntimeError, match="cannot run the pruned model, though it runs the input model: .*99"):
        onnxprune.prune(residual_net(), 0.5, round_to=1)


def test_a_clean_prune_runs_the_pruned_model_once(monkeypatch):
    runs = []
    real = api.run_once
    monkeypatch.setattr(api, "run_once", lambda model, seed=0: (runs.append(model), real(model, seed)))
    proto = residual_net()
    onnxprune.prune(proto, 0.5, round_to=1)
    (ran,) = runs  # the pruned model, smaller than the input
    assert sum(a.size for a in ran.inits.values()) < sum(numpy_helper.to_array(t).size for t in proto.graph.initializer)
    runs.clear()
    onnxprune.prune(residual_net(), 0.5, round_to=1, verify=True)  # the oracle runs it instead
    assert runs == []
