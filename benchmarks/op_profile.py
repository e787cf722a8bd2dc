"""Where the time goes, per operator type, in an original and its pruned model (onnxruntime's
own profiler, CPU, 1 thread, batch 1): which work shrinks with the MACs and which does not.

    python benchmarks/op_profile.py [--model resnet50] [--size 224] [--target 0.5] [--runs 40]

The model comes from the zoo (models.build, random weights, BN kept), pruned with the
defaults at `--target-macs T` (`recover="stats"`: the weights are random). Each model gets
its own session with profiling on; after warm-up, `--runs` runs are profiled and every
node's kernel time is summed per operator type and per node. Printed: milliseconds per run
by operator type, original against pruned, and the nodes whose time shrank least. Writes
benchmarks/results/op_profile_MODEL.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxprune  # noqa: E402
from latency_target import zoo_model  # noqa: E402


def profile(path: str, runs: int, tmp: str) -> tuple[dict, dict]:
    """(ms per run by operator type, ms per run by node) from onnxruntime's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tmp, os.path.basename(path))
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape],
                                                        dtype=np.float32)}
    for _ in range(10):
        session.run(None, feed)
    session.end_profiling()   # warm-up events go to a first file, not counted
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / runs / 1000
            by_node[e["name"][:-len("_kernel_time")]] += e["dur"] / runs / 1000
    return dict(by_op), dict(by_node)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    src = zoo_model(args.model, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        slim, report = onnxprune.prune(src, target_macs=args.target, recover="stats")
        pruned = os.path.join(tmp, "pruned.onnx")
        onnx.save(slim, pruned)
        (a, a_nodes), (b, b_nodes) = profile(src, args.runs, tmp), profile(pruned, args.runs, tmp)
    macs = report.after["macs"] / report.before["macs"]
    print(f"{args.model} {args.size}², MACs kept {macs:.3f}; ms per run, 1 thread, batch 1")
    print(f"{'operator':18s} {'original':>9s} {'pruned':>9s} {'ratio':>6s}")
    for op in sorted(a, key=lambda k: -a[k]):
        print(f"{op:18s} {a[op]:9.2f} {b.get(op, 0):9.2f} {b.get(op, 0) / a[op]:6.2f}")
    total = (sum(a.values()), sum(b.values()))
    print(f"{'all kernels':18s} {total[0]:9.2f} {total[1]:9.2f} {total[1] / total[0]:6.2f}")
    least = sorted((n for n in a_nodes if a_nodes[n] > 0.2), key=lambda n: -b_nodes.get(n, 0) / a_nodes[n])[:8]
    print("nodes (> 0.2 ms) that shrank least:")
    for n in least:
        print(f"  {n[:70]:70s} {a_nodes[n]:6.2f} -> {b_nodes.get(n, 0):6.2f}")
    out = os.path.join(ROOT, "benchmarks", "results", f"op_profile_{args.model}.json")
    with open(out, "w") as f:
        json.dump({"model": args.model, "size": args.size, "target": args.target, "mac_fraction": macs,
                   "load": os.getloadavg()[0], "by_op": {"original": a, "pruned": b},
                   "least_shrunk": {n: [a_nodes[n], b_nodes.get(n, 0)] for n in least}}, f, indent=1)
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
