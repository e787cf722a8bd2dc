"""Time and peak memory of recovery with calibration data on a big model.

    python benchmarks/recovery_cost.py [--model resnet50] [--size 224] [--samples 512 2000]
        [--target-macs 0.5] [--recover lsq] [--name recovery_cost]

Exports the model (torch, random init, BN kept) once, then for each sample count runs, in a
fresh process, `onnxprune.prune(model, target_macs=T, calibration=<N random images>,
recover=R)`: the images are random (time and memory do not depend on their content), fed
as one dict {input name: array} (an .npz in memory), which the library uses in place, so
the calibration set is held once in memory (N x 3 x 224 x 224
float32: 308 MB at 512, 1.2 GB at 2000 — counted in the peak). Prints and records, per N,
the recover and evaluate stage times, the whole pass (wall and the process's CPU seconds, with
the 1-minute load average before and after: on shared cores the wall time depends on the
neighbours), and the process's peak resident memory (VmHWM) in
benchmarks/results/recovery_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def child(src: str, samples: int, size: int, target: float, recover: str) -> None:
    import numpy as np
    import onnx
    import onnxprune
    name = onnx.load(src, load_external_data=False).graph.input[0].name
    rng = np.random.default_rng(0)
    images = rng.standard_normal((samples, 3, size, size), dtype=np.float32)
    batches = {name: images}   # one dict of arrays: used in place by the library, not copied
    start, cpu0, load0 = time.perf_counter(), _cpu(), os.getloadavg()[0]
    _, report = onnxprune.prune(src, target_macs=target, calibration=batches, recover=recover)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu0
    peak = int(dict(line.split(":", 1) for line in open("/proc/self/status"))["VmHWM"].split()[0]) / 1024
    print(json.dumps({"samples": samples, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "load_avg_1min": [round(load0, 1), round(os.getloadavg()[0], 1)],
                      "timings_s": report.timings, "peak_rss_mb": round(peak),
                      "allocator": report.options.get("allocator"), "coupled": report.options.get("coupled"),
                      "notes": [n for n in report.notes if "reconstruct" in n or "correct_statistics" in n
                                or n.startswith("--allocator auto")]}))


def _cpu() -> float:
    """User + system seconds of this process: on shared cores, wall time says as much about
    the neighbours as about the code; CPU time over the core count is the uncontended wall."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--samples", type=int, nargs="+", default=[512, 2000])
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--recover", default="lsq")
    ap.add_argument("--cache", default="/tmp/onnxprune_compare")
    ap.add_argument("--name", default="recovery_cost", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.size, args.target_macs, args.recover)
    import onnx
    from models import build
    src = os.path.join(args.cache, f"{args.model}_{args.size}.onnx")
    if not os.path.exists(src):
        os.makedirs(args.cache, exist_ok=True)
        onnx.save(build(args.model, (1, 3, args.size, args.size)), src)
    rows = []
    for n in args.samples:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", src, str(n), "--size", str(args.size),
               "--target-macs", str(args.target_macs), "--recover", args.recover]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            rows.append({"samples": n, "error": out.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    path = os.path.join(ROOT, "benchmarks", "results", args.name + ".json")
    with open(path, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/recovery_cost.py "
                   + " ".join(sys.argv[1:]), "model": args.model, "size": args.size,
                   "target_macs": args.target_macs, "recover": args.recover, "rows": rows}, f, indent=1)
    print(f"recorded in {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
