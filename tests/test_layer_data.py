"""What keeps calibration-data recovery bounded on big models (onnxprune/layer_data.py and
the normal equations of passes/reconstruct.py): rows that follow the fan-in, chunks cut by
a byte budget, onnxruntime runs split by size, float32 products summed in float64."""
from __future__ import annotations

import numpy as np
import onnx

from helpers import GraphBuilder
from onnxprune import layer_data
from onnxprune.layer_data import (MAX_POSITIONS, MIN_ROWS, ROWS_PER_UNKNOWN, positions_per_sample, refit_chunks,
                                  stream_pair)
from onnxprune.api import analyze_model
from onnxprune.passes.reconstruct import NormalEquations, _affine, _ridge, _sse, system_bytes


def _two_convs():
    b = GraphBuilder(seed=5)
    x = b.input("x", [None, 4, 6, 6])
    h = b.conv(x, 4, 8)
    c1 = b.last()
    y = b.conv(b.op("Relu", [h]), 8, 6, k=3, group=2)
    c2 = b.last()
    return b.model([y]), c1, c2


def test_positions_follow_the_fan_in():
    samples = 10_000
    small, big = positions_per_sample(10, samples), positions_per_sample(4000, samples)
    assert small * samples >= MIN_ROWS and (small - 1) * samples < MIN_ROWS   # a small layer: the floor
    assert big * samples >= ROWS_PER_UNKNOWN * 4001 > (big - 1) * samples   # a wide one: rows per unknown
    assert positions_per_sample(10**6, samples) == MAX_POSITIONS            # never more than the cap
    assert positions_per_sample(10, 1) == MAX_POSITIONS                     # one sample: all it can give


def test_chunks_respect_the_byte_budget(monkeypatch):
    proto, _, _ = _two_convs()
    monkeypatch.setattr(layer_data, "MAC_BUDGET", 1.0)   # the compute budget alone: one chunk
    monkeypatch.setattr(layer_data, "SYSTEM_BYTES", 100)
    sizes = {"a": 60, "b": 60, "c": 30, "d": 200, "e": 10}
    slim = analyze_model(proto)[0]
    assert refit_chunks(slim, list(sizes), 8) == [list(sizes)]
    assert refit_chunks(slim, list(sizes), 8, sizes.get) == [["a"], ["b", "c"], ["d"], ["e"]]


def test_system_bytes_is_what_the_equations_hold():
    proto, _, c2 = _two_convs()
    model = analyze_model(proto)[0]
    node = model.index().nodes[c2]
    w = model.inits[node.input[1]]                       # (6, 4, 3, 3), 2 groups
    per_group = NormalEquations(np.zeros((36, 3)))
    assert system_bytes(node, w.shape) == 2 * (per_group.g.nbytes + per_group.xy.nbytes)
    gemm = onnx.helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)
    assert system_bytes(gemm, (5, 8)) == NormalEquations(np.zeros((8, 5))).nbytes()


def _layer_rows(rng, n=6000, dim=40, width=7):
    """Correlated, non-centred inputs (as after a ReLU) and a noisy linear target."""
    mix = rng.standard_normal((dim, dim)) * 0.3 + np.eye(dim)
    x = np.maximum(rng.standard_normal((n, dim)) @ mix + 1.5, 0)
    y = x @ rng.standard_normal((dim, width)) + 0.7 + 0.1 * rng.standard_normal((n, width))
    return x, y


def test_float32_products_give_the_float64_solution():
    rng = np.random.default_rng(0)
    x, y = _layer_rows(rng)
    w0 = rng.standard_normal((x.shape[1], y.shape[1]))
    exact, fast = NormalEquations(w0), NormalEquations(w0)
    for i in range(0, len(x), 1000):   # batch by batch, as the stream gives them
        exact.add(x[i:i + 1000], y[i:i + 1000])
        fast.add(x[i:i + 1000].astype(np.float32), y[i:i + 1000].astype(np.float32))
    exact.flush()
    fast.flush()
    assert exact.n == fast.n == len(x)
    a, b = _ridge(exact, with_bias=True), _ridge(fast, with_bias=True)
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    spread = ((y - y.mean(0)) ** 2).sum()
    assert abs(_sse(exact, a) - _sse(fast, b)) < 1e-4 * spread
    assert _sse(fast, b) < 0.05 * spread   # and it is a fit at all


