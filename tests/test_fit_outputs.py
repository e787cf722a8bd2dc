"""The end-to-end fit (passes/fit_outputs.py) and its executor (onnxprune/torch_graph.py):
the torch graph computes what onnxruntime computes, operator by operator and on the trained
models; the fit brings a pruned model's held-out outputs closer to the original's; `auto`
runs it once, keeps it only where the held-out samples say it helps, and says why where it
does not run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

import onnxprune  # noqa: E402
from helpers import GraphBuilder  # noqa: E402
from onnxprune import torch_graph  # noqa: E402
from onnxprune.dtypes import retyped  # noqa: E402
from onnxprune.load import load  # noqa: E402
from onnxprune.passes import fit_outputs  # noqa: E402
from onnxprune.runtime import model_session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _torch_outputs(model, feeds):
    with torch.no_grad():
        outs = torch_graph.module(model, torch_graph.trainable(model))(
            **{k: torch.from_numpy(v) for k, v in feeds.items()})
    return [o.numpy() for o in outs]


def _same_as_onnxruntime(proto, feeds, tolerance=1e-5):
    model = load(proto)
    assert torch_graph.unsupported_ops(model) == []
    expected = model_session(model).run(None, feeds)
    got = _torch_outputs(model, feeds)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=tolerance, atol=tolerance * max(1.0, float(np.abs(e).max())))


# -- the executor, operator by operator ------------------------------------------------------
def _case(op, x_shape, *inputs, positive=False, n_outputs=1, **attrs):
    """One node reading the graph input x (and constants `inputs`), every output a graph output."""
    def build():
        b = GraphBuilder(seed=5)
        x = b.input("x", list(x_shape))
        names = [x] + [b.const(np.asarray(i)) if i is not None else "" for i in inputs]
        outs = b.op(op, names, n_outputs=n_outputs, **attrs)
        return b.model(outs if isinstance(outs, list) else [outs]), positive
    return build


def _w(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32)


CASES = {
    "Conv": _case("Conv", (2, 4, 7, 7), _w(6, 2, 3, 3), _w(6), kernel_shape=[3, 3], pads=[0, 1, 2, 1],
                  strides=[2, 1], dilations=[1, 2], group=2),
    "BatchNormalization": _case("BatchNormalization", (2, 3, 4, 4), np.float32([1, 2, .5]), _w(3),
                                _w(3, seed=1), np.float32([1, .5, 2]), epsilon=1e-3),
    "Gemm": _case("Gemm", (3, 4), _w(5, 4), _w(5), transB=1, alpha=0.5, beta=2.0),
    "MatMul": _case("MatMul", (2, 3, 4), _w(4, 5)),
    "Relu": _case("Relu", (2, 6)),
    "LeakyRelu": _case("LeakyRelu", (2, 6), alpha=0.2),
    "PRelu": _case("PRelu", (2, 3, 4, 4), _w(3, 1, 1)),
    "Sigmoid": _case("Sigmoid", (2, 6)),
    "Tanh": _case("Tanh", (2, 6)),
    "HardSigmoid": _case("HardSigmoid", (2, 6), alpha=0.3, beta=0.4),
    "HardSwish": _case("HardSwish", (2, 6)),
    "Clip": _case("Clip", (2, 6), np.float32(-0.2), np.float32(0.3)),
    "Erf": _case("Erf", (2, 6)),
    "Add": _case("Add", (2, 3, 4), _w(3, 1)),
    "Sub": _case("Sub", (2, 3, 4), _w(4)),
    "Mul": _case("Mul", (2, 3, 4), _w(3, 4)),
    "Div": _case("Div", (2, 3, 4), np.float32([2, -4, 8, 0.5])),
    "Pow": _case("Pow", (2, 6), np.float32(2.0)),
    "Sqrt": _case("Sqrt", (2, 6), positive=True),
    "Softmax": _case("Softmax", (2, 3, 5), axis=1),
    "MaxPool": _case("MaxPool", (2, 3, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1),
    "AveragePool": _case("AveragePool", (2, 3, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=0),
    "GlobalAveragePool": _case("GlobalAveragePool", (2, 3, 5, 4)),
    "GlobalMaxPool": _case("GlobalMaxPool", (2, 3, 5, 4)),
    "ReduceMean": _case("ReduceMean", (2, 3, 5, 4), axes=[2, 3], keepdims=0),
    "Flatten": _case("Flatten", (2, 3, 5, 4), axis=2),
    "Reshape": _case("Reshape", (2, 3, 5, 4), np.int64([0, -1, 10])),
    "Transpose": _case("Transpose", (2, 3, 5, 4), perm=[0, 2, 3, 1]),
    "Squeeze": _case("Squeeze", (2, 1, 5, 1), np.int64([1, -1])),
    "Unsqueeze": _case("Unsqueeze", (2, 5), np.int64([0, -1])),
    "Concat": _case("Concat", (2, 3, 4), _w(2, 1, 4), axis=1),
    "Split": _case("Split", (2, 6, 4), np.int64([2, 4]), n_outputs=2, axis=1),
    "Slice": _case("Slice", (2, 6, 4), np.int64([1, -3]), np.int64([5, 100]), np.int64([1, 2]), np.int64([2, 1])),
    "Identity": _case("Identity", (2, 6)),
    "Dropout": _case("Dropout", (2, 6)),
}


def test_every_kernel_has_a_case():
    assert sorted(CASES) == sorted(torch_graph.KERNELS)


@pytest.mark.parametrize("op", sorted(CASES))
def test_each_kernel_computes_what_onnxruntime_computes(op):
    proto, positive = CASES[op]()
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    _same_as_onnxruntime(proto, {"x": np.abs(x) + 0.1 if positive else x})


@pytest.mark.parametrize("name", ["digits_resnet", "digits_mobilenet_folded", "digits_vgg", "digits_densenet"])
def test_the_trained_models_run_in_torch_as_in_onnxruntime(name):
    from models.digits import load_digits_split
    x = load_digits_split(16)[2][:1]   # the files fix the batch to 1
    _same_as_onnxruntime(str(ROOT / "models" / f"{name}.onnx"), {"input": x}, tolerance=1e-4)


def test_trainable_initializers_are_weights_biases_and_bn_affine_only():
    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 3, 6, 6])
    h = b.bn(b.conv(x, 3, 4), 4)
    y = b.op("Reshape", [b.op("Mul", [h, b.floats([2.0])]), b.ints([1, -1])])
    model = load(b.model([y]))
    conv, bn = (n for n in model.graph.node if n.op_type in ("Conv", "BatchNormalization"))
    assert torch_graph.trainable(model) == [conv.input[1], conv.input[2], bn.input[1], bn.input[2]]


def test_unknown_and_custom_operators_are_named_not_run():
    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 3, 6, 6])
    y = b.op("LRN", [b.conv(x, 3, 4)], size=3)
    model = load(b.model([y]))
    assert torch_graph.unsupported_ops(model) == ["LRN"]
    reason = fit_outputs.cannot_fit(model, 256)
    assert reason == "the torch executor lacks LRN"


def test_softmax_before_opset_13_is_not_run():
    b = GraphBuilder(seed=2)
    x = b.input("x", [2, 3, 4])
    model = load(b.model([b.op("Softmax", [x], axis=1)], opset=12))
    assert torch_graph.unsupported_ops(model) == ["Softmax"]


# -- the fit ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from models.digits import load_digits_split
    xtr, _, xte, yte = load_digits_split(16)
    calib = xtr[np.random.default_rng(0).choice(len(xtr), 256, replace=False)]
    return {"input": calib}, {"input": xte, "labels": yte}


def test_the_fit_brings_held_out_outputs_closer_on_a_trained_resnet(digits):
    """The digits ResNet at 60 % of its MACs: least squares alone leaves the held-out logits
    further from the original's than least squares followed by the fit; `auto` keeps the fit
    and its weights are no longer the least-squares ones. (Accuracy is the benchmarks' part:
    here, on these 256 samples, the fit keeps 442 of 450 test images right against 444.)"""
    calib, test = digits
    src = str(ROOT / "models" / "digits_resnet.onnx")
    same = dict(target_macs=0.6, calibration=calib, eval_data=test, allocator="rank")   # one plan: quicker
    lsq, lsq_report = onnxprune.prune(src, recover="lsq", **same)
    fit, report = onnxprune.prune(src, **same)
    assert report.recovery["methods"] == ["lsq", "fit"], report.notes
    assert report.fidelity.outputs[0].mean_rel_error < 0.9 * lsq_report.fidelity.outputs[0].mean_rel_error
    note = next(n for n in report.notes if n.startswith("fit_outputs:"))
    before, after = (float(v) for v in note.split("error ")[-1].split(" -> "))
    assert after < 0.7 * before
    # same graph, same shapes; weights changed
    assert [n.op_type for n in fit.graph.node] == [n.op_type for n in lsq.graph.node]
    a = {i.name: onnx.numpy_helper.to_array(i) for i in lsq.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in fit.graph.initializer}
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert sum(not np.array_equal(a[k], b[k]) for k in a) >= 10


def test_the_fit_leaves_the_model_it_was_given_untouched(digits, monkeypatch):
    """Model arrays are shared between copies: the fit must train copies."""
    monkeypatch.setattr(fit_outputs, "STEPS", 20)
    from onnxprune.api import analyze_model, prune_model
    from onnxprune.plan import classes_from_plan
    from onnxprune.recover import recover
    calib, _ = digits
    proto = onnx.load(str(ROOT / "models" / "digits_resnet.onnx"))
    slim, report = prune_model(proto, 0.3, round_to=1)
    model, couplings = analyze_model(proto)
    saved = {k: v.copy() for k, v in slim.inits.items()}
    removed = classes_from_plan(couplings, report.plan)
    batches = lambda: ({"input": calib["input"][i:i + 64]} for i in range(0, 256, 64))  # noqa: E731
    fitted, notes = recover(model, slim, couplings, removed, batches, 256, "fit")
    assert any(n.startswith("fit_outputs: every layer fitted") for n in notes), notes
    assert all(np.array_equal(saved[k], slim.inits[k]) for k in saved)
    assert any(not np.array_equal(saved[k], fitted.inits[k]) for k in saved if k in fitted.inits)


def _tiny_trained_case():
    """A small conv net and 96 smooth inputs: enough samples for the fit to run."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 1, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 1, 16), 16)])
    h = b.op("Relu", [b.bn(b.conv(h, 16, 16), 16)])
    proto = b.model([b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [h])]), 16, 4)])
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((96, 1, 8, 8)).astype(np.float32)}
    return proto, calib, dict(criterion="l1", round_to=1)


