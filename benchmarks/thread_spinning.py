"""Why the latency harness stops thread-pool spinning after each run.

    python benchmarks/thread_spinning.py [--model resnet50] [--target 0.5] [--runs 30]

Prunes MODEL (224x224, bgsc, MAC target TARGET, default rounding) and times the original
and the pruned model with `onnxprune.bench.compare` at 1 and 2 threads: alternating
with `session.force_spinning_stop` off (onnxruntime's default) and on (the harness
default), and each model alone. Writes benchmarks/results/thread_spinning.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cache", default=os.path.join("/tmp", "onnxprune_latency_cache"))
    args = ap.parse_args(argv)

    import onnx
    import onnxprune
    from onnxprune import bench
    from models import build

    cached = os.path.join(args.cache, f"{args.model}_224.onnx")
    if os.path.exists(cached):
        proto = onnx.load(cached)
    else:
        proto = build(args.model, (1, 3, 224, 224), keep_bn=True)
    slim, _ = onnxprune.prune(proto, criterion="bgsc", target_macs=args.target, recover="stats")
    rows = []
    for threads in (1, 2):
        for label, models, stop in (("alternating, spinning kept after a run", [proto, slim], False),
                                    ("alternating, spinning stopped after a run", [proto, slim], True),
                                    ("original alone", [proto], True), ("pruned alone", [slim], True)):
            t = bench.compare(models, threads=threads, warmup=args.warmup, runs=args.runs, stop_spinning=stop)
            row = {"threads": threads, "mode": label, "ms": [round(x.median_ms, 2) for x in t]}
            if len(t) == 2:
                row["speedup"] = round(t[1].speedup, 3)
            rows.append(row)
            print(row, flush=True)
    lines = [f"# Thread-pool spinning in alternating runs: {args.model} and its bgsc prune at MAC target "
             f"{args.target}", "", f"`python benchmarks/thread_spinning.py --model {args.model} --target "
             f"{args.target} --runs {args.runs}`, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores", "",
             "| threads | mode | original ms | pruned ms | speedup |", "|---|---|---|---|---|"]
    alone = {}
    for r in rows:
        if len(r["ms"]) == 2:
            lines.append(f"| {r['threads']} | {r['mode']} | {r['ms'][0]} | {r['ms'][1]} | {r['speedup']:.2f}× |")
        else:
            alone.setdefault(r["threads"], []).append(r["ms"][0])
    for threads, (a, b) in alone.items():
        lines.append(f"| {threads} | each model alone | {a} | {b} | {a / b:.2f}× |")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "thread_spinning.json"), "w") as f:
        json.dump({"model": args.model, "target": args.target, "runs": args.runs, "rows": rows}, f, indent=1)
    with open(os.path.join(RESULTS, "thread_spinning.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
