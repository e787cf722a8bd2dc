"""PreConfig (`onnxprune reconfigure`, onnxprune/reconfigure.py) on randomly initialised
ResNet-50 (1x3x64x64) and MobileNetV2 (1x3x32x32) from models/zoo.py.

    python benchmarks/reconfigure.py [--models resnet50 mobilenet_v2] [--targets 0.5 0.75 1.0]

For every model, MAC target t and widening bound u in {1, 2} (and, with u = 2, the MAC and
parameter budgets t at once): the MACs and parameters of the written model over the
input's (measured with onnxprune.cost on the saved file), the groups widened and narrowed,
the time of the allocation stage (program build + solve + rounding) and of the whole run,
and whether the written model passes the ONNX checker and runs in onnxruntime. No accuracy:
these models are for training from scratch. Writes benchmarks/results/reconfigure.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.cost import cost  # noqa: E402
from onnxprune.load import load  # noqa: E402

COMMAND = "python benchmarks/reconfigure.py"
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def budgets(targets):
    for t in targets:
        yield {"target_macs": t, "max_widen": 1.0}
        yield {"target_macs": t, "max_widen": 2.0}
        yield {"target_macs": t, "target_params": t, "max_widen": 2.0}


def valid(path: str, shape) -> bool:
    onnx.checker.check_model(path, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return bool(np.all(np.isfinite(sess.run(None, {sess.get_inputs()[0].name: x})[0])))


def row(name, proto, budget, folder) -> dict:
    if budget.get("target_macs", 0) > 1 and budget["max_widen"] == 1:
        return None
    start = time.perf_counter()
    out, report = onnxprune.reconfigure(proto, **budget)
    total = time.perf_counter() - start
    path = os.path.join(folder, "out.onnx")
    onnx.save(out, path)
    before, after = cost(load(proto)), cost(load(path))
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    result = {"model": name, **budget, "macs": after.macs / before.macs, "params": after.params / before.params,
              "widened": sum(g["channels_after"] > g["channels_before"] for g in report.groups),
              "narrowed": sum(g["channels_after"] < g["channels_before"] for g in report.groups),
              "groups": len(report.groups), "allocate_s": report.timings["allocate"], "total_s": round(total, 3),
              "budgets_met": report.budgets_met, "valid": valid(path, shape)}
    print(json.dumps(result))
    return result


def markdown(rows) -> str:
    lines = ["| model | MAC target | param target | u | MACs | params | widened / narrowed / groups | "
             "allocate s | total s | budgets met | valid |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target_macs']} | {r.get('target_params', '-')} | {r['max_widen']:g} | "
                     f"{r['macs']:.4f} | {r['params']:.4f} | {r['widened']} / {r['narrowed']} / {r['groups']} | "
                     f"{r['allocate_s']:.2f} | {r['total_s']:.2f} | {r['budgets_met']} | {r['valid']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75, 1.0])
    args = parser.parse_args()
    from models import build
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            proto = build(name)
            rows += [r for b in budgets(args.targets) if (r := row(name, proto, b, folder))]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "reconfigure.json"), "w") as f:
        json.dump({"command": COMMAND, "rows": rows, "onnxprune": onnxprune.__version__,
                   "onnxruntime": ort.__version__, "cpus": os.cpu_count()}, f, indent=1)
        f.write("\n")
    md = markdown(rows)
    with open(os.path.join(RESULTS, "reconfigure.md"), "w") as f:
        f.write(f"`{COMMAND}`\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