def test_auto_drops_the_fit_where_it_makes_the_held_out_outputs_worse(monkeypatch):
    proto, calib, same = _tiny_trained_case()
    real = fit_outputs._fit

    def ruinous(model, inputs, targets):   # fit, then spoil the weights
        out = real(model, inputs, targets)
        for name in torch_graph.trainable(model):
            model.inits[name] = model.inits[name] * 3.0
        return out
    monkeypatch.setattr(fit_outputs, "_fit", ruinous)
    _, report = onnxprune.prune(proto, 0.5, calibration=calib, **same)
    assert report.recovery["methods"] == ["lsq"], report.notes
    assert any(n.startswith("recovery: lsq kept instead of lsq, fit") for n in report.notes), report.notes


def test_auto_says_why_the_fit_did_not_run(monkeypatch):
    proto, calib, same = _tiny_trained_case()
    monkeypatch.setattr(torch_graph, "available", lambda: False)
    _, report = onnxprune.prune(proto, 0.5, calibration=calib, **same)
    assert report.recovery["methods"] == ["lsq"]
    assert "fit_outputs: not run (torch is not installed: pip install 'onnxprune[fit]')" in report.notes
    monkeypatch.undo()
    monkeypatch.setattr(fit_outputs, "FIT_MACS", 1e3)
    _, report = onnxprune.prune(proto, 0.5, calibration=calib, **same)
    assert report.recovery["methods"] == ["lsq"]
    assert any(n.startswith("fit_outputs: not run (300 steps would cost") and "over the budget" in n
               for n in report.notes), report.notes
    _, few = onnxprune.prune(proto, 0.5, calibration={"x": calib["x"][:40]}, **same)
    assert few.recovery["methods"] == ["lsq"]


