"""Pass time and peak memory of two checkouts of onnxprune, measured in one alternating run.

    python benchmarks/redesign_compare.py --before DIR [--models resnet50 resnet152]
        [--criteria l1 bgsc] [--rounds 3] [--large]

DIR is another checkout (e.g. `git worktree add /tmp/before <commit>`). Each round prunes
every model with each checkout in turn (before, after, before, after, ...), each run in a
fresh process through that checkout's own `benchmarks/pass_speed.py --child` (the CLI path:
load, analyze, score, allocate, fold, rewrite, verify, save), so machine drift hits both
alike. `--large` also prunes the >2 GB model of benchmarks/large_model.py with each
checkout under /usr/bin/time (`onnxprune big.onnx out.onnx --ratio 0.3 --verify`).
Prints a table; records benchmarks/results/redesign_compare.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_child(tree: str, src: str, dst: str, criterion: str) -> dict:
    cmd = [sys.executable, os.path.join(tree, "benchmarks", "pass_speed.py"), "--child", src, dst,
           "--repeat", "1", "--criterion", criterion, "--ratio", "0.3"]
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_large(tree: str, src: str, dst: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "onnxprune", src, dst, "--ratio", "0.3", "--verify"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env={**os.environ, "PYTHONPATH": tree})
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", run.stderr).group(1)
    m, s = wall.split(":")[-2:]
    return {"exit": run.returncode, "peak_rss_mb": peak_kb / 1024, "wall_s": int(m) * 60 + float(s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the other checkout")
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet152"])
    ap.add_argument("--criteria", nargs="+", default=["l1", "bgsc"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--cache", default="/tmp/onnxprune_compare")
    args = ap.parse_args()
    trees = {"before": os.path.abspath(args.before), "after": ROOT}
    os.makedirs(args.cache, exist_ok=True)
    import onnx
    from models import build

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = os.path.join(args.cache, f"{name}_224.onnx")
            if not os.path.exists(src):
                onnx.save(build(name, (1, 3, 224, 224)), src)
            for criterion in args.criteria:
                runs = {k: [] for k in trees}
                for _ in range(args.rounds):
                    for key, tree in trees.items():
                        runs[key].append(run_child(tree, src, os.path.join(tmp, f"{key}.onnx"), criterion))
                row = {"model": name, "criterion": criterion}
                for key in trees:
                    row[key] = {"end_to_end_s": statistics.median(r["median_s"]["end_to_end"] for r in runs[key]),
                                "peak_rss_mb": statistics.median(r["rss_peak_mb"] for r in runs[key]),
                                "stages_s": {s: statistics.median(r["median_s"].get(s, 0) for r in runs[key])
                                             for s in runs[key][0]["median_s"]}}
                rows.append(row)
                print(f"{name} {criterion}: before {row['before']['end_to_end_s']:.2f} s "
                      f"{row['before']['peak_rss_mb']:.0f} MB | after {row['after']['end_to_end_s']:.2f} s "
                      f"{row['after']['peak_rss_mb']:.0f} MB", flush=True)
        if args.large:
            sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
            from large_model import build as build_large
            big = os.path.join(args.cache, "big.onnx")
            size = build_large(big, 15, 2048)
            large = {"model_mb": size / 2**20}
            for key, tree in trees.items():
                large[key] = run_large(tree, big, os.path.join(args.cache, f"big_{key}.onnx"))
                print(f"large {key}: {large[key]}", flush=True)
            rows.append({"model": ">2 GB conv stack", "criterion": "l1", **large})
    print("| model | criterion | before: s | after: s | ratio | before: peak MB | after: peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r["after"]
        bs, as_ = b.get("end_to_end_s", b.get("wall_s")), a.get("end_to_end_s", a.get("wall_s"))
        print(f"| {r['model']} | {r['criterion']} | {bs:.2f} | {as_:.2f} | {as_ / bs:.2f} | "
              f"{b['peak_rss_mb']:.0f} | {a['peak_rss_mb']:.0f} |")
    out = os.path.join(ROOT, "benchmarks", "results", "redesign_compare.json")
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/redesign_compare.py "
                   + " ".join(sys.argv[1:]), "rounds": args.rounds, "rows": rows}, f, indent=1)
    print(f"recorded in {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
