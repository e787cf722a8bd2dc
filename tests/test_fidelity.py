"""Fidelity of a pruned model to the original: exact values on hand-made models (a model
against itself, a scaled and a perturbed copy, a hand-labelled classifier, per-step
agreement of sequence outputs), streaming over batches, and clear errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.calibration import load_calibration
from onnxprune.errors import OnnxPruneError
from onnxprune.fidelity import Fidelity, OutputFidelity, compare_models, evaluate

OPSET = 17


# -- hand-made models --------------------------------------------------------------------
def make(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k)
                                                          for k, v in dict(inits).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def linear(w, b=None, batch="N", out="logits"):
    """logits = x · wᵀ + b."""
    w = np.asarray(w, dtype=np.float32)
    b = np.zeros(len(w), np.float32) if b is None else np.asarray(b, dtype=np.float32)
    return make([helper.make_node("Gemm", ["x", "w", "b"], [out], transB=1)],
                [vi("x", [batch, w.shape[1]])], [vi(out, [batch, w.shape[0]])], {"w": w, "b": b})


def scaled_elementwise(w, shape, op="Mul"):
    """y = x * w (broadcast over the last axis)."""
    return make([helper.make_node(op, ["x", "w"], ["y"])], [vi("x", shape)], [vi("y", shape)],
                {"w": np.asarray(w, dtype=np.float32)})


def data(x, labels=None):
    feeds = {"x": np.asarray(x, dtype=np.float32)}
    if labels is not None:
        feeds["labels"] = np.asarray(labels)
    return load_calibration([feeds], ["x"])


RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 4)).astype(np.float32)
B = RNG.standard_normal(6).astype(np.float32)
X = RNG.standard_normal((50, 4)).astype(np.float32)


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(OnnxPruneError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# -- exact values ------------------------------------------------------------------------
def test_a_model_against_itself():
    f = compare_models(linear(W, B), linear(W, B), data(X), batch_size=8)
    o = f.output("logits")
    assert (f.samples, o.samples, o.sample_shape) == (50, 50, (6,))
    assert o.mean_rel_error == 0 and o.max_rel_error == 0 and o.max_abs_error == 0
    assert o.mean_cosine == pytest.approx(1) and o.min_cosine == pytest.approx(1)
    assert o.top1_agreement == 1 and o.identical == 50
    assert "identical on every sample" in f.summary()


def test_a_scaled_copy_has_the_scale_as_relative_error_and_cosine_one():
    """b = (1 + e) a exactly, so ‖a − b‖/‖a‖ = e for every sample, and the direction is kept."""
    for e in (0.01, 0.2):
        o = compare_models(linear(W, B), linear(W * (1 + e), B * (1 + e)), data(X)).output("logits")
        assert o.mean_rel_error == pytest.approx(e, rel=1e-4) and o.max_rel_error == pytest.approx(e, rel=1e-4)
        assert o.min_cosine == pytest.approx(1, abs=1e-6) and o.top1_agreement == 1
        assert o.identical == 0


def test_perturbations_move_every_number_the_right_way():
    """W + t·D: the output error is t·(x·Dᵀ), so the relative error grows linearly in t."""
    d = np.random.default_rng(1).standard_normal(W.shape).astype(np.float32)
    results = [compare_models(linear(W, B), linear(W + t * d, B), data(X)).output("logits")
               for t in (0.05, 0.1, 1.0)]
    small, double, large = results
    assert double.mean_rel_error == pytest.approx(2 * small.mean_rel_error, rel=1e-3)
    assert double.max_rel_error == pytest.approx(2 * small.max_rel_error, rel=1e-3)
    assert 1 > small.mean_cosine > double.mean_cosine > large.mean_cosine
    assert small.min_cosine > large.min_cosine
    assert small.top1_agreement >= large.top1_agreement and large.top1_agreement < 1
    assert small.max_abs_error < large.max_abs_error


def test_per_sample_metrics_against_numpy():
    d = np.random.default_rng(2).standard_normal(W.shape).astype(np.float32)
    o = compare_models(linear(W, B), linear(W + 0.3 * d, B), data(X), batch_size=7).output("logits")
    a, b = X.astype(np.float64) @ W.T + B, X.astype(np.float64) @ (W + 0.3 * d).T + B
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert o.mean_rel_error == pytest.approx(rel.mean(), rel=1e-4)
    assert o.max_rel_error == pytest.approx(rel.max(), rel=1e-4)
    assert o.mean_cosine == pytest.approx(cos.mean(), rel=1e-5)
    assert o.min_cosine == pytest.approx(cos.min(), rel=1e-5)
    assert o.top1_agree == int((a.argmax(1) == b.argmax(1)).sum())


def test_labels_accuracy_on_a_hand_made_classifier():
    """Logits are the input itself; the 'pruned' model swaps classes 0 and 1."""
    x = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]     # original predicts 0, 1, 2, 0
    labels = [0, 1, 2, 1]                                # original right on 3 of 4
    swap = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]             # pruned predicts 1, 0, 2, 1: right on 2
    f = compare_models(linear(np.eye(3)), linear(swap), data(x, labels), batch_size=3)
    o = f.output("logits")
    assert (o.accuracy_original, o.accuracy_pruned, o.labelled) == (0.75, 0.5, 4)
    assert o.top1_agreement == 0.25
    assert "50.0% accuracy on the labels against 75.0% for the original" in f.summary()
    # labels passed explicitly override the data's own
    o = compare_models(linear(np.eye(3)), linear(swap), data(x, labels), labels=[1, 0, 2, 1]).output("logits")
    assert (o.accuracy_original, o.accuracy_pruned) == (0.25, 1.0)
    rows = dict((r[0], r[1:]) for r in f.rows())
    assert rows["logits: accuracy"] == ("75.0%", "50.0%")
    assert rows["logits: top-1 agreement"] == ("", "25.0% (1/4)")


def test_labels_that_fit_no_output_give_a_note():
    f = compare_models(linear(np.eye(3)), linear(np.eye(3)), data(np.eye(3), [0, 1, 7]))
    assert f.output("logits").labelled == 0 and "labels fit no N×C output" in f.summary()


def test_sequence_outputs_agree_per_time_step():
    """N×T×C: boosting class 2 by 3× flips exactly the positions where 3·x₂ overtakes."""
    x = np.array([[[1.0, 0.0, 0.5], [0.0, 2.0, 0.1], [0.2, 0.0, 0.1]],    # argmax 0, 1, 0 -> 2, 1, 2
                  [[0.0, 0.0, 1.0], [5.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])   # argmax 2, 0, 1 -> 2, 0, 1
    f = compare_models(scaled_elementwise([1, 1, 1], ["N", 3, 3]), scaled_elementwise([1, 1, 3], ["N", 3, 3]),
                       data(x), batch_size=1)
    o = f.output("y")
    assert o.sample_shape == (3, 3) and (o.top1_agree, o.top1_total) == (4, 6)
    assert "positions (sample, step)" in f.summary()


def test_outputs_without_classes_have_no_top1():
    f = compare_models(scaled_elementwise([1.0], ["N", 1]), scaled_elementwise([2.0], ["N", 1]), data(X[:, :1]))
    o = f.output("y")
    assert o.top1_agreement is None and "top1_agreement" not in o.to_dict()
    assert o.mean_rel_error == pytest.approx(1.0) and o.mean_cosine == pytest.approx(1.0)


def test_nan_outputs_are_counted_apart():
    x = np.abs(X)
    x[[3, 10, 11]] *= -1  # Sqrt of a negative row gives NaN in the 'pruned' model
    orig = make([helper.make_node("Abs", ["x"], ["y"])], [vi("x", ["N", 4])], [vi("y", ["N", 4])])
    nan = make([helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Mul", ["s", "s"], ["y"])],
               [vi("x", ["N", 4])], [vi("y", ["N", 4])])
    f = compare_models(orig, nan, data(x), batch_size=4)
    o = f.output("y")
    assert (o.nonfinite, o.finite) == (3, 47)
    assert o.max_rel_error < 1e-5  # sqrt(x)² on the finite rows: only rounding
    assert o.top1_agree == 47 and o.top1_total == 50
    assert "NaN or infinity on 3 of 50 samples" in f.summary()
    assert o.to_dict()["nonfinite_samples"] == 3


# -- streaming and batching --------------------------------------------------------------
def test_results_do_not_depend_on_the_batch_size_and_hold_no_arrays():
    d = np.random.default_rng(3).standard_normal(W.shape).astype(np.float32)
    runs = [compare_models(linear(W, B), linear(W + 0.2 * d, B), data(X, np.arange(50) % 6), batch_size=bs)
            for bs in (1, 7, 64)]
    first = runs[0].output("logits")
    for f in runs[1:]:
        o = f.output("logits")
        for field in ("mean_rel_error", "max_rel_error", "mean_cosine", "min_cosine", "max_abs_error"):
            assert getattr(o, field) == pytest.approx(getattr(first, field), rel=1e-9), field
        assert (o.top1_agree, o.correct_original, o.correct_pruned) == \
               (first.top1_agree, first.correct_original, first.correct_pruned)
    for f in runs:  # running sums only: nothing grows with the number of samples
        for o in f.outputs:
            for field in dataclasses.fields(OutputFidelity):
                assert isinstance(getattr(o, field.name), (int, float, str, tuple)), field.name


def test_every_batch_holds_at_most_batch_size_samples(monkeypatch):
    cs = data(X)
    seen = []
    batches = type(cs).batches

    def spy(self, batch_size, dtype=None):
        for feeds in batches(self, batch_size, dtype):
            seen.append(len(feeds["x"]))
            yield feeds

    monkeypatch.setattr(type(cs), "batches", spy)
    compare_models(linear(W, B), linear(W, B), cs, batch_size=16)
    assert seen == [16, 16, 16, 2]


def test_fixed_batch_models_run_in_chunks():
    """A model whose input is [1, 4] (a common export) or [4, 4] gives the same numbers as
    the dynamic one; a short chunk is padded, and its padding trimmed."""
    d = np.random.default_rng(4).standard_normal(W.shape).astype(np.float32)
    dyn = compare_models(linear(W, B), linear(W + 0.1 * d, B), data(X), batch_size=8).output("logits")
    fixed = compare_models(linear(W, B, batch=1), linear(W + 0.1 * d, B, batch=1), data(X),
                           batch_size=8).output("logits")
    mixed = compare_models(linear(W, B), linear(W + 0.1 * d, B, batch=1), data(X), batch_size=8).output("logits")
    # a fixed batch of 4 with batches of 6: chunks of 4 and of 2 padded to 4
    four = compare_models(linear(W, B, batch=4), linear(W + 0.1 * d, B, batch=4), data(X),
                          batch_size=6).output("logits")
    for o in (fixed, mixed, four):
        assert o.samples == 50
        assert o.mean_rel_error == pytest.approx(dyn.mean_rel_error, rel=1e-6)
        assert o.top1_agree == dyn.top1_agree


def test_float16_model_gets_its_inputs_cast():
    m = make([helper.make_node("Mul", ["x", "w"], ["y"])], [vi("x", ["N", 4], TensorProto.FLOAT16)],
             [vi("y", ["N", 4], TensorProto.FLOAT16)], {"w": np.full(4, 2, np.float16)})
    o = compare_models(m, m, data(X)).output("y")
    assert o.identical == 50 and o.mean_rel_error == 0


# -- what the models and outputs may be --------------------------------------------------
def test_paths_protos_and_onnxprune_models(tmp_path):
    onnx.save(linear(W, B), tmp_path / "a.onnx")
    from onnxprune.load import load
    for original in (tmp_path / "a.onnx", str(tmp_path / "a.onnx"), load(linear(W, B))):
        assert compare_models(original, linear(W, B), data(X)).output("logits").identical == 50


def test_outputs_without_a_sample_axis_are_skipped_with_a_note():
    def model(scale):
        return make([helper.make_node("Mul", ["x", "w"], ["y"]),
                     helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)],
                    [vi("x", ["N", 4])], [vi("y", ["N", 4]), vi("total", [])], {"w": np.float32(scale)})
    f = compare_models(model(1), model(2), data(X))
    assert [o.name for o in f.outputs] == ["y"]
    assert "Output 'total' has no sample axis" in f.summary()


def test_renamed_outputs_are_paired_by_position():
    f = compare_models(linear(W, B), linear(W, B, out="scores"), data(X))
    assert f.output("logits").identical == 50 and "paired by position" in f.summary()


def test_summary_table_and_dict_name_every_output():
    def model(scale):
        return make([helper.make_node("Mul", ["x", "w"], ["p"]), helper.make_node("Relu", ["p"], ["q"])],
                    [vi("x", ["N", 4])], [vi("p", ["N", 4]), vi("q", ["N", 4])], {"w": np.float32(scale)})
    f = compare_models(model(1), model(1.5), data(X))
    assert "Output 'p'" in f.summary() and "Output 'q'" in f.summary()
    table = f.table()
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1 and lines[1].startswith("| Fidelity")
    assert "p: rel. error" in table and "q: cosine" in table and "50.00%" in table
    d = f.to_dict()
    assert [o["output"] for o in d["outputs"]] == ["p", "q"] and d["samples"] == 50
    assert d["outputs"][0]["mean_rel_error"] == pytest.approx(0.5, rel=1e-5)
    assert f.max_rel_error == pytest.approx(0.5, rel=1e-5) and f.top1_agreement == 1.0
    json.dumps(d, allow_nan=False)


def test_pruned_digits_model_drifts_and_unpruned_does_not(tmp_path):
    """End to end on the shipped digits ResNet, with held-out inputs from a split."""
    model = "models/digits_resnet.onnx"
    x = np.random.default_rng(5).random((24, 1, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    _, held = load_calibration(tmp_path / "d.npz", model).split(0.5, seed=0)
    same, _ = onnxprune.prune(model, ratio=0.0)
    slim, _ = onnxprune.prune(model, target_macs=0.5)
    assert compare_models(model, same, held).output("logits").max_rel_error < 1e-5
    o = compare_models(model, slim, held, batch_size=5).output("logits")
    assert o.samples == 12 and 0 < o.mean_rel_error and o.mean_cosine < 1


# -- evaluate and errors -----------------------------------------------------------------
def test_evaluate_reads_the_data_for_the_original(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.eye(3, dtype=np.float32), y=np.array([0, 1, 1]))
    f = evaluate(linear(np.eye(3)), linear(np.eye(3)), tmp_path / "d.npz", labels_key="y")
    assert f.output("logits").accuracy_original == pytest.approx(2 / 3)
    np.savez(tmp_path / "e.npz", x=np.eye(3, dtype=np.float32))
    assert error(evaluate, linear(np.eye(3)), linear(np.eye(3)), tmp_path / "e.npz", labels_key="y") == \
        "the evaluation data has no labels under 'y'"
    assert evaluate(linear(np.eye(3)), linear(np.eye(3)), tmp_path / "e.npz", limit=2).samples == 2


def test_errors(tmp_path):
    m = linear(W, B)
    missing = tmp_path / "no.onnx"
    assert error(compare_models, missing, m, data(X)) == f"original model not found: {missing}"
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert error(compare_models, m, tmp_path / "junk.onnx", data(X)).startswith(
        "onnxruntime cannot load the pruned model")
    other = load_calibration([{"z": X}], ["z"])
    assert error(compare_models, m, m, other) == "the data feeds ['z']; the original model takes ['x']"
    two = make([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])],
               [vi("x", ["N", 4])], [vi("a", ["N", 4]), vi("b", ["N", 4])])
    assert "the models have different outputs: ['logits'] and ['a', 'b']" in error(compare_models, m, two, data(X))
    assert "labels must be 50 non-negative integer classes" in error(compare_models, m, m, data(X), labels=[1, 2])
    wrong_width = load_calibration([{"x": np.zeros((2, 5), np.float32)}], ["x"])
    assert error(compare_models, m, m, wrong_width).startswith("onnxruntime cannot run the original model on the data")
    assert "batch size must be a positive integer" in error(compare_models, m, m, data(X), batch_size=0)


def test_fidelity_of_no_outputs_still_summarises():
    f = Fidelity(0, [], 32)
    assert f.max_rel_error is None and f.top1_agreement is None and f.table().count("\n") >= 3


def test_original_outputs_shared_between_comparisons_run_the_original_once(monkeypatch):
    from onnxprune import fidelity
    d = np.random.default_rng(4).standard_normal(W.shape).astype(np.float32)
    runs = []
    real = fidelity._Runner.run
    monkeypatch.setattr(fidelity._Runner, "run", lambda self, feeds: runs.append(self.what) or real(self, feeds))
    kept = {}
    first = [compare_models(linear(W, B), linear(W + t * d, B), data(X), batch_size=16, original_outputs=kept)
             for t in (0.1, 0.3)]
    assert runs.count("original") == 4 and runs.count("pruned") == 8   # 4 batches, the original once
    runs.clear()
    alone = [compare_models(linear(W, B), linear(W + t * d, B), data(X), batch_size=16) for t in (0.1, 0.3)]
    assert runs.count("original") == 8
    for a, b in zip(first, alone):
        assert a.output("logits").mean_rel_error == b.output("logits").mean_rel_error
    monkeypatch.setattr(fidelity, "ORIGINAL_OUTPUT_BYTES", 0)   # too big to keep: run again
    runs.clear()
    kept = {}
    for t in (0.1, 0.3):
        compare_models(linear(W, B), linear(W + t * d, B), data(X), batch_size=16, original_outputs=kept)
    assert runs.count("original") == 8 and not kept