def test_auto_does_not_fit_on_synthetic_images():
    proto, _, same = _tiny_trained_case()
    _, report = onnxprune.prune(proto, 0.5, calibration="synthetic", **same)
    assert "fit" not in report.recovery["methods"]
    assert not any(n.startswith("fit_outputs") for n in report.notes)


def test_the_allocator_trials_do_not_fit_and_the_kept_plan_does(monkeypatch, digits):
    """`--allocator auto` recovers several plans; the fit runs once, on the plan kept."""
    monkeypatch.setattr(fit_outputs, "STEPS", 20)
    calls = []
    real = fit_outputs.run
    monkeypatch.setattr(fit_outputs, "run", lambda model, step: (calls.append(1), real(model, step)))
    calib, _ = digits
    _, report = onnxprune.prune(str(ROOT / "models" / "digits_resnet.onnx"), target_macs=0.7,
                                calibration=calib)
    assert any(n.startswith("--allocator auto:") and "recovery (auto without the fit) on 205" in n
               and n.count(":") >= 3 for n in report.notes), report.notes
    # the kept plan is recovered once more, with the fit: its trial was not the prune's own
    # recovery (whether auto keeps 20 steps of fitting is not the point here)
    assert len(calls) == 1 and report.recovery["methods"][0] == "lsq"
    assert any(n.startswith(("fit_outputs: every layer fitted", "recovery: lsq kept instead of lsq, fit"))
               for n in report.notes), report.notes


