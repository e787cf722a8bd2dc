"""Is the pass linear in graph size? Prunes chains of residual blocks of growing length and
fits the exponent of wall time against the number of nodes.

    python benchmarks/pass_scaling.py [--blocks 50 100 200 400 800] [--width 16] [--size 16]
                                      [--criterion l1] [--recover none] [--repeat 3]

Each chain is built with onnx.helper (no torch): a stem conv, then N basic residual blocks
(conv 3×3 → BN → ReLU → conv 3×3 → BN → Add → ReLU; 7 nodes each, one residual stream through
all of them), global pooling and a Gemm. The whole in-memory pass runs
`prune_model(proto, ratio=0.3, criterion=C, recover=R, check_output=False)` (load, analyze,
score, allocate, fold, rewrite, the one-run check), the median of REPEAT runs per length. The
exponent b of time ≈ a·nodes^b is the least-squares slope in log-log; b ≈ 1 is linear. Prints a
table (with each stage's share at the longest chain) and writes benchmarks/results/pass_scaling.json
(or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def chain(blocks: int, width: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def conv(x, name, c_in):
        w = const(f"{name}.w", rng.standard_normal((width, c_in, 3, 3)) * (2 / (9 * c_in)) ** 0.5)
        nodes.append(helper.make_node("Conv", [x, w], [name], name=name, kernel_shape=[3, 3], pads=[1] * 4))
        return name

    def bn(x, name):
        ins = [x] + [const(f"{name}.{k}", v) for k, v in (("g", rng.uniform(0.5, 1.5, width)),
                                                           ("b", rng.uniform(-0.2, 0.2, width)),
                                                           ("m", rng.uniform(-0.1, 0.1, width)),
                                                           ("v", rng.uniform(0.5, 1.5, width)))]
        nodes.append(helper.make_node("BatchNormalization", ins, [name], name=name))
        return name

    def op(kind, ins, name):
        nodes.append(helper.make_node(kind, ins, [name], name=name))
        return name

    h = op("Relu", [bn(conv("x", "stem", 3), "stem_bn")], "stem_relu")
    for i in range(blocks):
        b = f"b{i}"
        t = op("Relu", [bn(conv(h, f"{b}.c1", width), f"{b}.bn1")], f"{b}.r1")
        t = bn(conv(t, f"{b}.c2", width), f"{b}.bn2")
        h = op("Relu", [op("Add", [t, h], f"{b}.add")], f"{b}.r2")
    p = op("Flatten", [op("GlobalAveragePool", [h], "gap")], "flat")
    nodes.append(helper.make_node("Gemm", [p, const("fc.w", rng.standard_normal((10, width)) * 0.1),
                                           const("fc.b", np.zeros(10))], ["y"], name="fc", transB=1))
    graph = helper.make_graph(nodes, f"chain{blocks}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--recover", default="none")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pass_scaling.json"))
    args = ap.parse_args()
    from onnxprune.api import prune_model
    rows = []
    for n in args.blocks:
        proto = chain(n, args.width, args.size)
        runs, stages = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            _, report = prune_model(proto, 0.3, criterion=args.criterion, recover=args.recover, check_output=False)
            runs.append(time.perf_counter() - start)
            stages.append(report.timings)
        best = stages[int(np.argsort(runs)[len(runs) // 2])]
        rows.append({"blocks": n, "nodes": len(proto.graph.node), "seconds": round(statistics.median(runs), 4),
                     "stages": {k: v for k, v in best.items() if k != "total"}})
        print(f"{n:5d} blocks  {rows[-1]['nodes']:6d} nodes  {rows[-1]['seconds']:.3f} s", flush=True)
    x = np.log([r["nodes"] for r in rows])
    y = np.log([r["seconds"] for r in rows])
    slope, _ = np.polyfit(x, y, 1)
    last = rows[-1]["stages"]
    total = sum(last.values()) or 1.0
    print(f"exponent of time against nodes: {slope:.2f} (1 = linear)")
    print("stages at the longest chain: " + ", ".join(f"{k} {v:.3f} s ({100 * v / total:.0f} %)"
                                                   for k, v in sorted(last.items(), key=lambda kv: -kv[1])))
    out = args.out
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/pass_scaling.py "
                   + " ".join(sys.argv[1:]), "load_avg_1min": round(os.getloadavg()[0], 2), "exponent": round(slope, 3),
                   "rows": rows}, f, indent=1)
    print(f"recorded in {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
