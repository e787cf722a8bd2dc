"""Models in other types than float32: float16 and float64 prune end to end with the oracle
on and keep their type; mixed-precision graphs (a Cast to float16 in the middle) too;
bfloat16 and float64 convolutions, which onnxruntime's CPU provider cannot run, are refused
in one line; integer weights that are not QDQ are kept as they are and their channels
frozen, never an internal error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune import cli
from onnxprune.api import analyze_model, rewrite
from onnxprune.budget import allocate
from onnxprune.dtypes import retyped, rounding_floor
from onnxprune.passes.fold_removed_constants import plan_folds
from onnxprune.saliency import score
from onnxprune.saliency.bgsc import bgsc_details
from onnxprune.verify import masking_oracle

ROOT = Path(__file__).resolve().parents[1]
FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BFLOAT16}


# -- models ------------------------------------------------------------------------------
def to_type(proto, elem, source=TensorProto.FLOAT):
    """The `source`-typed model `proto` computing in `elem` instead (what a float16 converter
    does to an export)."""
    return retyped(proto, elem, source)


def conv_net():
    """conv/BN/relu, a residual Add, a Concat of two branches, pooled into a Gemm."""
    b = GraphBuilder(seed=1)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    y = b.bn(b.conv(b.op("Relu", [b.bn(b.conv(h, 8, 8), 8)]), 8, 8), 8)
    s = b.op("Relu", [b.op("Add", [h, y])])
    c = b.op("Concat", [b.op("Relu", [b.conv(s, 8, 6)]), b.op("Relu", [b.conv(s, 8, 4, k=1)])], axis=1)
    z = b.op("Relu", [b.conv(c, 10, 8)])
    out = b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [z])]), 8, 4)
    return b.model([out])


def mlp():
    """Gemm/BN/relu with a residual Add and a Concat: what onnxruntime runs in float64."""
    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 16])
    h = b.op("Relu", [b.bn(b.gemm(x, 16, 12), 12)])
    y = b.gemm(b.op("Relu", [b.gemm(h, 12, 12)]), 12, 12)
    s = b.op("Relu", [b.op("Add", [h, y])])
    c = b.op("Concat", [s, b.op("Relu", [b.gemm(h, 12, 6)])], axis=1)
    return b.model([b.gemm(c, 18, 4)])


def mixed_precision_net():
    """float32 stem, a Cast to float16 for the residual body, a Cast back for the head."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 8)])
    h16 = b.op("Cast", [h], to=TensorProto.FLOAT16)
    w = lambda shape: b.const((b.rng.standard_normal(shape) * 0.3).astype(np.float16))
    y = b.op("Relu", [b.op("Conv", [h16, w((8, 8, 3, 3)), w((8,))], kernel_shape=[3, 3], pads=[1] * 4)])
    y = b.op("Conv", [y, w((8, 8, 1, 1)), w((8,))], kernel_shape=[1, 1])
    s = b.op("Relu", [b.op("Add", [h16, y])])
    s32 = b.op("Cast", [b.op("GlobalAveragePool", [s])], to=TensorProto.FLOAT)
    return b.model([b.gemm(b.op("Flatten", [s32]), 8, 4)])


def float_types_of(proto) -> set[int]:
    types = {t.data_type for t in proto.graph.initializer if t.data_type in FLOAT_TYPES}
    return types | {vi.type.tensor_type.elem_type for vi in list(proto.graph.input) + list(proto.graph.output)}


def prune_verified(proto, **options):
    options.setdefault("round_to", 1)
    slim, report = onnxprune.prune(proto, verify=True, **options)
    onnx.checker.check_model(slim, full_check=True)
    assert report.oracle_passed, (report.oracle, report.notes)
    assert report.after["params"] < report.before["params"]
    return slim, report


# -- float16 -----------------------------------------------------------------------------
BUDGETS = [{"ratio": 0.5}, {"target_macs": 0.5}]


@pytest.mark.parametrize("criterion", ["l1", "bgsc"])
@pytest.mark.parametrize("budget", BUDGETS, ids=["ratio", "target_macs"])
@pytest.mark.parametrize("build", [residual_net, conv_net])
def test_float16_prunes_verified_and_stays_float16(build, budget, criterion):
    proto = to_type(build(), TensorProto.FLOAT16)
    slim, report = prune_verified(proto, criterion=criterion, fold="exact", **budget)
    assert float_types_of(slim) == {TensorProto.FLOAT16}
    assert report.oracle.dtype == "float16"
    # judged at float16's precision, not at a vacuous one
    assert report.oracle.threshold(report.tolerance) == pytest.approx(4 * np.finfo(np.float16).eps)


def test_float16_trained_model_with_a_mac_target():
    proto = to_type(onnx.load(ROOT / "models" / "digits_resnet.onnx"), TensorProto.FLOAT16)
    slim, report = prune_verified(proto, criterion="bgsc", target_macs=0.6, round_to=8)
    assert float_types_of(slim) == {TensorProto.FLOAT16}
    assert report.after["macs"] <= 0.6 * report.before["macs"]