def test_asked_by_name_the_fit_runs_and_a_float16_model_stays_float16():
    proto, calib, same = _tiny_trained_case()
    half = retyped(proto, TensorProto.FLOAT16, TensorProto.FLOAT)
    slim, report = onnxprune.prune(half, 0.5, calibration={"x": calib["x"].astype(np.float16)},
                                   recover="lsq,fit", **same)
    assert report.recovery["methods"] == ["lsq", "fit"]
    assert any(n.startswith("fit_outputs: every layer fitted") for n in report.notes), report.notes
    assert {i.data_type for i in slim.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} \
        == {TensorProto.FLOAT16}
    assert helper.tensor_dtype_to_np_dtype(slim.graph.output[0].type.tensor_type.elem_type) == np.float16


def test_a_diverging_fit_leaves_the_weights_as_they_were(monkeypatch):
    proto, calib, same = _tiny_trained_case()
    monkeypatch.setattr(fit_outputs, "LEARNING_RATE", 1e30)
    lsq, _ = onnxprune.prune(proto, 0.5, calibration=calib, recover="lsq", **same)
    slim, report = onnxprune.prune(proto, 0.5, calibration=calib, recover="lsq,fit", **same)
    assert "fit_outputs: the fit diverged; the weights are left as they were" in report.notes, report.notes
    assert [i.raw_data for i in slim.graph.initializer] == [i.raw_data for i in lsq.graph.initializer]


def _fit_notes(proto, calib, **options):
    _, report = onnxprune.prune(proto, 0.5, calibration=calib, recover="lsq,fit", criterion="l1", round_to=1,
                                **options)
    return [n for n in report.notes if n.startswith("fit_outputs")]


def test_a_form_the_executor_does_not_take_is_not_fitted():
    """Conv with auto_pad is in the executor's table but not in every form: found by running."""
    proto, calib, _ = _tiny_trained_case()
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("auto_pad", "SAME_UPPER")])
    assert _fit_notes(proto, calib) == ["fit_outputs: not run (torch could not run the graph: Conv with auto_pad)"]


def test_a_graph_whose_batch_is_written_into_a_reshape_is_not_fitted():
    """The fit runs mini-batches; a Reshape to a fixed batch of 1 cannot take them."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 1, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 1, 16), 16)])
    h = b.op("Reshape", [b.op("GlobalAveragePool", [b.op("Relu", [b.bn(b.conv(h, 16, 16), 16)])]), b.ints([1, 16])])
    proto = b.model([b.gemm(h, 16, 4)])
    calib = {"x": np.random.default_rng(0).standard_normal((96, 1, 8, 8)).astype(np.float32)}
    notes = _fit_notes(proto, calib)
    assert len(notes) == 1 and notes[0].startswith("fit_outputs: not run (torch could not run the graph:"), notes


def test_an_executor_that_disagrees_with_onnxruntime_is_not_trusted(monkeypatch):
    proto, calib, _ = _tiny_trained_case()
    monkeypatch.setitem(torch_graph.KERNELS, "Relu", lambda torch, node, a: a[0])   # a wrong kernel
    assert _fit_notes(proto, calib) == ["fit_outputs: not run (the torch graph does not reproduce onnxruntime's outputs)"]
