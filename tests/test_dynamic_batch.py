"""Transformers exported with a symbolic batch (`dynamic_axes={"input": {0: "batch"}}`, what
deployment exports use): the graph reads the batch at run time (Shape -> Gather -> Mul by the
head count -> Concat -> Reshape, the class token's expand(n, -1, -1)). The analysis fixes the
batch at 1; it must find the groups of the static export, and the pruned model must still
accept any batch, matching the masked original at each."""
import hashlib

import numpy as np
import pytest

from helpers import check_prune, exported, groups

torch = pytest.importorskip("torch")

MODELS = ["torchvision_vit", "vit", "vit_fused_qkv", "swin"]
EXPORTS = [False, pytest.param(True, marks=pytest.mark.zoo)]


def _weight_key(proto, names):
    """Nodes named by their weights' bytes: node and initializer names differ between exports."""
    from onnx import numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    keys = []
    for name in names:
        weights = [numpy_helper.to_array(inits[t]) for t in nodes[name].input if t in inits]
        weight = max(weights, key=np.size)
        keys.append(hashlib.sha1(np.ascontiguousarray(weight).tobytes()).hexdigest()[:12] + str(weight.shape))
    return tuple(sorted(keys))


def _live_groups(proto):
    return sorted((g.width, _weight_key(proto, g.feed_in), _weight_key(proto, g.feed_out))
                  for g in groups(proto) if g.frozen is None and g.width > 1)


def _has_symbolic_batch(proto):
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_param == "batch" and not dim.HasField("dim_value")


@pytest.mark.parametrize("name", MODELS)
def test_symbolic_batch_finds_the_static_groups(name):
    """MLP neurons and whole heads, block by block, as in the static export (the ViT with
    separate q/k/v and the fused qkv ViT, torchvision's ViT with the class token and
    nn.MultiheadAttention's B*heads layout, the channels-last Swin)."""
    static, dynamic = exported(name), exported(name, dynamic_batch=True)
    assert _has_symbolic_batch(dynamic) and not _has_symbolic_batch(static)
    assert any(n.op_type == "Shape" for n in dynamic.graph.node)
    live = _live_groups(dynamic)
    assert live and live == _live_groups(static)


def _matches_masked_at_batch(proto, slim, report, batch):
    """The pruned model against the masked original (removed channels zeroed at the feed-outs)
    on random inputs at `batch`: the analysis saw batch 1 only."""
    import onnxruntime as ort
    from onnxprune.api import analyze_model
    from onnxprune.plan import classes_from_plan
    from onnxprune.verify import masked_original, max_relative_difference
    model, couplings = analyze_model(proto)
    masked = masked_original(model, couplings, classes_from_plan(couplings, report.plan)).to_proto()
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    x = np.random.default_rng(batch).uniform(-1, 1, (batch, *shape)).astype(np.float32)
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
            for m in (masked, slim)]
    assert outs[1][0].shape[0] == batch
    return max_relative_difference(*outs)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", MODELS)
def test_symbolic_batch_prunes_exactly_at_any_batch(name, ratio):
    """The oracle (batches 1 and 2) holds, the run-time head counts (B*heads) are rewritten
    to the kept heads, and the pruned model still runs at batch 1 and 3, as the masked
    original computes."""
    proto = exported(name, dynamic_batch=True)
    slim, report = check_prune(proto, ratio, fold="none")
    assert report.oracle.batches == (1, 2)
    assert _symbolic_batch_kept(slim)
    for batch in (1, 3):
        assert _matches_masked_at_batch(proto, slim, report, batch) <= 1e-4


def _symbolic_batch_kept(slim):
    return all(_has_symbolic_batch_dim(v) for v in list(slim.graph.input) + list(slim.graph.output))


def _has_symbolic_batch_dim(value_info):
    dim = value_info.type.tensor_type.shape.dim[0]
    return dim.dim_param != "" and not dim.HasField("dim_value")


def test_symbolic_batch_torchvision_vit_heads_follow_the_batch():
    """nn.MultiheadAttention's (T, B*heads, hd) target multiplies the batch read at run time
    by the head count: the count is rescaled to the kept heads, the batch still read at run
    time; batch-only arithmetic (B*T of the merge back) is left as it was."""
    proto = exported("torchvision_vit", dynamic_batch=True)
    slim, _ = check_prune(proto, 0.5)
    shapes = [n for n in slim.graph.node if n.op_type == "Shape"]
    assert len(shapes) >= len([n for n in proto.graph.node if n.op_type == "Shape"]) // 2
    heads_targets = [n for n in slim.graph.node if n.op_type == "Reshape"
                     and "self_attention/Reshape_3" in n.name]
    assert len(heads_targets) == 1
    assert not any(t.name == heads_targets[0].input[1] for t in slim.graph.initializer)   # still run time


@pytest.mark.parametrize("dynamo", EXPORTS[1:])
def test_symbolic_batch_dynamo_torchvision_vit(dynamo):
    """The dynamo exporter's dynamic-batch export (sym_size -> Mul -> Concat -> Reshape)."""
    static, proto = exported("torchvision_vit", dynamo), exported("torchvision_vit", dynamo, dynamic_batch=True)
    assert _live_groups(proto) == _live_groups(static)
    slim, report = check_prune(proto, 0.5, fold="none")
    for batch in (1, 3):
        assert _matches_masked_at_batch(proto, slim, report, batch) <= 1e-4