def test_affine_correction_from_the_accumulated_sums():
    rng = np.random.default_rng(1)
    x, y = _layer_rows(rng, n=500)
    w0 = rng.standard_normal((x.shape[1], y.shape[1]))
    s = NormalEquations(w0)
    for i in range(0, len(x), 100):
        s.add(x[i:i + 100], y[i:i + 100])
    s.flush()
    z = x @ w0   # what the per-channel scale and shift are fitted to, computed directly
    a = np.array([np.polyfit(z[:, j], y[:, j], 1) for j in range(y.shape[1])])
    expected = np.vstack([w0 * a[:, 0], a[:, 1]])
    assert np.allclose(_affine(s), expected, rtol=1e-6, atol=1e-8)


def test_stream_pair_splits_big_batches(monkeypatch):
    proto, c1, c2 = _two_convs()
    model = analyze_model(proto)[0]
    hidden = model.index().nodes[c2].input[0]
    x = np.random.default_rng(2).standard_normal((20, 4, 6, 6)).astype(np.float32)
    batches = lambda: iter([{"x": x[:12]}, {"x": x[12:]}])   # noqa: E731
    per_sample = 8 * 6 * 6 * 4 + 6 * 6 * 6 * 4                # hidden (slim) + output (original)
    got = []
    monkeypatch.setattr(layer_data, "STREAM_BYTES", 5 * per_sample)
    stream_pair(model, model, [hidden], [proto.graph.output[0].name], batches,
                lambda s, o: got.append((s[hidden], o[proto.graph.output[0].name])))
    assert [len(h) for h, _ in got] == [1, 5, 5, 1, 5, 3]   # the first run measures one sample
    whole = []
    monkeypatch.setattr(layer_data, "STREAM_BYTES", 1 << 30)
    stream_pair(model, model, [hidden], [proto.graph.output[0].name], batches,
                lambda s, o: whole.append((s[hidden], o[proto.graph.output[0].name])))
    assert [len(h) for h, _ in whole] == [1, 11, 8]
    for k in (0, 1):
        assert np.allclose(np.concatenate([v[k] for v in got]), np.concatenate([v[k] for v in whole]), atol=1e-5)


def test_stream_pair_runs_a_fixed_batch_model_batch_by_batch():
    b = GraphBuilder(seed=6)
    x = b.input("x", [2, 4, 6, 6])
    y = b.conv(x, 4, 3)
    proto = b.model([y])
    model = analyze_model(proto)[0]
    data = np.random.default_rng(3).standard_normal((7, 4, 6, 6)).astype(np.float32)
    got = []
    stream_pair(model, model, [y], [y], lambda: iter([{"x": data}]), lambda s, o: got.append(s[y]))
    assert [len(v) for v in got] == [2, 2, 2, 1]   # one run each, the last padded and trimmed


def test_ridge_keeps_the_current_weights_where_the_rows_say_nothing():
    """An input the calibration rows never excite (a column of zeros) leaves its weights as they
    were; toward zero, the layer would lose them for whatever input does excite it later."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 6))
    x[:, 2] = 0.0
    w_true, w0 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    s = NormalEquations(w0)
    s.add(x, x @ w_true + 0.25)
    s.flush()
    solution = _ridge(s, with_bias=True)
    np.testing.assert_allclose(solution[2], w0[2], rtol=1e-9)
    seen = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(solution[seen], w_true[seen], atol=1e-2)
    np.testing.assert_allclose(solution[-1], 0.25, atol=1e-2)