@pytest.mark.parametrize("name", ["torchvision_vit", "swin", "maxvit"])
def test_float16_transformers_prune_heads_and_mlps_verified(name):
    """LayerNorm, attention MatMuls (Einsum in the MaxViT) and the heads' Reshapes in float16."""
    pytest.importorskip("torch")
    from helpers import exported
    proto = to_type(exported(name), TensorProto.FLOAT16)
    slim, report = prune_verified(proto, ratio=0.5, criterion="l1", scope="local", round_to=1)
    assert float_types_of(slim) == {TensorProto.FLOAT16} and report.oracle.dtype == "float16"
    heads = [g for g in report.groups if g["frozen"] is None and g["channels_before"] in (2, 4)]
    assert heads and all(g["channels_after"] < g["channels_before"] for g in heads)


def test_float16_exact_folds_are_computed_and_stored_in_float16():
    b = GraphBuilder(seed=3)  # tests/test_fold.py's net: 1x1 conv and Gemm fold exactly
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    y = b.op("Relu", [b.conv(h, 8, 6, k=1, pad=0)])
    proto = to_type(b.model([b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [y])]), 6, 4)]),
                    TensorProto.FLOAT16)
    model, couplings = analyze_model(proto)
    removed = allocate(couplings, score(model, couplings, "l1").values, 0.5)
    folds, stats = plan_folds(model, couplings, removed, "exact")
    assert stats.exact == 2 and stats.dropped == 0
    slim = rewrite(model, couplings, removed, folds)
    folded = [a for name, a in slim.inits.items() if name.endswith("__bias_folded")]
    assert len(folded) == 2 and all(a.dtype == np.float16 for a in folded)
    result = masking_oracle(model, couplings, removed, slim, folds)
    assert result.passed() and result.max_rel_diff <= rounding_floor(np.float16)


def _float16_rewrite():
    proto = to_type(conv_net(), TensorProto.FLOAT16)
    model, couplings = analyze_model(proto)
    removed = allocate(couplings, score(model, couplings, "l1").values, 0.5)
    folds, _ = plan_folds(model, couplings, removed, "exact")
    return model, couplings, removed, folds, rewrite(model, couplings, removed, folds)


@pytest.mark.parametrize("factor", [1.01, 1.1])
def test_float16_oracle_catches_a_perturbed_weight(factor):
    """The float16 threshold is tight: the head's kept weights 1 % off fail it."""
    model, couplings, removed, folds, slim = _float16_rewrite()
    assert masking_oracle(model, couplings, removed, slim, folds).passed()
    gemm = next(n for n in slim.graph.node if n.op_type == "Gemm")
    w = slim.inits[gemm.input[1]]
    slim.inits[gemm.input[1]] = (w.astype(np.float32) * factor).astype(np.float16)
    result = masking_oracle(model, couplings, removed, slim, folds)
    assert result.dtype == "float16" and not result.passed(), result
    assert result.threshold() < 1e-2


def test_float16_bgsc_ranks_from_upcast_weights():
    """bgsc runs its bound graph in float32: the float16 model scores exactly like the
    float32 model with the same (float16-representable) weights."""
    half = to_type(conv_net(), TensorProto.FLOAT16)
    same = to_type(half, TensorProto.FLOAT, source=TensorProto.FLOAT16)  # float16 -> float32 is exact
    scores = [bgsc_details(*analyze_model(p))["scores"] for p in (half, same)]
    assert scores[0].max() > 0
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)


def test_mixed_precision_graph_prunes_with_masks_of_each_layer_type():
    slim, report = prune_verified(mixed_precision_net(), ratio=0.5, criterion="bgsc")
    assert report.oracle.dtype == "float16"
    kinds = {t.name: t.data_type for t in slim.graph.initializer}
    assert TensorProto.FLOAT16 in kinds.values() and TensorProto.FLOAT in kinds.values()
    assert slim.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_float16_through_the_command_line(tmp_path, capsys):
    src, out = tmp_path / "half.onnx", tmp_path / "slim.onnx"
    onnx.save(to_type(conv_net(), TensorProto.FLOAT16), src)
    code = cli.main([str(src), str(out), "--ratio", "0.5", "--verify", "--round-to", "1"])
    assert code == 0, capsys.readouterr()
    assert float_types_of(onnx.load(out)) == {TensorProto.FLOAT16}


# -- float64 -----------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["l1", "bgsc"])
@pytest.mark.parametrize("budget", BUDGETS, ids=["ratio", "target_macs"])
def test_float64_prunes_verified_and_stays_float64(budget, criterion):
    slim, report = prune_verified(to_type(mlp(), TensorProto.DOUBLE), criterion=criterion, **budget)
    assert float_types_of(slim) == {TensorProto.DOUBLE}
    assert report.oracle.dtype == "float64" and report.oracle.max_rel_diff < 1e-12


