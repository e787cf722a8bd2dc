"""onnxprune against Torch-Pruning at equal MACs, timed in one alternating run.

    pip install torch-pruning        # benchmark extra only (pulls nothing beyond torch, numpy)
    python benchmarks/baseline_torch_pruning.py [--models mobilenet_v2 resnet50] [--target 0.5]
        [--threads 1 2] [--runs 30] [--warmup 5]

For each model of our zoo (224x224, random init, seed 0), five ONNX files:
  original          torch export of the module
  onnxprune bgsc    onnxprune.prune(original, criterion="bgsc", target_macs=T)   (default round_to)
  onnxprune l1      onnxprune.prune(original, criterion="l1", target_macs=T)
  TP                Torch-Pruning's MetaPruner with GroupMagnitudeImportance(p=1) (L1), one
                    global ratio per step, iterative steps of 0.01 until MACs <= T; round_to=None
                    (its default), the classifier left alone; then exported like the original
  TP round_to=16    the same with round_to=16 (Torch-Pruning's own alignment option)
MACs of every file are counted by the same code (onnxprune.cost), then all five run in one
alternating series per thread count (onnxprune.bench.compare). Writes
benchmarks/results/baseline_torch_pruning.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def torch_pruning_variant(module, shape, target: float, round_to):
    """Torch-Pruning (L1 group magnitude, global ratio steps of 0.01) until MACs <= target."""
    import torch
    import torch_pruning as tp
    model = copy.deepcopy(module).eval()
    example = torch.randn(*shape)
    base_macs, _ = tp.utils.count_ops_and_params(model, example)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    steps = 100
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=1.0, iterative_steps=steps, ignored_layers=head,
                                  round_to=round_to, global_pruning=False)
    for _ in range(steps):
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example)
        if macs <= target * base_macs:
            break
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("torch-pruning is not installed (pip install torch-pruning): nothing measured")
        return 0
    import onnxprune
    from onnxprune import bench
    from onnxprune.cost import cost
    from onnxprune.load import load
    from models.export import build_module, export_onnx

    rows, tables = [], []
    for name in args.models:
        module, shape = build_module(name, (1, 3, 224, 224))
        original = export_onnx(module, shape)
        variants = {"original": original}
        t0 = time.perf_counter()
        variants["onnxprune bgsc"], _ = onnxprune.prune(original, criterion="bgsc", target_macs=args.target)
        variants["onnxprune l1"], _ = onnxprune.prune(original, criterion="l1", target_macs=args.target)
        print(f"{name}: onnxprune variants in {time.perf_counter() - t0:.1f} s", flush=True)
        for label, round_to in (("TP", None), ("TP round_to=16", 16)):
            t0 = time.perf_counter()
            variants[label] = export_onnx(torch_pruning_variant(module, shape, args.target, round_to), shape)
            print(f"{name}: {label} in {time.perf_counter() - t0:.1f} s", flush=True)
        macs = {label: cost(load(proto)).macs for label, proto in variants.items()}
        import torch
        torch.set_num_threads(1)  # torch's own pool must not compete with onnxruntime's while timing
        for threads in args.threads:
            timings = bench.compare(list(variants.values()), threads=threads, warmup=args.warmup, runs=args.runs,
                                    names=[f"{name} {label}" for label in variants])
            tables.append(bench.table(timings, "cpu", threads, 1))
            print(tables[-1], flush=True)
            for (label, proto), t in zip(variants.items(), timings):
                mac_speedup = macs["original"] / macs[label]
                rows.append({"model": name, "variant": label, "threads": threads, "macs": macs[label],
                             "mac_fraction": round(macs[label] / macs["original"], 4),
                             "median_ms": round(t.median_ms, 3), "p10_ms": round(t.p10_ms, 3),
                             "p90_ms": round(t.p90_ms, 3), "speedup": round(t.speedup, 3),
                             "efficiency": round(t.speedup / mac_speedup, 3)})
    import torch_pruning as tp
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/baseline_torch_pruning.py "
            + " ".join(argv if argv is not None else sys.argv[1:]), "torch_pruning": tp.__version__,
            "target": args.target, "runs": args.runs, "warmup": args.warmup}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "baseline_torch_pruning.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    md = [f"# onnxprune vs Torch-Pruning {tp.__version__} at MAC target {args.target:g}", "",
          f"`{meta['command']}`, {meta['date']}; one alternating series per (model, threads); runs "
          f"{args.runs}, warm-up {args.warmup}, batch 1, 224×224.", "",
          "| model | variant | threads | MACs kept | median ms | latency speedup | efficiency |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['variant']} | {r['threads']} | {r['mac_fraction']:.3f} | "
                  f"{r['median_ms']:.2f} | {r['speedup']:.2f}× | {r['efficiency']:.2f} |")
    md += ["", "```", "\n\n".join(tables), "```", ""]
    with open(os.path.join(RESULTS, "baseline_torch_pruning.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md[:len(rows) + 6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
