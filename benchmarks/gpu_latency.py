"""Latency of pruned models against their originals on a GPU (issue 13, item 3).

    python benchmarks/gpu_latency.py [--models resnet50 mobilenet_v2] [--targets 0.9 0.7 0.5]
        [--batches 1 8 32] [--dtypes fp32 fp16] [--providers cuda tensorrt] [--trt-batches 1]
        [--runs 50] [--warmup 10] [--round-to 16] [--budget-s 480] [--size 224]
        [--results DIR] [--cache DIR]

Needs onnxruntime-gpu in place of onnxruntime (`pip install -e .[bench]`, then swap the
two), a CUDA GPU, and TensorRT for the tensorrt rows. Everything else is made in the run:
each zoo model is exported at SIZE×SIZE (torch, random weights, BN kept), pruned at every
MAC target (bgsc, the fast `stats` recovery, widths rounded to multiples of ROUND_TO, which
suits tensor cores), and copied to float16 (onnxprune.dtypes.retyped: weights, inputs and
outputs; every operator of these CNNs has a float16 kernel). For every (provider, dtype,
model, batch), the original and its pruned variants are timed in ONE alternating run of
`onnxprune.bench.compare`, inputs and outputs bound on the device (no host copy timed).
TensorRT builds an engine per session (tens of seconds for ResNet-50), so it only runs at
--trt-batches, after every CUDA row.

The run is bounded: a configuration is skipped (and listed as such) when the time spent so
far plus the longest previous run of its provider (a first guess for the first one) would
pass --budget-s. The default budget keeps the whole study under 10 minutes on an H200.

Without a CUDA provider it prints one line saying so and exits 0, writing nothing.
`--providers cpu` runs the same study on the CPU (the tests use it on tiny models).
Writes RESULTS/gpu_latency.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from latency import _git_state  # noqa: E402
from study import acceptance, original, prune_variant, speedup_table, study_arguments, timing_rows  # noqa: E402
from study import write_record  # noqa: E402

KEYS = ("provider", "dtype", "batch")
FIRST_GUESS_S = {"cpu": 0.0, "cuda": 30.0, "tensorrt": 150.0}  # one run of a provider, before any is measured


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().replace("\n", "; ") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def variants(models, targets, size, cache, round_to, dtypes):
    """{(model, dtype): (infos, [original, pruned...])}, float16 copies made from the float32 prunes."""
    from onnx import TensorProto
    from onnxprune.dtypes import retyped
    out = {}
    for model in models:
        proto = original(model, size, cache)
        pruned = [prune_variant(proto, model, t, round_to, "all") for t in targets]
        infos, protos = [info for info, _ in pruned], [proto] + [slim for _, slim in pruned]
        print(f"{model}: pruned to MAC fractions {[round(i['mac_fraction'], 3) for i in infos]}", flush=True)
        for dtype in dtypes:
            out[model, dtype] = (infos, protos if dtype == "fp32" else
                                 [retyped(p, TensorProto.FLOAT16) for p in protos])
    return out


def markdown(record) -> str:
    lines = [f"# GPU latency: `{record['command']}`", "",
             f"{record['date']}, {record['gpu']}, {record['machine']}, onnxruntime {record['onnxruntime']}, "
             f"git {record['git']}, {record['size']}×{record['size']}, bgsc, round-to {record['round_to']}, "
             f"random weights. Original and pruned models alternate in one run per (provider, dtype, model, "
             f"batch), inputs and outputs bound on the device: warmup {record['warmup']}, {record['runs']} timed "
             f"runs. samples/s = batch / median latency. Study wall time {record['wall_s']:.0f} s "
             f"(budget {record['budget_s']:.0f} s).", ""]
    lines += [f"Not run: {', '.join(record['not_run'])}.", ""] if record["not_run"] else []
    lines += [acceptance(record["rows"], KEYS), ""] + speedup_table(record["rows"], KEYS) if record["rows"] else []
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(ap)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    ap.add_argument("--providers", nargs="+", default=["cuda", "tensorrt"], choices=["cuda", "tensorrt", "cpu"])
    ap.add_argument("--trt-batches", nargs="+", type=int, default=[1], help="batches timed with TensorRT")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--round-to", type=int, default=16, dest="round_to")
    ap.add_argument("--budget-s", type=float, default=480.0, dest="budget_s")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    import onnxruntime
    from onnxprune import bench
    from onnxprune.errors import OnnxPruneError
    available = onnxruntime.get_available_providers()
    if "cpu" not in args.providers and not bench.provider_available("cuda"):
        print(f"not measured: no CUDA provider in this onnxruntime build (available: {', '.join(available)}; "
              "install onnxruntime-gpu on a machine with a GPU); nothing recorded")
        return 0
    providers = [p for p in args.providers if bench.provider_available(p)]
    not_run = [f"{p} (not in this onnxruntime build)" for p in args.providers if p not in providers]

    models = variants(args.models, args.targets, args.size, args.cache, args.round_to, args.dtypes)
    rows, longest = [], {}  # provider -> its longest run so far
    broken = {}  # provider -> why it could not be loaded: its later configurations are not tried
    for provider in providers:
        for (model, dtype), (infos, protos) in models.items():
            for batch in args.trt_batches if provider == "tensorrt" else args.batches:
                config = f"{provider} {dtype} {model} batch {batch}"
                if provider in broken:
                    not_run.append(f"{config} ({broken[provider]})")
                    continue
                if time.perf_counter() - start + longest.get(provider, FIRST_GUESS_S[provider]) > args.budget_s:
                    not_run.append(f"{config} (time budget)")
                    continue
                t0 = time.perf_counter()
                try:
                    timings = bench.compare(protos, provider=provider, batch=batch, warmup=args.warmup,
                                            runs=args.runs, names=[f"{model} original"]
                                            + [f"{model}@{i['target']:g}" for i in infos])
                except OnnxPruneError as e:  # one configuration lost, not the figures already taken
                    print(f"{config}: {e}", flush=True)
                    not_run.append(f"{config} ({e})")
                    if "could not be loaded" in str(e):
                        broken[provider] = str(e)
                    continue
                spent = time.perf_counter() - t0
                longest[provider] = max(spent, longest.get(provider, 0.0))
                print(f"{config} ({spent:.1f} s)\n{bench.table(timings, provider, 1, batch)}", flush=True)
                rows += timing_rows(infos, [timings], provider=provider, dtype=dtype, batch=batch, runs=args.runs)

    record = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python benchmarks/gpu_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "gpu": gpu_name(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "onnxruntime": onnxruntime.__version__, "available_providers": available, "git": _git_state(),
              "size": args.size, "round_to": args.round_to, "warmup": args.warmup, "runs": args.runs,
              "budget_s": args.budget_s, "wall_s": round(time.perf_counter() - start, 1), "not_run": not_run,
              "acceptance": acceptance(rows, KEYS), "rows": rows}
    write_record(args.results, "gpu_latency", record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
