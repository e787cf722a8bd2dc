"""Shared checks: a pruned model is valid, runs, is smaller, and matches the masking oracle."""
from __future__ import annotations

import functools
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.api import analyze_model

OPSET = 17


def prune_and_check(proto, ratio=None, *, expect_smaller=True, tolerance=1e-4, **kwargs):
    """Prune with the oracle on; assert validity, oracle agreement and a MAC/param drop.
    The budget is `ratio` (0.5 when no other budget is given) or a plan/target in kwargs."""
    if ratio is None and not {"plan", "target_macs", "target_params"} & set(kwargs):
        ratio = 0.5
    kwargs.setdefault("round_to", 1)  # unit tests count exact channels
    kwargs.setdefault("criterion", "l1")  # ... and l1's local scope thins every group by the same fraction
    slim, report = onnxprune.prune(proto, ratio, verify=True, **kwargs)
    onnx.checker.check_model(slim, full_check=True)
    assert report.oracle is not None
    assert report.oracle.max_rel_diff <= tolerance, (report.oracle, report.frozen_groups)
    if expect_smaller:
        assert report.after["params"] < report.before["params"], report.frozen_groups
    return slim, report


def check_prune(proto, ratio, **kwargs):
    slim, report = prune_and_check(proto, ratio, **kwargs)
    assert report.after["macs"] < report.before["macs"]
    return slim, report


def groups(proto, **kwargs):
    _, couplings = analyze_model(proto, **kwargs)
    return couplings.groups


def prunable(proto, **kwargs):
    return [g for g in groups(proto, **kwargs) if g.frozen is None and g.width > 1]


def frozen_reasons(proto, **kwargs):
    return [g.frozen for g in groups(proto, **kwargs) if g.frozen]


def reasons(gs):
    return sorted({g.frozen for g in gs if g.frozen})


# -- torch exports of models/zoo_extra.py, once per session ---------------------------------
@functools.lru_cache(maxsize=None)
def _export(name, dynamo, dynamic_batch=False):
    import torch
    from models.zoo_extra import build_extra, export
    torch.set_num_threads(2)
    module, shape = build_extra(name)
    try:
        return export(module, shape, dynamo=dynamo, dynamic_batch=dynamic_batch), None
    except Exception as e:  # noqa: BLE001 - recorded as the skip reason
        if not dynamo:
            raise
        return None, f"dynamo export of {name} failed here: {type(e).__name__}: {str(e)[:300]}"


def exported(name, dynamo=False, dynamic_batch=False):
    """The legacy (or dynamo) export of a models/zoo_extra.py architecture, with a symbolic
    batch when `dynamic_batch`; a failed dynamo export skips the test with its reason."""
    import pytest
    proto, why = _export(name, dynamo, dynamic_batch)
    if proto is None:
        pytest.skip(why)
    return proto


# -- small readers of a (pruned) ModelProto, shared by the rule and architecture tests ----
def op_names(proto, op_type, contains=""):
    return [n.name for n in proto.graph.node if n.op_type == op_type and contains in n.name]


def node(proto, name):
    return next(n for n in proto.graph.node if n.name == name)


def tensor(proto, name):
    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def param(proto, node_name, index):
    """The initializer that `node_name` reads as input `index`."""
    return tensor(proto, node(proto, node_name).input[index])


def keep(width, ratio):
    """Channels a group of `width` keeps under the default local budget (min_keep 0.1)."""
    return max(math.ceil(0.1 * width), width - int(math.floor(ratio * width + 1e-9)))


def group_of(gs, feed_in):
    """The group whose feed-in layers are exactly `feed_in` (a name or a list)."""
    want = sorted([feed_in] if isinstance(feed_in, str) else feed_in)
    found = [g for g in gs if sorted(g.feed_in) == want]
    assert len(found) == 1, (feed_in, gs)
    return found[0]


# -- tiny graph builder ------------------------------------------------------------------
class GraphBuilder:
    """Build small float32 ONNX graphs by hand: `b.conv(x, 8)` returns the output name."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.count = [], [], [], 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, name, shape):
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def const(self, array, prefix="w"):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape, prefix="w"):
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * 0.3, prefix)

    def op(self, op_type, inputs, n_outputs=1, **attrs):
        outs = [self.name(op_type.lower() + "_") for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_outputs == 1 else outs

    def conv(self, x, c_in, c_out, k=3, stride=1, pad=None, group=1, bias=True):
        pad = k // 2 if pad is None else pad
        ins = [x, self.weight((c_out, c_in // group, k, k))]
        if bias:
            ins.append(self.weight((c_out,), "b"))
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=group)

    def bn(self, x, c):
        r = self.rng
        return self.op("BatchNormalization", [
            x, self.const(r.uniform(0.5, 1.5, c).astype(np.float32), "g"),
            self.const(r.uniform(-0.2, 0.2, c).astype(np.float32), "beta"),
            self.const(r.uniform(-0.5, 0.5, c).astype(np.float32), "mean"),
            self.const(r.uniform(0.5, 2.0, c).astype(np.float32), "var")])

    def model(self, outputs, opset=OPSET):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        g = helper.make_graph(self.nodes, "test", self.inputs, outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)

    # -- added for tests/test_rules.py (new methods only) --------------------------------
    def conv_transpose(self, x, c_in, c_out, k=2, stride=2, group=1, bias=True):
        ins = [x, self.weight((c_in, c_out // group, k, k))]
        if bias:
            ins.append(self.weight((c_out,), "b"))
        return self.op("ConvTranspose", ins, kernel_shape=[k, k], strides=[stride, stride],
                       group=group)

    def gemm(self, x, k, n, trans_b=1, bias=True):
        ins = [x, self.weight((n, k) if trans_b else (k, n))]
        if bias:
            ins.append(self.weight((n,), "b"))
        return self.op("Gemm", ins, transB=trans_b)

    def constant_node(self, array, prefix="c"):
        """A value held by a Constant node instead of an initializer."""
        name = self.name(prefix)
        self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("Constant"),
                                           value=numpy_helper.from_array(np.asarray(array))))
        return name

    def ints(self, values, prefix="i"):
        return self.const(np.asarray(values, dtype=np.int64), prefix)

    def floats(self, values, prefix="f"):
        return self.const(np.asarray(values, dtype=np.float32), prefix)

    def last(self):
        """Name of the node added last."""
        return self.nodes[-1].name

    def model_with_domains(self, outputs, domains, opset=OPSET):
        """Like `model`, with extra opset imports {domain: version} (custom operators);
        `outputs` maps each output name to its shape, which inference may not reach."""
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs.items()]
        g = helper.make_graph(self.nodes, "test", self.inputs, outs, self.inits)
        imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains.items()]
        m = helper.make_model(g, opset_imports=imports)
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)


def residual_net(b=None, x_shape=(1, 3, 8, 8), width=8):
    """conv-bn-relu x2 with a residual add, pooled into a Gemm: two prunable groups."""
    b = b or GraphBuilder()
    x = b.input("x", list(x_shape))
    h = b.op("Relu", [b.bn(b.conv(x, 3, width), width)])
    y = b.op("Relu", [b.bn(b.conv(h, width, width), width)])
    y = b.bn(b.conv(y, width, width), width)
    s = b.op("Relu", [b.op("Add", [h, y])])
    p = b.op("Flatten", [b.op("GlobalAveragePool", [s])])
    out = b.op("Gemm", [p, b.weight((4, width)), b.weight((4,))], transB=1)
    return b.model([out])
