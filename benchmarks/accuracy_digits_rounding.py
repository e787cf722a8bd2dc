"""What `--round-to` costs in accuracy: the trained digits models pruned to MAC targets
0.9 / 0.8 / 0.7 with round_to 1, 4, 8 and 16, criteria bgsc (library defaults) and l1.

    python benchmarks/accuracy_digits_rounding.py      # models: python -m models.default_model --all

Prints, and writes to benchmarks/results/accuracy_digits_rounding.md, the test accuracy and
the MAC fraction reached per cell. No fine-tuning; 450 test images (1 image = 0.22 pp).
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import onnx  # noqa: E402

import onnxprune  # noqa: E402
from accuracy_digits import accuracy, dynamic_batch  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

MODELS = ["digits_resnet", "digits_mobilenet"]
TARGETS = [0.9, 0.8, 0.7]
ROUND_TO = [1, 4, 8, 16]


def main() -> int:
    _, _, x, y = load_digits_split(16)
    lines = ["# Digits accuracy against `--round-to` (no fine-tuning)", "",
             f"`python benchmarks/accuracy_digits_rounding.py`, {time.strftime('%Y-%m-%d %H:%M')}. "
             "Cells: test accuracy % (MAC fraction reached).", "",
             "| model | criterion | round_to | " + " | ".join(f"T={t:g}" for t in TARGETS) + " |",
             "|---|---|---|" + "---|" * len(TARGETS)]
    for name in MODELS:
        proto = dynamic_batch(onnx.load(os.path.join(ROOT, "models", f"{name}.onnx")))
        for criterion in ("bgsc", "l1"):
            for round_to in ROUND_TO:
                cells = []
                for target in TARGETS:
                    slim, report = onnxprune.prune(proto, target_macs=target, round_to=round_to, criterion=criterion)
                    cells.append(f"{100 * accuracy(slim, x, y) / len(y):.1f} "
                                 f"({report.after['macs'] / report.before['macs']:.2f})")
                lines.append(f"| {name} | {criterion} | {round_to} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "accuracy_digits_rounding.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
