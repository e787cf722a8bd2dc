"""The latency harness: alternating runs, ratios to the first model, I/O binding, clean
CUDA and TensorRT refusals."""
import pytest

import onnxprune
from onnxprune import bench
from onnxprune.cli import main
from test_budget import resnet_like


def test_compare_two_models_reports_ratio(tmp_path):
    proto = resnet_like(width=16)
    slim, _ = onnxprune.prune(proto, 0.5, round_to=1)
    timings = bench.compare([proto, slim], runs=5, warmup=1, names=["orig", "slim"])
    assert [t.name for t in timings] == ["orig", "slim"]
    assert timings[0].speedup == 1.0
    assert all(t.p10_ms <= t.median_ms <= t.p90_ms for t in timings)
    # MACs from the cost model, and efficiency = speedup / MAC speedup
    assert timings[1].macs < timings[0].macs
    assert timings[1].efficiency == pytest.approx(timings[1].speedup * timings[1].macs / timings[0].macs)


def test_batch_size_is_applied_to_a_fixed_batch_model():
    timings = bench.compare([resnet_like()], batch=4, runs=2, warmup=0)
    assert timings[0].median_ms > 0


def test_cuda_skips_cleanly_when_absent(capsys):
    if bench.provider_available("cuda"):
        pytest.skip("a CUDA provider is present: the skip path cannot be exercised")
    with pytest.raises(onnxprune.OnnxPruneError, match="cuda execution provider is not available"):
        bench.compare([resnet_like()], provider="cuda")


def test_tensorrt_is_refused_in_one_line_when_absent(tmp_path):
    from test_cli import assert_one_line_error, run_cli
    if bench.provider_available("tensorrt"):
        pytest.skip("a TensorRT provider is present: the refusal cannot be exercised")
    with pytest.raises(onnxprune.OnnxPruneError, match="tensorrt execution provider is not available.*install onnxruntime-gpu and TensorRT"):
        bench.compare([resnet_like()], provider="tensorrt")
    import onnx
    path = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(path))
    code, stdout, stderr = run_cli("bench", path, "--provider", "tensorrt")
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, "the tensorrt execution provider is not available in this onnxruntime build")


def test_a_provider_that_falls_back_to_the_cpu_is_refused(monkeypatch):
    # onnxruntime replaces a provider whose libraries fail to load by the CPU, with a mere
    # warning: the figures would be CPU figures labelled cuda
    if bench.provider_available("cuda"):
        pytest.skip("a CUDA provider is present: no fallback to provoke")
    monkeypatch.setattr(bench, "provider_available", lambda provider: True)
    with pytest.raises(onnxprune.OnnxPruneError, match="cuda execution provider could not be loaded "
                                                       r"\(onnxruntime fell back to CPUExecutionProvider\)"):
        bench.compare([resnet_like()], provider="cuda", runs=1, warmup=0)


def test_timed_loop_through_io_binding(monkeypatch):
    """io_binding=True on the CPU provider: every run (check, warm-up, timed) goes through the
    binding, none through session.run, and the outputs are those of a plain run."""
    import numpy as np
    import onnxruntime as ort
    calls = {"bound": 0, "plain": 0}
    bound, plain = ort.InferenceSession.run_with_iobinding, ort.InferenceSession.run

    def count(kind, method):
        def wrapped(self, *args, **kwargs):
            calls[kind] += 1
            return method(self, *args, **kwargs)
        return wrapped
    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", count("bound", bound))
    monkeypatch.setattr(ort.InferenceSession, "run", count("plain", plain))
    proto = resnet_like(width=16)
    slim, _ = onnxprune.prune(proto, 0.5, round_to=1)
    calls.update(bound=0, plain=0)
    timings = bench.compare([proto, slim], runs=4, warmup=2, io_binding=True)
    assert calls == {"bound": 2 * (1 + 2 + 4), "plain": 0}
    assert timings[1].macs < timings[0].macs and all(t.median_ms > 0 for t in timings)
    # what the binding computes is what a plain run computes
    session = bench.timing_session(proto, "cpu", threads=1)
    _, feeds = bench._with_batch(proto, 1, {})
    binding = session.io_binding()
    monkeypatch.setattr(session, "io_binding", lambda: binding)
    bench.runner(session, feeds, "cpu")()
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], plain(session, None, feeds)[0], rtol=1e-6)


