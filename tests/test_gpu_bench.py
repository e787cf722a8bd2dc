"""The GPU latency study (benchmarks/gpu_latency.py) and the CPU throughput study
(benchmarks/throughput.py): a clean skip without CUDA, the whole study on the CPU provider
at toy size, the time budget, float16 copies, and issue 13's acceptance line."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import onnxprune
from onnxprune import bench
from onnxprune.dtypes import retyped
from test_budget import resnet_like

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TOY = ["--models", "resnet18", "--size", "32", "--targets", "0.5", "--warmup", "0", "--cache", ""]


def script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_study_without_cuda_says_so_in_one_line_and_writes_nothing(tmp_path, capsys):
    if bench.provider_available("cuda"):
        pytest.skip("a CUDA provider is present: the skip path cannot be exercised")
    assert script("gpu_latency").main(["--results", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("not measured: no CUDA provider in this onnxruntime build")
    assert not (tmp_path / "out").exists()


def test_gpu_study_runs_end_to_end_on_the_cpu_provider(tmp_path, capsys):
    """The same study, provider cpu: float32 and float16 copies at two batch sizes, each
    configuration one alternating run, recorded with the acceptance line."""
    gpu = script("gpu_latency")
    assert gpu.main(TOY + ["--providers", "cpu", "--dtypes", "fp32", "fp16", "--batches", "1", "2", "--runs", "2",
                           "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_latency.json").read_text())
    assert [(r["provider"], r["dtype"], r["batch"]) for r in record["rows"]] == [
        ("cpu", "fp32", 1), ("cpu", "fp32", 2), ("cpu", "fp16", 1), ("cpu", "fp16", 2)]
    assert all(r["mac_fraction"] <= 0.5 and r["speedup"] > 0 and r["target"] == 0.5 for r in record["rows"])
    assert record["not_run"] == [] and record["rows"][0]["round_to"] == 16
    md = (tmp_path / "gpu_latency.md").read_text()
    assert record["acceptance"] in md and "| resnet18 | cpu | fp16 | 2 |" in md


def test_gpu_study_skips_what_the_time_budget_cannot_fit(tmp_path):
    gpu = script("gpu_latency")
    assert gpu.main(TOY + ["--providers", "cpu", "--dtypes", "fp32", "--batches", "1", "8", "--budget-s", "0",
                           "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_latency.json").read_text())
    assert record["rows"] == []
    assert record["not_run"] == ["cpu fp32 resnet18 batch 1 (time budget)", "cpu fp32 resnet18 batch 8 (time budget)"]
    assert "Not run: cpu fp32 resnet18 batch 1 (time budget)" in (tmp_path / "gpu_latency.md").read_text()


def test_a_provider_that_fails_to_load_loses_its_configurations_not_the_study(tmp_path, monkeypatch):
    # onnxruntime-gpu lists TensorRT even where TensorRT's libraries are missing
    calls = []

    def fails(*args, **kwargs):
        calls.append(kwargs["batch"])
        raise onnxprune.OnnxPruneError("the cpu execution provider could not be loaded (...)")
    monkeypatch.setattr(bench, "compare", fails)
    assert script("gpu_latency").main(TOY + ["--providers", "cpu", "--dtypes", "fp32", "--batches", "1", "8",
                                             "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_latency.json").read_text())
    assert calls == [1] and record["rows"] == []
    assert record["not_run"] == [f"cpu fp32 resnet18 batch {b} (the cpu execution provider could not be loaded (...))"
                                 for b in (1, 8)]


def test_float16_copy_computes_what_the_float32_model_computes():
    proto = resnet_like()
    half = retyped(proto, TensorProto.FLOAT16)
    assert {t.data_type for t in half.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} \
        == {TensorProto.FLOAT16}
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the original is untouched
    onnx.checker.check_model(half)
    _, feeds = bench._with_batch(proto, 1, {})
    (x,) = feeds.values()
    name = proto.graph.input[0].name
    full = ort.InferenceSession(proto.SerializeToString()).run(None, {name: x})[0]
    narrow = ort.InferenceSession(half.SerializeToString()).run(None, {name: x.astype(np.float16)})[0]
    assert narrow.dtype == np.float16
    np.testing.assert_allclose(narrow.astype(np.float32), full, rtol=2e-2, atol=2e-2 * np.abs(full).max())


def test_throughput_study_records_every_thread_and_batch_configuration(tmp_path, monkeypatch):
    throughput = script("throughput")
    monkeypatch.setattr(throughput.os, "cpu_count", lambda: 2)   # 'all' = 2: timed once, with 2
    assert throughput.thread_counts(["1", "2", "all"]) == [1, 2]
    assert throughput.main(TOY + ["--targets", "0.9", "0.5", "--batches", "1", "3", "--threads", "1", "all",
                                  "--runs", "2", "--runs-batched", "1", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "throughput.json").read_text())
    assert sorted({(r["threads"], r["batch"]) for r in record["rows"]}) == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(r["load_before"] >= 0 and r["load_after"] >= 0 for r in record["rows"])
    md = (tmp_path / "throughput.md").read_text()
    assert "'all' threads = 2" in md and record["acceptance"] in md and "load average" in md


def test_acceptance_names_every_slower_row_at_targets_up_to_0_9():
    acceptance = script("study").acceptance
    rows = [{"model": "m", "target": 0.9, "batch": 8, "speedup": 0.97, "slower": True},
            {"model": "m", "target": 0.5, "batch": 8, "speedup": 1.6, "slower": False},
            {"model": "m", "target": 0.95, "batch": 8, "speedup": 0.9, "slower": False}]
    assert acceptance(rows, ["batch"]) == ("Acceptance NOT met: 1 of 2 rows at a MAC target <= 0.9 are slower: "
                                          "m@0.9 batch 8 0.97x.")
    assert acceptance(rows[1:], ["batch"]).startswith("Acceptance met: no pruned model is slower")
    assert acceptance(rows[2:], ["batch"]) == "Acceptance not judged: no row at a MAC target <= 0.9."
