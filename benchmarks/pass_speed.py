"""Pass wall time, stage by stage, on this machine.

    python benchmarks/pass_speed.py [--models resnet50 ...] [--size 224] [--repeat 3]

Exports each model (torch, random init, BN kept) at SIZE×SIZE, saves it, then runs the
whole `onnxprune in out --ratio 0.3` path in-process REPEAT times: load from disk,
analyze, score, allocate, fold, rewrite, verify (checker + onnxruntime session), save.
Prints a table and appends the medians to benchmarks/results/pass_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--criterion", default="l1")
    args = ap.parse_args()

    import onnx
    import onnxprune
    from models import build
    from onnxprune.io import save

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            proto = build(name, (1, 3, args.size, args.size))
            src, dst = os.path.join(tmp, f"{name}.onnx"), os.path.join(tmp, f"{name}_pruned.onnx")
            onnx.save(proto, src)
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                slim, report = onnxprune.prune(src, args.ratio, criterion=args.criterion)
                t_save = time.perf_counter()
                save(slim, dst)
                end = time.perf_counter()
                runs.append(dict(report.timings, save=end - t_save, end_to_end=end - start))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append({"model": name, "size": args.size, "ratio": args.ratio,
                         "nodes": len(proto.graph.node), "params_before": report.before["params"],
                         "macs_before": report.before["macs"], "macs_after": report.after["macs"],
                         "median_s": {k: round(v, 3) for k, v in med.items()}, "repeat": args.repeat})
    stages = ["load", "analyze", "score", "allocate", "fold", "rewrite", "verify", "save", "end_to_end"]
    print("| model | nodes | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for r in rows:
        print(f"| {r['model']} {r['size']}² | {r['nodes']} | "
              + " | ".join(f"{r['median_s'].get(s, 0):.3f}" for s in stages) + " |")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benchmarks", "results", "pass_speed.json")
    history = json.load(open(out)) if os.path.exists(out) else []
    history.append({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, "
                    f"{os.cpu_count()} cores", "rows": rows})
    with open(out, "w") as f:
        json.dump(history, f, indent=1)
    print(f"recorded in {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
