"""The fold pass: constants carried by removed channels move into consumer biases.

An exact fold must make the pruned model equal to the original with the removed
channels' *producer* filters zeroed (their constants still flow), which is a different
reference from the masking oracle's (consumer weights zeroed)."""
import numpy as np
import pytest

import onnxprune
from helpers import GraphBuilder
from onnxprune.api import analyze_model, rewrite
from onnxprune.budget import allocate
from onnxprune.couplings import FEED_IN, FEED_OUT
from onnxprune.runtime import random_inputs
from onnxprune.runtime import model_session
from onnxprune.saliency import score
from onnxprune.passes.fold_removed_constants import plan_folds


def net(k2=1, pad2=0, gate=False):
    """conv(3x3) -> BN -> ReLU -> [SE-style gate] -> conv(k2) -> GAP -> Gemm."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8), 8)])
    if gate:  # a width-1 activation gate makes removed channels input-dependent
        s = b.op("Sigmoid", [b.conv(h, 8, 1, k=1)])
        h = b.op("Mul", [h, s])
    y = b.op("Relu", [b.conv(h, 8, 6, k=k2, pad=pad2)])
    out = b.op("Gemm", [b.op("Flatten", [b.op("GlobalAveragePool", [y])]), b.weight((4, 6)), b.weight((4,))], transB=1)
    return b.model([out])


def producer_zeroed_reference(model, couplings, removed, folded):
    """Original with removed producer filters zeroed; consumers that were not folded
    get their removed input columns zeroed (their constant was dropped)."""
    kept = couplings.kept_fn(removed)
    ref = model.copy()
    nodes = ref.index().nodes
    for s in couplings.slices:
        mask = ~kept(s.ids)
        if not mask.any() or s.role not in (FEED_IN, FEED_OUT):
            continue
        if s.role == FEED_OUT and s.node in folded:
            continue
        name = nodes[s.node].input[s.input]
        w = np.array(ref.inits[name], copy=True)
        np.moveaxis(w, s.axis, 0)[mask] = 0
        ref.inits[name + "__ref"] = w
        nodes[s.node].input[s.input] = name + "__ref"
    return ref


def second_conv(model):
    """The conv under test: the one with 6 output channels."""
    return next(n.name for n in model.graph.node
                if n.op_type == "Conv" and model.inits[n.input[1]].shape[0] == 6)


def _prepare(proto, ratio=0.5, mode="exact"):
    model, couplings = analyze_model(proto)
    removed = allocate(couplings, score(model, couplings, "l1").values, ratio)
    folds, stats = plan_folds(model, couplings, removed, mode)
    return model, couplings, removed, folds, stats


def _compare(model, a, b):
    sa, sb = model_session(a), model_session(b)
    feeds = random_inputs(model, np.random.default_rng(5), sa)
    return np.abs(sa.run(None, feeds)[0] - sb.run(None, feeds)[0]).max()


def test_exact_fold_equals_producer_zeroed_model():
    model, couplings, removed, folds, stats = _prepare(net(k2=1))
    assert stats.exact == 2 and stats.dropped == 0       # the 1x1 conv and the Gemm
    assert second_conv(model) in folds and all(f.exact for f in folds.values())
    slim = rewrite(model, couplings, removed, folds)
    ref = producer_zeroed_reference(model, couplings, removed, set(folds))
    assert _compare(model, ref, slim) < 1e-5


def test_padded_conv_is_not_exact_and_is_dropped_in_exact_mode():
    model, couplings, removed, folds, stats = _prepare(net(k2=3, pad2=1))
    assert stats.dropped == 1 and second_conv(model) not in folds
    _, _, _, folds, stats = _prepare(net(k2=3, pad2=1), mode="approx")
    assert stats.approximate == 1 and not folds[second_conv(model)].exact


def test_unpadded_conv_folds_exactly():
    model, couplings, removed, folds, stats = _prepare(net(k2=3, pad2=0))
    assert folds[second_conv(model)].exact
    slim = rewrite(model, couplings, removed, folds)
    ref = producer_zeroed_reference(model, couplings, removed, set(folds))
    assert _compare(model, ref, slim) < 1e-5


def test_input_dependent_constants_are_not_folded():
    model, _, _, folds, stats = _prepare(net(k2=1, gate=True))
    assert second_conv(model) not in folds and stats.dropped == 1


def test_fold_brings_pruned_model_closer_to_the_producer_zeroed_one():
    proto = net(k2=1)
    model, couplings, removed, folds, _ = _prepare(proto)
    ref = producer_zeroed_reference(model, couplings, removed, set(folds))
    with_fold = rewrite(model, couplings, removed, folds)
    without = rewrite(model, couplings, removed, {})
    assert _compare(model, ref, with_fold) < _compare(model, ref, without)


@pytest.mark.parametrize("mode", ["none", "exact", "approx"])
def test_oracle_holds_in_every_mode(mode):
    _, report = onnxprune.prune(net(k2=3, pad2=1), 0.5, fold=mode, verify=True)
    assert report.oracle.max_rel_diff < 1e-5
