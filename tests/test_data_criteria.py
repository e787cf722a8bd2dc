"""Criteria and the allocator that read calibration data (docs/methods.md §3, §5.4): each
computes what its formula says, respects frozen channels, and refuses to run without data."""
from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from helpers import GraphBuilder, residual_net
from onnxprune.api import analyze_model
from onnxprune.budget import floor_of
from onnxprune.cli import main as cli_main
from onnxprune.errors import OnnxPruneError
from onnxprune.plan import classes_from_plan
from onnxprune.saliency import CRITERIA, CalibrationData, needs_data, score
from onnxprune.saliency.obs import removal_costs

DATA_CRITERIA = ["activation", "fluctuation", "heatmap", "lsq-aware"]


def _data(samples, name="x", size=16):
    return CalibrationData(lambda: ({name: samples[i:i + size]} for i in range(0, len(samples), size)),
                           len(samples))


def _samples(shape, n=48, seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape[1:])).astype(np.float32)


def test_data_criteria_are_registered_and_need_data():
    for name in DATA_CRITERIA:
        assert name in CRITERIA and needs_data(name)
    assert not needs_data("l1") and not needs_data("bgsc")
    proto = residual_net()
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        onnxprune.prune(proto, 0.5, criterion="heatmap", round_to=1)
    model, couplings = analyze_model(proto)
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        score(model, couplings, "lsq-aware")


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_each_data_criterion_scores_every_class_and_keeps_frozen_ones(criterion):
    proto = residual_net()
    model, couplings = analyze_model(proto)
    s = score(model, couplings, criterion, data=_data(_samples((1, 3, 8, 8))))
    assert s.values.shape == (couplings.n_classes,) and np.isfinite(s.values).all()
    prunable = np.concatenate([g.classes for g in couplings.groups if g.frozen is None and g.width > 1])
    assert (s.values[prunable] > 0).all() and s.notes
    # an excluded layer's channels are frozen: the plan never touches them
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    feeds = [{"x": _samples((1, 3, 8, 8))}]
    plan, _ = onnxprune.plan(proto, 0.5, criterion=criterion, exclude=[conv], round_to=1, calibration=feeds)
    _, frozen_couplings = analyze_model(proto, exclude=[conv])
    removed = classes_from_plan(frozen_couplings, plan)
    assert removed and not removed & set(frozen_couplings.frozen)
    assert conv not in plan.removed


