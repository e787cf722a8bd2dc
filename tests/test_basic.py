"""End-to-end behaviour on small hand-built graphs: the pipeline's core promises."""
import numpy as np
import onnx
import pytest

import onnxprune
from helpers import groups, prune_and_check, prunable, residual_net


def test_residual_add_couples_both_branches():
    gs = prunable(residual_net())
    widths = sorted(g.width for g in gs)
    assert widths == [8, 8]   # the residual stream (2 feed-ins) and the inner conv
    stream = max(gs, key=lambda g: len(g.feed_in))
    assert len(stream.feed_in) == 2 and len(stream.feed_out) == 2  # conv + Gemm read it


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_prune_matches_oracle(ratio, criterion):
    slim, report = prune_and_check(residual_net(), ratio, criterion=criterion)
    assert report.after["macs"] < report.before["macs"]
    assert report.after["ops"] == report.before["ops"]


def test_interface_and_names_preserved():
    proto = residual_net()
    slim, _ = prune_and_check(proto, 0.5)
    assert [i.name for i in slim.graph.input] == ["x"]
    assert [o.name for o in slim.graph.output] == [o.name for o in proto.graph.output]
    assert {n.name for n in slim.graph.node} == {n.name for n in proto.graph.node}


def test_surviving_weights_are_exact_slices():
    """Without recovery (which changes weights to win back fidelity, docs/methods.md §5)."""
    proto = residual_net()
    slim, report = prune_and_check(proto, 0.5, fold="none", recover="none")
    original = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    kept = report.plan
    for t in slim.graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        src = original[t.name.split("__")[0]]
        if a.ndim == 0 or src.ndim == 0:
            continue
        # every value of the sliced tensor appears at the same relative place in the source
        assert set(np.round(a.ravel(), 7)) <= set(np.round(src.ravel(), 7))
    assert kept.removed


def test_input_proto_not_modified():
    proto = residual_net()
    before = proto.SerializeToString()
    onnxprune.prune(proto, 0.5)
    assert proto.SerializeToString() == before


def test_ratio_zero_changes_nothing():
    proto = residual_net()
    slim, report = onnxprune.prune(proto, 0.0, verify=True)
    assert report.after["params"] == report.before["params"]
    assert report.oracle.max_rel_diff == 0.0


def test_groups_have_one_class_per_channel():
    assert sum(g.width for g in groups(residual_net())) == 3 + 8 + 8 + 4


def test_model_metadata_is_kept():
    proto = residual_net()
    onnx.helper.set_model_props(proto, {"character": "abc", "note": "kept"})
    slim, _ = onnxprune.prune(proto, 0.5)
    assert {p.key: p.value for p in slim.metadata_props} == {"character": "abc", "note": "kept"}
