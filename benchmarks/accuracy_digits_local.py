"""bgsc with the local scope (every group thinned by the same fraction) on the digits models.

    python benchmarks/accuracy_digits_local.py

A supplementary measurement to benchmarks/accuracy_digits.py (same models, test split and
accuracy function): test accuracy (%) and achieved MAC fraction at MAC targets 0.9/0.8/0.7.
"""
import os
import sys

import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import accuracy_digits as ad  # noqa: E402
import onnxprune  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

MODELS = ["digits_resnet", "digits_resnet_folded", "digits_mobilenet", "digits_mobilenet_folded"]


def main():
    _, _, x, y = load_digits_split(16)
    for name in MODELS:
        proto = ad.dynamic_batch(onnx.load(os.path.join(ROOT, "models", f"{name}.onnx")))
        cells = []
        for target in (0.9, 0.8, 0.7):
            slim, report = onnxprune.prune(proto, criterion="bgsc", scope="local", target_macs=target,
                                           round_to=1)
            kept = report.after["macs"] / report.before["macs"]
            cells.append(f"{100 * ad.accuracy(slim, x, y) / len(y):.1f} ({kept:.2f})")
        print(f"| {name} | bgsc local | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
