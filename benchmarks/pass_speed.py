"""Pass wall time, stage by stage, on this machine.

    python benchmarks/pass_speed.py [--models resnet50 ...] [--size 224] [--repeat 3]
        [--criterion l1|bgsc] [--ratio 0.3 | --target-macs 0.5] [--cache DIR]

Exports each model (torch, random init, BN kept) at SIZE×SIZE, saves it, then runs the
whole `onnxprune in out --ratio 0.3` path in-process REPEAT times, as the CLI runs it: load
from disk, analyze, score, allocate, fold, rewrite, verify (an onnxruntime session on the
output), save (serialise, ONNX checker on those bytes, write).
Each model is pruned in a fresh child process, so that its peak resident memory
(VmHWM) is the pruning's own and not torch's export: the table gives the resident size
after `import onnxprune, onnxruntime` (baseline) and the peak; `cpu` is the process CPU
time of one run (all threads), which a loaded machine inflates less than wall time. Prints a table and
appends the medians to benchmarks/results/pass_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB. Linux: VmRSS / VmHWM, which belong to
    this process image; getrusage's ru_maxrss survives exec and would report the parent's
    size at fork, so it is only the fallback."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
        return peak, peak


def child(src: str, dst: str, repeat: int, ratio, target_macs, criterion: str) -> None:
    """Prune `src` REPEAT times in this (fresh) process; print one JSON line."""
    from onnxprune.api import prune_model
    from onnxprune.io import save_model
    import onnxruntime  # noqa: F401  (part of the baseline, not of the pass)
    baseline = _memory_mb()[0]
    runs = []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        # what the CLI does: the checker runs on the bytes being saved
        slim, report = prune_model(src, ratio, criterion=criterion, target_macs=target_macs, check_output=False,
                                     recover="stats")  # the pass, not a calibration run
        t_save = time.perf_counter()
        save_model(slim, dst, check=True)
        end = time.perf_counter()
        runs.append(dict(report.timings, save=end - t_save, end_to_end=end - start,
                         cpu=time.process_time() - cpu))
        del slim
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({"median_s": {k: round(v, 3) for k, v in med.items()},
                      "min_end_to_end_s": round(min(r["end_to_end"] for r in runs), 3),
                      "params_before": report.before["params"], "macs_before": report.before["macs"],
                      "macs_after": report.after["macs"], "rss_baseline_mb": round(baseline, 1),
                      "rss_peak_mb": round(_memory_mb()[1], 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=None, help="default 0.3 unless --target-macs")
    ap.add_argument("--target-macs", type=float, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--cache", default="", help="keep/reuse exported originals in this folder")
    ap.add_argument("--child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ratio is None and args.target_macs is None:
        args.ratio = 0.3
    if args.child:
        child(*args.child, args.repeat, args.ratio, args.target_macs, args.criterion)
        return

    import onnx
    from models import build

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = os.path.join(args.cache or tmp, f"{name}_{args.size}.onnx")
            dst = os.path.join(tmp, f"{name}_pruned.onnx")
            if os.path.exists(src):
                proto = onnx.load(src, load_external_data=False)
            else:
                proto = build(name, (1, 3, args.size, args.size))
                os.makedirs(os.path.dirname(src), exist_ok=True)
                onnx.save(proto, src)
            cmd = [sys.executable, os.path.abspath(__file__), "--child", src, dst, "--repeat", str(args.repeat),
                   "--criterion", args.criterion]
            cmd += ["--target-macs", str(args.target_macs)] if args.target_macs is not None else \
                ["--ratio", str(args.ratio)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"model": name, "size": args.size, "ratio": args.ratio, "target_macs": args.target_macs,
                         "criterion": args.criterion, "nodes": len(proto.graph.node),
                         "file_mb": round(os.path.getsize(src) / 2**20, 1), **res, "repeat": args.repeat})
            del proto
            print(f"{name}: {res['median_s']['end_to_end']:.2f} s, peak {res['rss_peak_mb']:.0f} MB", flush=True)
    stages = ["load", "analyze", "score", "allocate", "fold", "rewrite", "verify", "save", "end_to_end", "cpu"]
    print("| model | nodes | params (M) | " + " | ".join(stages) + " | peak RSS MB (baseline) |")
    print("|---|---|---|" + "---|" * len(stages) + "---|")
    for r in rows:
        print(f"| {r['model']} {r['size']}² | {r['nodes']} | {r['params_before'] / 1e6:.1f} | "
              + " | ".join(f"{r['median_s'].get(s, 0):.3f}" for s in stages)
              + f" | {r['rss_peak_mb']:.0f} ({r['rss_baseline_mb']:.0f}) |")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benchmarks", "results", "pass_speed.json")
    history = json.load(open(out)) if os.path.exists(out) else []
    history.append({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, "
                    f"{os.cpu_count()} cores", "command": "python benchmarks/pass_speed.py " + " ".join(sys.argv[1:]),
                    "rows": rows})
    with open(out, "w") as f:
        json.dump(history, f, indent=1)
    print(f"recorded in {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
