"""`onnxprune sweep` on the trained digits models, as a user would run it.

    python benchmarks/sweep_digits.py [--models digits_resnet digits_mobilenet]
                                      [--targets 0.9,0.8,0.7,0.6,0.5] [--calib 256] [--out benchmarks/results]

Data (as benchmarks/accuracy_recovery.py): the fixed split of `models.digits.load_digits_split(16)`.
Calibration: the first N (256) images of a numpy default_rng(0) permutation of the 1347 TRAIN
images, unlabelled. Evaluation: the 450 TEST images with their labels. Both are written as .npz
files to a temporary folder and given to the CLI:

    onnxprune sweep models/<m>.onnx --targets 0.9,0.8,0.7,0.6,0.5 --calib calib.npz \\
        --eval-data test.npz --bench --runs 200 --warmup 20 --plot <out>/sweep_<m>.png --json <out>/sweep_<m>.json

Everything else is the default (criterion l1, recovery auto = lsq, round-to for this CPU, 1
thread, batch 1). The printed table goes to <out>/sweep_<m>.txt, after a line saying when and
under what load it ran (the digits models run in ~0.05 ms: latency is noisy on a busy machine).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models.digits import load_digits_split  # noqa: E402

CALIB_SEED = 0
BENCH = ["--bench", "--runs", "200", "--warmup", "20"]


def write_data(folder: str, n_calib: int) -> tuple[str, str]:
    x_train, _, x_test, y_test = load_digits_split(16)
    pool = x_train[np.random.default_rng(CALIB_SEED).permutation(len(x_train))]
    calib, test = os.path.join(folder, "calib.npz"), os.path.join(folder, "test.npz")
    np.savez(calib, input=pool[:n_calib])
    np.savez(test, input=x_test, labels=y_test)
    return calib, test


def run(model: str, targets: str, calib: str, test: str, out: str) -> None:
    stem = os.path.join(out, f"sweep_{model}")
    command = [sys.executable, "-m", "onnxprune", "sweep", os.path.join(ROOT, "models", f"{model}.onnx"),
               "--targets", targets, "--calib", calib, "--eval-data", test, *BENCH,
               "--plot", f"{stem}.png", "--json", f"{stem}.json"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    p = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    if p.returncode != 0:
        raise SystemExit(f"{model}: exit {p.returncode}: {p.stderr.strip()}")
    table = "\n".join(line for line in p.stdout.splitlines() if not line.startswith(("wrote ", "target ")))
    with open(f"{stem}.txt", "w") as f:
        f.write(f"# {started}, {os.cpu_count()} cores, load average {load:.1f} at the start\n{table}\n")
    print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits_resnet", "digits_mobilenet"])
    ap.add_argument("--targets", default="0.9,0.8,0.7,0.6,0.5")
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        calib, test = write_data(folder, args.calib)
        for model in args.models:
            run(model, args.targets, calib, test, args.out)


if __name__ == "__main__":
    main()
