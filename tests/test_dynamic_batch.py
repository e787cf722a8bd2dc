"""Transformers exported with a symbolic batch (`dynamic_axes={"input": {0: "batch"}}`, what
deployment exports use): the graph reads the batch at run time (Shape -> Gather -> Mul by the
head count -> Concat -> Reshape, the class token's expand(n, -1, -1)). The analysis fixes the
batch at 1; it must find the groups of the static export, and the pruned model must still
accept any batch, matching the masked original at each."""
import hashlib

import numpy as np
import pytest

import onnxprune
from helpers import GraphBuilder, check_prune, exported, groups, node, param, tensor

torch = pytest.importorskip("torch")

MODELS = ["torchvision_vit", "vit", "vit_fused_qkv", "swin"]


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


def _matches_masked_at_batch(proto, slim, report, batch, input_name="input"):
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
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {input_name: x})
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
    slim, report = check_prune(proto, ratio, fold="none", recover="none")
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
    by the head count: that part becomes B * kept heads (an exact Div and Mul in front of the
    Concat, the batch still read at run time); the literal heads of (B, heads, T, hd) and the
    channel count E of the nested (T, B) + (3, E) are rewritten as constants; batch-only
    arithmetic (the B*T of the merge back) is left as it was."""
    proto = exported("torchvision_vit", dynamic_batch=True)
    slim, _ = check_prune(proto, 0.5)
    hd, attention = 48 // 4, "/layers/layers.0/self_attention/"
    producers = {o: n for n in slim.graph.node for o in n.output}
    for target in ("Concat_2", "Concat_3", "Concat_4"):        # q, k, v: (T, B*heads, hd)
        mul = producers[node(slim, attention + target).input[1]]
        div = producers[mul.input[0]]
        assert (mul.op_type, div.op_type) == ("Mul", "Div")
        assert tensor(slim, mul.input[1]).tolist() == [2] and tensor(slim, div.input[1]).tolist() == [4]
        assert div.input[0] == node(proto, attention + target).input[1]     # B*4 from the batch at run time
    assert param(slim, attention + "Concat_5", 1).tolist() == [2]
    assert param(slim, attention + "Concat", 1).tolist() == [2 * hd]
    # (T*B, E) before out_proj: B*T untouched, the E read from the stream's shape a constant
    assert node(slim, attention + "Concat_8").input[0] == node(proto, attention + "Concat_8").input[0]
    assert param(slim, attention + "Concat_8", 1).tolist() == [2 * hd]


@pytest.mark.zoo
@pytest.mark.parametrize("name", MODELS)
def test_symbolic_batch_dynamo_export(name):
    """The dynamo exporter's dynamic-batch exports: -1 for the batch in constant targets, and
    k.transpose(-2, -1) reshaped with (B, heads) read from the Shape of the heads themselves
    (a count that follows the pruned tensor). Skipped where onnxscript is missing."""
    static, proto = exported(name, True), exported(name, True, dynamic_batch=True)
    assert _has_symbolic_batch(proto)
    assert _live_groups(proto) == _live_groups(static)
    slim, report = check_prune(proto, 0.5, fold="none", recover="none")
    assert report.oracle.batches == (1, 2)
    for batch in (1, 3):
        assert _matches_masked_at_batch(proto, slim, report, batch) <= 1e-4


# -- the rule on a hand-built graph: nn.MultiheadAttention's layouts, batch N read at run time --
def _heads_times_batch_net(count):
    """MatMul -> (T, N, E) -> Reshape to (T, count(N), hd) -> (count(N), T, hd) -> Reshape to
    (N, heads, T, hd) -> (T, N, heads, hd) -> Reshape to (T, N, E) -> MatMul."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 4, 8])
    h = b.op("Transpose", [b.op("MatMul", [x, b.weight((8, 8))])], perm=[1, 0, 2])
    n = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [x]), b.ints(0)], axis=0), b.ints([0])])
    heads = b.op("Reshape", [h, b.op("Concat", [b.ints([4]), count(b, n), b.ints([4])], axis=0)])
    heads = b.op("Transpose", [heads], perm=[1, 0, 2])
    split = b.op("Reshape", [heads, b.op("Concat", [n, b.ints([2, 4, 4])], axis=0)])
    back = b.op("Transpose", [split], perm=[2, 0, 1, 3])
    back = b.op("Reshape", [back, b.op("Concat", [b.ints([4]), n, b.ints([8])], axis=0)])
    return b.model([b.op("MatMul", [b.op("Transpose", [back], perm=[1, 0, 2]), b.weight((8, 8))])])


def test_batch_times_literal_head_count_is_rewritten():
    """N*2 heads: two head classes, one removed, the pruned model still reads N at run time."""
    proto = _heads_times_batch_net(lambda b, n: b.op("Mul", [n, b.ints([2])]))
    assert [g.width for g in groups(proto) if g.frozen is None] == [2]
    slim, report = check_prune(proto, 0.5, fold="none", recover="none")
    assert report.oracle.batches == (1, 2)
    for batch in (1, 3):
        assert _matches_masked_at_batch(proto, slim, report, batch, "x") <= 1e-4


def test_other_run_time_arithmetic_on_the_channel_axis_freezes_with_its_reason():
    """(N*4)/2 is 2N too, but only a literal times the batch is rewritten: no guessing, the
    channels it sizes freeze and say why; the model is left exact at every batch."""
    proto = _heads_times_batch_net(lambda b, n: b.op("Div", [b.op("Mul", [n, b.ints([4])]), b.ints([2])]))
    gs = groups(proto)
    assert not [g for g in gs if g.frozen is None and g.width > 1]
    assert any("sizes the channel axis from other dimensions read at run time" in g.frozen for g in gs if g.frozen)
    _, report = onnxprune.prune(proto, 0.5, verify=True, criterion="l1", round_to=1)
    assert report.oracle.passed() and report.oracle.batches == (1, 2)


def _class_token_net():
    """MatMul -> Concat on the token axis after torch's expand(n, -1, -1) of a constant token
    (Expand(token, Where(Equal(v, -1), 1, v)), v = (n, -1, -1), n read at run time) -> MatMul:
    no LayerNorm, so the token's channels are cut with the MatMul's."""
    from onnx import TensorProto, helper as onnx_helper
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 4, 8])
    h = b.op("MatMul", [x, b.weight((8, 8))])
    n = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [x]), b.ints(0)], axis=0), b.ints([0])])
    v = b.op("Concat", [n, b.ints([-1]), b.ints([-1])], axis=0)
    ones = b.op("ConstantOfShape", [b.op("Shape", [v])],
                value=onnx_helper.make_tensor("one", TensorProto.INT64, [1], [1]))
    sizes = b.op("Where", [b.op("Equal", [v, b.op("Mul", [ones, b.ints(-1)])]), ones, v])
    tokens = b.op("Concat", [b.op("Expand", [b.weight((1, 1, 8)), sizes]), h], axis=1)
    return b.model([b.op("MatMul", [tokens, b.weight((8, 8))])])


def test_expanded_class_token_is_cut_with_the_channels():
    proto = _class_token_net()
    (live,) = [g for g in groups(proto) if g.frozen is None and g.width > 1]
    assert live.width == 8 and "Expand" in "".join(live.channelwise)
    slim, report = check_prune(proto, 0.5, fold="none", recover="none")
    assert [tuple(t.dims) for t in slim.graph.initializer if len(t.dims) == 3] == [(1, 1, 4)]   # the token, cut
    for batch in (1, 3):
        assert _matches_masked_at_batch(proto, slim, report, batch, "x") <= 1e-4
