"""Test accuracy of the trained digits models pruned WITHOUT data, with and without the
data-free recovery (docs/methods.md §5: moments predicted from BatchNormalization
statistics), at MAC targets 0.8 and 0.7.

    python benchmarks/accuracy_datafree.py [--targets 0.8 0.7] [--models digits_resnet ...]

Models: the digits ResNet, MobileNet, VGG and DenseNet and their second trained instances
(seed 1), BN kept and BN folded (the folded exports carry no statistics: the data-free
recovery is a no-op there, which the script records too). Each is pruned with the library
defaults (round_to, scope, ranking and coupled as each criterion's defaults say) at each
target, criteria l1, bgsc and bn-variance, recover none / means / stats, and evaluated on
the 450-image test split (`eval_data`, labels). Writes benchmarks/results/accuracy_datafree.{json,md}.
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

import onnxprune  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

FAMILIES = ["resnet", "mobilenet", "vgg", "densenet"]
MODELS = ([f"digits_{f}{s}" for f in FAMILIES for s in ("", "_s1")]
          + [f"digits_{f}{s}_folded" for f in FAMILIES for s in ("", "_s1")])
CRITERIA = ["l1", "bgsc", "bn-variance"]
RECOVERY = ["none", "means", "stats"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.7])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    args = ap.parse_args()
    _, _, x_test, y_test = load_digits_split(16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        test = os.path.join(tmp, "test.npz")
        np.savez(test, input=x_test, labels=y_test)
        for name in args.models:
            for target in args.targets:
                for criterion in args.criteria:
                    row = {"model": name, "target_macs": target, "criterion": criterion}
                    for recover in RECOVERY + ["synthetic"]:
                        # "synthetic": --calib synthetic (1/f noise images, no data) with the default
                        # recovery for calibration data (lsq); the digits pixels lie in [0, 1]
                        calib = dict(calibration="synthetic") if recover == "synthetic" else dict(recover=recover)
                        _, rep = onnxprune.prune(os.path.join(ROOT, "models", f"{name}.onnx"), target_macs=target,
                                                 criterion=criterion, eval_data=test, **calib)
                        out = rep.fidelity.outputs[0]
                        row["unpruned"] = out.accuracy_original
                        row["achieved_macs"] = rep.after["macs"] / rep.before["macs"]
                        row[recover] = out.accuracy_pruned
                        row["options"] = {k: rep.options.get(k) for k in ("scope", "ranking", "coupled", "round_to")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    lines = ["| model | MAC target (achieved) | criterion | unpruned | none | means | stats | synthetic (lsq) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target_macs']} ({r['achieved_macs']:.3f}) | {r['criterion']} | "
                     f"{r['unpruned']:.3f} | {r['none']:.3f} | {r['means']:.3f} | {r['stats']:.3f} | "
                     f"{r['synthetic']:.3f} |")
    lines += ["", "Mean [min] accuracy per criterion, recovery and target; the last column counts the models "
              "meeting the bar (BN kept: >= 97 % at T=0.8, >= 95 % at T=0.7; BN folded: >= 90 % at T=0.8):", "",
              "| models | criterion | recovery | " + " | ".join(f"T={t}" for t in args.targets) + " | bar met |",
              "|---|---|---|" + "---|" * (len(args.targets) + 1)]
    for folded in (False, True):
        for criterion in args.criteria:
            for recover in ("stats", "synthetic"):
                cells, bars = [], []
                for t in args.targets:
                    accs = [r[recover] for r in rows if r["criterion"] == criterion and r["target_macs"] == t
                            and r["model"].endswith("_folded") == folded]
                    cells.append(f"{np.mean(accs):.3f} [{np.min(accs):.3f}]" if accs else "-")
                    bar = ({0.8: 0.90} if folded else {0.8: 0.97, 0.7: 0.95}).get(t)
                    if bar is not None and accs:
                        bars.append(f"T={t}: {sum(a >= bar for a in accs)}/{len(accs)}")
                lines.append(f"| {'BN folded' if folded else 'BN kept'} | {criterion} | {recover} | "
                             + " | ".join(cells) + f" | {', '.join(bars)} |")
    table = "\n".join(lines)
    print(table)
    out = os.path.join(ROOT, "benchmarks", "results", "accuracy_datafree")
    with open(out + ".json", "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/accuracy_datafree.py "
                   + " ".join(sys.argv[1:]), "rows": rows}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("Command: `python benchmarks/accuracy_datafree.py " + " ".join(sys.argv[1:]) + "`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