def test_cpu_default_keeps_plain_runs(monkeypatch):
    import onnxruntime as ort
    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding",
                        lambda *a, **k: pytest.fail("the CPU provider binds nothing unless asked"))
    assert bench.compare([resnet_like()], runs=2, warmup=0)[0].median_ms > 0


def test_gpu_table_says_where_the_inputs_live():
    timing = bench.Timing("m", 1.0, 0.9, 1.1, 1.0)
    assert "inputs and outputs bound on the device, batch 8" in bench.table([timing], "cuda", 1, 8)
    assert "1 thread(s), batch 8" in bench.table([timing], "cpu", 1, 8)


@pytest.mark.parametrize("kwargs, message", [
    ({"runs": 0}, "--runs must be an integer >= 1, got 0"),
    ({"batch": 0}, "--batch must be an integer >= 1, got 0"),
    ({"threads": -1}, "--threads must be an integer >= 1, got -1"),
    ({"warmup": -1}, "--warmup must be an integer >= 0, got -1"),
    ({"runs": 2.5}, "--runs must be an integer >= 1, got 2.5"),
    ({"provider": "tpu"}, "--provider must be one of ['cpu', 'cuda', 'tensorrt'], got 'tpu'"),
])
def test_compare_refuses_nonsense_counts(kwargs, message):
    # runs=0 used to end in an IndexError from the percentile of no timings
    with pytest.raises(onnxprune.OnnxPruneError) as e:
        bench.compare([resnet_like()], **kwargs)
    assert str(e.value) == message


def test_cli_bench(tmp_path, capsys):
    import onnx
    path = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(path))
    assert main(["bench", str(path), str(path), "--runs", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "1.00x" in out


def test_a_model_onnxruntime_rejects_is_one_line(tmp_path):
    """LpNormalization with p=3 passes the checker; onnxruntime's kernel refuses it and would
    also log the refusal on stderr itself."""
    from helpers import GraphBuilder
    from test_cli import assert_one_line_error, run_cli
    import onnx
    b = GraphBuilder()
    y = b.op("LpNormalization", [b.conv(b.input("x", [1, 3, 8, 8]), 3, 8)], axis=1, p=3)
    path = tmp_path / "lp3.onnx"
    onnx.save(b.model([y]), str(path))
    code, stdout, stderr = run_cli("bench", path, "--runs", "1", "--warmup", "0")
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, f"cannot run {path} with batch 1: ")


def test_sessions_stop_spinning_between_alternating_runs():
    # An idle pool that keeps spinning steals a core from the next model in the series.
    session = bench.timing_session(resnet_like(), "cpu", threads=2)
    assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    kept = bench.timing_session(resnet_like(), "cpu", threads=2, stop_spinning=False).get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):
        kept.get_session_config_entry("session.force_spinning_stop")


def test_dynamic_image_size_needs_an_input_shape():
    # a guessed 1x1 image would time nothing useful: say which size to give instead
    proto = resnet_like()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    with pytest.raises(onnxprune.OnnxPruneError, match=r"dynamic dimensions \[1, 3, h, w\].*--input-shape x:1,3,"):
        bench.compare([proto])
    timings = bench.compare([proto], input_shapes={"x": (1, 3, 16, 16)}, runs=2, warmup=0)
    assert timings[0].median_ms > 0


# -- benchmarks/latency.py, the study script on top of the harness --------------------------
def _latency_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"
    spec = importlib.util.spec_from_file_location("latency_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_script_records_speedup_and_efficiency(tmp_path, capsys):
    import json
    latency = _latency_script()
    assert latency.main(["--models", "resnet18", "--size", "32", "--targets", "0.5", "--threads", "1",
                         "--runs", "3", "--warmup", "1", "--cache", "", "--no-plot", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "latency.json").read_text())
    (row,) = record["rows"]
    assert row["round_to"] == onnxprune.budget.default_round_to()
    assert row["mac_fraction"] <= 0.5 and row["mac_speedup"] >= 2.0
    assert row["speedup"] > 0 and row["efficiency"] == pytest.approx(row["speedup"] / row["mac_speedup"], abs=1e-3)
    assert row["ops_added"] == {}  # pruning adds no operator
    assert "| resnet18 |" in latency.pivot(record["rows"])


def test_latency_script_records_cuda_as_not_measured(tmp_path, capsys):
    import json
    if bench.provider_available("cuda"):
        pytest.skip("a CUDA provider is present")
    assert _latency_script().main(["--provider", "cuda", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "latency_cuda.json").read_text())
    assert record["status"].startswith("not measured: no CUDA provider") and record["rows"] == []
