"""Calibration recovery on transformers: with heads and MLP neurons removed, the lsq refit
repairs each block's attention output projection and second MLP layer, and the held-out
outputs come closer to the original's than without it."""
import numpy as np
import pytest

import onnxprune
from helpers import exported

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name,layers", [("torchvision_vit", "Gemm"), ("vit", "MatMul"), ("vit_fused_qkv", "MatMul")])
def test_lsq_refits_out_proj_and_fc2_and_brings_the_outputs_closer(name, layers):
    proto = exported(name)
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal([256] + shape[1:]).astype(np.float32)
    calib = {proto.graph.input[0].name: x}
    kw = dict(ratio=0.5, criterion="l1", scope="local", round_to=1, calibration=calib)
    _, bare = onnxprune.prune(proto, recover="none", **kw)
    slim, report = onnxprune.prune(proto, recover="lsq", **kw)
    heads = [g for g in report.groups if g["frozen"] is None and g["channels_before"] == 4]
    assert len(heads) == 2 and all(g["channels_after"] == 2 for g in heads)
    note = next(n for n in report.notes if n.startswith("reconstruct:"))
    assert note.startswith("reconstruct: 4 layer(s) refit")        # out_proj and fc2, two blocks
    error = [r.fidelity.outputs[0].rel_error_sum / r.fidelity.outputs[0].samples for r in (bare, report)]
    assert error[1] < 0.75 * error[0]
    # the refit layers keep their pruned shapes: fewer input columns than the model's width
    original = {t.name: t.dims for t in proto.graph.initializer}
    refit = [n for n in slim.graph.node if n.op_type == layers and len(n.input) > 1
             and n.input[1] in {t.name for t in slim.graph.initializer}]
    assert refit and any(
        next(t.dims for t in slim.graph.initializer if t.name == n.input[1]) != original.get(n.input[1])
        for n in refit)
