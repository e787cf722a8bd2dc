"""Batch sizes: the analysis fixes a symbolic batch (to 1 by default), but the model claims
any. The masking oracle therefore also compares at batch 2; a pruned model that breaks or
mixes the batch fails, and a model that itself runs at batch 1 only is reported so."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune import cli
from onnxprune.api import analyze_model, rewrite
from onnxprune.budget import allocate
from onnxprune.load import load
from onnxprune.runtime import model_session, random_inputs
from onnxprune.saliency import score
from onnxprune.verify import masking_oracle

N = "N"


def flatten_net(batch=N, target=(-1, 8 * 16)):
    """conv -> relu -> Reshape(target) -> Gemm; target (1, -1) runs at batch 1 only."""
    b = GraphBuilder(seed=8)
    h = b.op("Relu", [b.conv(b.input("x", [batch, 3, 4, 4]), 3, 8)])
    r = b.op("Reshape", [h, b.ints(list(target))])
    return b.model([b.gemm(r, 8 * 16, 4)])


def prune_verified(proto, **options):
    return onnxprune.prune(proto, 0.5, verify=True, round_to=1, **options)


def pruned_parts(proto):
    model, couplings = analyze_model(proto)
    removed = allocate(couplings, score(model, couplings, "l1").values, 0.5)
    return model, couplings, removed, rewrite(model, couplings, removed, {})


def test_symbolic_batch_is_verified_at_batch_1_and_2():
    _, report = prune_verified(residual_net(x_shape=(N, 3, 8, 8)))
    assert report.oracle_passed and report.oracle.batches == (1, 2)
    assert report.to_dict()["oracle_batches"] == [1, 2]
    assert not [n for n in report.notes if n.startswith("oracle")]


def test_fixed_batch_is_verified_as_declared():
    _, report = prune_verified(residual_net())
    assert report.oracle_passed and report.oracle.batches == ()


def test_batch_given_as_2_is_also_verified_at_1():
    _, report = prune_verified(residual_net(x_shape=(N, 3, 8, 8)), input_shapes={"x": (2, 3, 8, 8)})
    assert report.oracle_passed and report.oracle.batches == (2, 1)


def test_model_hard_coded_to_batch_1_is_reported_not_silently_passed(tmp_path, capsys):
    """Reshape to (1, -1): the original itself cannot run at batch 2. The oracle says so and
    judges at batch 1 only."""
    proto = flatten_net(target=(1, -1))
    _, report = prune_verified(proto)
    assert report.oracle_passed and report.oracle.batches == (1,)
    note = "oracle: the original model does not run at batch 2"
    assert any(n.startswith(note) and "compared at batch 1 only" in n for n in report.notes), report.notes
    src, out = tmp_path / "b1.onnx", tmp_path / "out.onnx"
    onnx.save(proto, src)
    assert cli.main([str(src), str(out), "--ratio", "0.5", "--verify", "--round-to", "1"]) == 0
    assert f"note: {note}" in capsys.readouterr().out


def test_pruned_model_that_breaks_batch_2_fails_the_oracle():
    """A rewrite that hard-codes the batch (as a wrong Reshape target would) runs at batch 1
    and matches there; at batch 2 it does not run, while the original does."""
    model, couplings, removed, slim = pruned_parts(flatten_net())
    assert masking_oracle(model, couplings, removed, slim).passed()
    reshape = next(n for n in slim.graph.node if n.op_type == "Reshape")
    target = slim.inits[reshape.input[1]].copy()
    target[0] = 1
    slim.inits[reshape.input[1]] = target
    result = masking_oracle(model, couplings, removed, slim)
    assert not result.passed() and result.max_rel_diff == float("inf")
    assert any("the pruned model does not run at batch 2" in n for n in result.notes), result.notes


def test_pruned_model_that_mixes_the_batch_fails_the_oracle():
    """Every sample replaced by the batch mean before the head: identical at batch 1, wrong at 2."""
    model, couplings, removed, slim = pruned_parts(flatten_net())
    gemm = next(n for n in slim.graph.node if n.op_type == "Gemm")
    x = gemm.input[0]
    mean = helper.make_node("ReduceMean", [x], ["batch_mean"], axes=[0], keepdims=1)
    zeros = helper.make_node("Sub", [x, x], ["zeros"])
    mixed = helper.make_node("Add", ["batch_mean", "zeros"], ["mixed"])
    gemm.input[0] = "mixed"
    nodes = list(slim.graph.node)
    del slim.graph.node[:]
    slim.graph.node.extend(nodes[:-1] + [mean, zeros, mixed, nodes[-1]])
    result = masking_oracle(model, couplings, removed, slim)
    assert result.batches == (1, 2) and not result.passed(), result
    assert np.isfinite(result.max_rel_diff) and result.max_rel_diff > 1e-2


def test_random_inputs_resize_only_the_symbolic_batch():
    b = GraphBuilder(seed=9)
    h = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(b.input("x", [N, 3, 4, 4]), 3, 4)])])
    out = b.op("Add", [h, b.input("y", [1, 4])])
    model = load(b.model([out]))
    sess = model_session(model)
    feeds = random_inputs(model, np.random.default_rng(0), sess, batch=2)
    assert feeds["x"].shape == (2, 3, 4, 4) and feeds["y"].shape == (1, 4)
    assert random_inputs(model, np.random.default_rng(0), sess)["x"].shape == (1, 3, 4, 4)


@pytest.mark.parametrize("criterion", ["l1", "bgsc"])
def test_symbolic_batch_float16(criterion):
    from test_dtypes import to_type
    proto = to_type(residual_net(x_shape=(N, 3, 8, 8)), onnx.TensorProto.FLOAT16)
    _, report = prune_verified(proto, criterion=criterion)
    assert report.oracle_passed and report.oracle.batches == (1, 2) and report.oracle.dtype == "float16"


def pooled_net():
    """conv -> relu -> conv -> GlobalAveragePool, height and width symbolic."""
    b = GraphBuilder(seed=9)
    h = b.op("Relu", [b.conv(b.input("x", [N, 3, "H", "W"]), 3, 8)])
    return b.model([b.op("GlobalAveragePool", [b.conv(h, 8, 4)])])


def test_symbolic_height_and_width_are_verified_at_another_size():
    _, report = prune_verified(pooled_net(), input_shapes={"x": (1, 3, 8, 8)})
    assert report.oracle_passed and report.oracle.batches == (1, 2)
    assert any(n.startswith("oracle: also compared with input dimension(s) [2, 3] at 2x") for n in report.notes)


def test_pruned_model_that_bakes_the_analysed_size_fails_the_oracle():
    """A rewrite that fixes the analysed height and width (as PP-OCRv4's token count once was)
    matches at that size and at batch 2; at another size it does not run, while the original does."""
    model, couplings = analyze_model(pooled_net(), {"x": (1, 3, 8, 8)})
    removed = allocate(couplings, score(model, couplings, "l1").values, 0.5)
    slim = rewrite(model, couplings, removed, {})
    assert masking_oracle(model, couplings, removed, slim).passed()
    slim.inits["baked_shape"] = np.array([0, 3, 8, 8], dtype=np.int64)
    first = next(n for n in slim.graph.node if n.op_type == "Conv")
    slim.graph.node.insert(0, helper.make_node("Reshape", ["x", "baked_shape"], ["x_baked"], name="bake"))
    first.input[0] = "x_baked"
    result = masking_oracle(model, couplings, removed, slim)
    assert not result.passed() and result.max_rel_diff == float("inf")
    assert any("the pruned model does not run with input dimension 2 at 2x" in n for n in result.notes), result.notes


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet_small", "googlenet", "regnety_400mf"])
def test_exports_that_take_any_image_size_are_verified_at_another_size(name):
    """Zoo models exported with symbolic batch, height and width (torch's dynamic_axes),
    pruned at their test size: the pruned model matches the masked original at batch 2 and
    at twice the height and twice the width too."""
    from models.export import ZOO, build_module, export_onnx
    module, shape = build_module(name, ZOO[name][1])
    proto = export_onnx(module, shape, dynamic_size=True)
    _, report = onnxprune.prune(proto, 0.3, criterion="l1", verify=True, input_shapes={"input": shape})
    assert report.oracle_passed and report.oracle.batches == (1, 2)
    assert any(n.startswith("oracle: also compared with input dimension(s) [2, 3] at 2x") for n in report.notes)
    assert report.after["macs"] < 0.9 * report.before["macs"]