def test_float64_oracle_catches_a_perturbed_weight():
    model, couplings = analyze_model(to_type(mlp(), TensorProto.DOUBLE))
    removed = allocate(couplings, score(model, couplings, "l1").values, 0.5)
    slim = rewrite(model, couplings, removed, {})
    last = [n for n in slim.graph.node if n.op_type == "Gemm"][-1]
    slim.inits[last.input[1]] = slim.inits[last.input[1]] * 1.001
    assert not masking_oracle(model, couplings, removed, slim).passed()


def test_float64_convolution_is_refused_in_one_line(tmp_path, capsys):
    proto = to_type(residual_net(), TensorProto.DOUBLE)
    with pytest.raises(onnxprune.OnnxPruneError, match=r"cannot run Conv .* float64 model"):
        onnxprune.prune(proto, 0.5)
    src, out = tmp_path / "double.onnx", tmp_path / "out.onnx"
    onnx.save(proto, src)
    assert cli.main([str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float64" in err[0] and "Conv" in err[0]
    assert not out.exists()


# -- bfloat16 ----------------------------------------------------------------------------
def test_bfloat16_is_refused_in_one_line(tmp_path, capsys):
    """onnxruntime's CPU provider has no bfloat16 Conv (nor Add, Relu, BatchNormalization)."""
    proto = to_type(residual_net(), TensorProto.BFLOAT16)
    with pytest.raises(onnxprune.OnnxPruneError, match="bfloat16 models are not supported"):
        onnxprune.prune(proto, 0.5)
    src, out = tmp_path / "bf16.onnx", tmp_path / "out.onnx"
    onnx.save(proto, src)
    assert cli.main([str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: bfloat16") and "Traceback" not in err[0]
    assert not out.exists()


def test_onnxruntime_has_no_bfloat16_conv():
    """The reason for the refusal, checked rather than assumed."""
    import ml_dtypes  # noqa: F401 - onnx needs it for bfloat16 arrays
    import onnxruntime as ort
    proto = to_type(residual_net(), TensorProto.BFLOAT16)
    with pytest.raises(Exception, match="bfloat16"):
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


# -- integer weights that are not QDQ ----------------------------------------------------
def _int8(b, shape):
    return b.const(b.rng.integers(-127, 128, shape).astype(np.int8), "q")


def _head(b, y, c):
    return b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [b.conv(y, c, 8)])])]), 8, 4)


def int8_weight_through_cast():
    """Weight-only quantization: Conv(x, Cast(int8) * scale)."""
    b = GraphBuilder(seed=4)
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    w = b.op("Mul", [b.op("Cast", [_int8(b, (8, 8, 3, 3))], to=TensorProto.FLOAT),
                     b.floats(np.full((8, 1, 1, 1), 0.01))])
    y = b.op("Relu", [b.op("Conv", [h, w, b.weight((8,), "b")], kernel_shape=[3, 3], pads=[1] * 4)])
    return b.model([_head(b, y, 8)])


def conv_integer():
    b = GraphBuilder(seed=5)
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    q, scale, zero = b.op("DynamicQuantizeLinear", [h], n_outputs=3)
    y = b.op("ConvInteger", [q, _int8(b, (8, 8, 3, 3)), zero], pads=[1] * 4)
    y = b.op("Mul", [b.op("Cast", [y], to=TensorProto.FLOAT), scale])
    return b.model([_head(b, b.conv(y, 8, 8), 8)])


def matmul_integer():
    b = GraphBuilder(seed=6)
    h = b.op("Relu", [b.gemm(b.input("x", [1, 16]), 16, 12)])
    q, scale, zero = b.op("DynamicQuantizeLinear", [h], n_outputs=3)
    y = b.op("Mul", [b.op("Cast", [b.op("MatMulInteger", [q, _int8(b, (12, 10)), zero])], to=TensorProto.FLOAT),
                     scale])
    y = b.op("Relu", [b.gemm(y, 10, 10)])
    return b.model([b.gemm(y, 10, 4)])


@pytest.mark.parametrize("build, reason", [
    (int8_weight_through_cast, "Conv weight is computed at run time"),
    (conv_integer, "unsupported operator ConvInteger"),
    (matmul_integer, "unsupported operator MatMulInteger"),
])
@pytest.mark.parametrize("criterion", ["l1", "bgsc"])
def test_int8_weights_stay_int8_and_their_channels_freeze(build, reason, criterion):
    slim, report = prune_verified(build(), ratio=0.5, criterion=criterion)
    int8 = [t for t in slim.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8) == 1 and numpy_helper.to_array(int8[0]).size > 64   # whole, and not widened
    assert any(reason in g["reason"] for g in report.to_dict()["frozen"]), report.frozen_groups


def test_int8_weight_fed_to_a_float_conv_is_refused_in_one_line():
    b = GraphBuilder(seed=7)
    h = b.op("Relu", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)])
    y = b.op("Conv", [h, _int8(b, (8, 8, 3, 3))], kernel_shape=[3, 3], pads=[1] * 4)
    with pytest.raises(onnxprune.OnnxPruneError, match=r"rejects this int8-weight model: .*tensor\(int8\)"):
        onnxprune.prune(b.model([_head(b, y, 8)]), 0.5)