def _chain(dead_channel=None, zero_weights=()):
    """x -> conv (8) -> relu -> conv (8, 3x3) -> relu -> GAP -> Gemm; a dead channel is a
    filter with zero weights and a negative bias (zero after the ReLU on every input)."""
    b = GraphBuilder(seed=5)
    x = b.input("x", [1, 4, 6, 6])
    w1 = b.rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b1 = b.rng.uniform(0.1, 0.3, 8).astype(np.float32)
    if dead_channel is not None:
        w1[dead_channel], b1[dead_channel] = 0.0, -1.0
    h = b.op("Relu", [b.op("Conv", [x, b.const(w1), b.const(b1)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    w2 = b.rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3
    for c in zero_weights:
        w2[:, c] *= 1e-3
    y = b.op("Relu", [b.op("Conv", [h, b.const(w2), b.const(np.zeros(8, np.float32))], kernel_shape=[3, 3],
                           pads=[1, 1, 1, 1])])
    p = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    return b.model([b.op("Gemm", [p, b.weight((3, 8)), b.weight((3,))], transB=1)]), w1, b1, w2


def test_heatmap_finds_a_dead_channel_and_scores_it_lowest():
    proto, *_ = _chain(dead_channel=5)
    model, couplings = analyze_model(proto)
    s = score(model, couplings, "heatmap", data=_data(_samples((1, 4, 6, 6))))
    first = next(p for p in couplings.producers if p.node == model.graph.node[0].name)
    dead = int(couplings.class_of[first.ids[5]])
    group = couplings.groups[int(couplings.group_of[dead])]
    assert s.values[dead] == 0 and (s.values[group.classes[group.classes != dead]] > 0).all()
    assert any("1 dead channel class" in n for n in s.notes), s.notes
    # the healthy model has none
    healthy, *_ = _chain()
    m2, c2 = analyze_model(healthy)
    assert not any("dead" in n for n in score(m2, c2, "heatmap", data=_data(_samples((1, 4, 6, 6)))).notes)


def test_heatmap_keeps_by_cumulative_mass():
    """One channel carries almost all the mass: at r = 0.5 it alone is kept on every sample."""
    from onnxprune.saliency.heatmap import _TensorStats
    stats = _TensorStats(np.arange(4))
    x = np.zeros((3, 4, 2, 2))
    x[:, 0] = 10.0
    x[:, 1:, 0, 0] = [[1.0, 2.0, 3.0]]
    stats.add(x, 1, 0.5)
    assert stats.kept.tolist() == [3, 0, 0, 0]
    stats.add(x, 1, 1.0)                           # r = 1: every nonzero channel
    assert stats.kept.tolist() == [6, 3, 3, 3] and stats.fired.all()


def test_activation_is_energy_times_consumer_weight_norm():
    proto, w1, b1, w2 = _chain()
    model, couplings = analyze_model(proto)
    samples = _samples((1, 4, 6, 6))
    # the first conv's output, after ReLU, by numpy: a 3x3 conv with padding 1
    pad = np.pad(samples.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    h = np.zeros((len(samples), 8, 6, 6))
    for i in range(6):
        for j in range(6):
            h[:, :, i, j] = np.einsum("ncab,ocab->no", pad[:, :, i:i + 3, j:j + 3], w1) + b1
    h = np.maximum(h, 0)
    energy = (w2.astype(np.float64) ** 2).sum(axis=(0, 2, 3))
    first = next(p for p in couplings.producers if p.node == model.graph.node[0].name)
    classes = couplings.class_of[first.ids]
    act = score(model, couplings, "activation", data=_data(samples)).values[classes]
    flu = score(model, couplings, "fluctuation", data=_data(samples)).values[classes]
    np.testing.assert_allclose(act, (h ** 2).mean(axis=(0, 2, 3)) * energy, rtol=1e-4)
    np.testing.assert_allclose(flu, h.transpose(1, 0, 2, 3).reshape(8, -1).var(axis=1) * energy, rtol=1e-3)


def _chain_with_bn(fold):
    """x -> conv -> relu -> conv -> BN -> relu -> GAP -> Gemm, the BN kept or folded into the conv."""
    b = GraphBuilder(seed=9)
    x = b.input("x", [1, 4, 6, 6])
    h = b.op("Relu", [b.conv(x, 4, 8)])
    w = b.rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    gamma, beta = b.rng.uniform(0.2, 3.0, 8).astype(np.float32), b.rng.uniform(-0.5, 0.5, 8).astype(np.float32)
    mean, var = b.rng.uniform(-0.5, 0.5, 8).astype(np.float32), b.rng.uniform(0.5, 2.0, 8).astype(np.float32)
    s = gamma / np.sqrt(var + 1e-5)
    if fold:
        y = b.op("Conv", [h, b.const(w * s[:, None, None, None]), b.const(beta - mean * s)], kernel_shape=[3, 3],
                 pads=[1, 1, 1, 1])
    else:
        y = b.op("Conv", [h, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        y = b.op("BatchNormalization", [y, b.const(gamma), b.const(beta), b.const(mean), b.const(var)])
    p = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Relu", [y])])])
    return b.model([b.op("Gemm", [p, b.weight((3, 8)), b.weight((3,))], transB=1)])


@pytest.mark.parametrize("criterion", ["activation", "fluctuation", "lsq-aware"])
def test_scores_do_not_change_when_bn_is_folded(criterion):
    """The consumer's error is measured after its BN, as bgsc's r_b is."""
    samples = _samples((1, 4, 6, 6))
    values = []
    for fold in (False, True):
        model, couplings = analyze_model(_chain_with_bn(fold))
        first = next(p for p in couplings.producers if p.node == model.graph.node[0].name)
        values.append(score(model, couplings, criterion, data=_data(samples)).values[couplings.class_of[first.ids]])
    np.testing.assert_allclose(values[0], values[1], rtol=1e-4)


def test_obs_cost_equals_a_brute_force_ridge_refit():
    """Zeroing a block of rows of W and refitting the rest by ridge least squares (pulled
    toward the current weights, the bias free) raises the objective by tr(W_Bᵀ (H⁻¹_BB)⁻¹ W_B)."""
    rng = np.random.default_rng(0)
    channels, taps, outs, n = 5, 3, 4, 60
    x = rng.standard_normal((n, channels * taps))
    x[:, 3 * taps:4 * taps] = x[:, 0:taps] * 2 + 0.01 * rng.standard_normal((n, taps))   # channel 3 ≈ 2 × channel 0
    w = rng.standard_normal((channels * taps, outs))
    xa = np.hstack([x, np.ones((n, 1))])
    gram = xa.T @ xa
    blocks = [np.arange(c * taps, (c + 1) * taps) for c in range(channels)]
    ridge = 1e-3
    costs = removal_costs(gram, w, blocks, ridge)
    dim = channels * taps
    lam = ridge * np.trace(gram[:dim, :dim]) / dim
    wa = np.vstack([w, rng.standard_normal((1, outs))])     # with a bias row
    for c, b in enumerate(blocks):
        free = np.setdiff1d(np.arange(dim + 1), b)
        # min ‖Xa (V − Wa)‖² + λ‖V[:dim] − W‖², V[b] = 0: stack the ridge rows under the data rows
        reg = np.sqrt(lam) * np.eye(dim + 1)[:dim]
        a = np.vstack([xa, reg])
        target = np.vstack([xa @ wa, reg @ wa])
        v = np.zeros_like(wa)
        v[free] = np.linalg.lstsq(a[:, free], target, rcond=None)[0]
        brute = np.sum((a @ v - target) ** 2)
        assert costs[c] == pytest.approx(brute, rel=1e-6), c
    # channel 3 is large but its neighbour rebuilds it: far cheaper than its size says
    plain = [np.sum((x[:, b] @ w[b]) ** 2) for b in blocks]
    assert costs[3] < 0.05 * plain[3]


def _two_branches(scale_b=0.01):
    """x -> A1 (16) -> relu -> A2 (8) and x -> B1 (16) -> relu -> B2 (8), added, pooled into a
    Gemm. Branch B's output is scaled down: its channels matter little to the output."""
    b = GraphBuilder(seed=2)
    x = b.input("x", [1, 4, 8, 8])
    a = b.conv(b.op("Relu", [b.conv(x, 4, 16)]), 16, 8)
    a1 = b.nodes[0].name
    h = b.conv(x, 4, 16)
    b1 = b.last()
    h = b.op("Relu", [h])
    w = b.rng.standard_normal((8, 16, 3, 3)).astype(np.float32) * 0.3 * scale_b
    c = b.op("Conv", [h, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    s = b.op("Relu", [b.op("Add", [a, c])])
    p = b.op("Flatten", [b.op("GlobalAveragePool", [s])])
    return b.model([b.op("Gemm", [p, b.weight((3, 8)), b.weight((3,))], transB=1)]), a1, b1


def test_sensitivity_meets_the_target_and_thins_the_branch_that_matters_least():
    proto, a1, b1 = _two_branches()
    feeds = [{"x": _samples((1, 4, 8, 8), n=32)}]
    _, report = onnxprune.prune(proto, target_macs=0.7, allocator="sensitivity", round_to=1, calibration=feeds,
                                recover="none", verify=True)
    assert report.oracle_passed
    assert report.after["macs"] <= 0.7 * report.before["macs"] + 1e-9
    assert any(n.startswith("sensitivity:") for n in report.notes)
    kept = {row["feed_in"][0]: row["channels_after"] for row in report.groups if len(row["feed_in"]) == 1}
    assert kept[b1] < kept[a1], kept
    assert kept[b1] >= floor_of(16, 0.1)


def test_sensitivity_needs_data_and_a_cost_budget(tmp_path):
    proto, *_ = _two_branches()
    with pytest.raises(OnnxPruneError, match="sensitivity needs calibration data"):
        onnxprune.prune(proto, target_macs=0.7, allocator="sensitivity")
    with pytest.raises(OnnxPruneError, match="needs a cost budget"):
        onnxprune.prune(proto, 0.3, allocator="sensitivity")
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    assert cli_main([path, tmp_path / "out.onnx", "--target-macs", "0.7", "--allocator", "sensitivity"]) == 2
    assert not (tmp_path / "out.onnx").exists()
