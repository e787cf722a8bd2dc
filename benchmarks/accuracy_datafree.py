"""Test accuracy of the trained digits models pruned WITHOUT data, at MAC targets 0.8 and 0.7.

    python benchmarks/accuracy_datafree.py [--targets 0.8 0.7] [--models digits_resnet ...]
                                           [--criteria auto l1 ...] [--input-norm MEAN:STD]

Models: the digits ResNet, MobileNet, VGG and DenseNet and their second trained instances
(seed 1), BN kept and BN folded. Each is pruned with the library defaults (round_to, scope,
ranking and coupled as each criterion's defaults say) at each target and criterion, with
recovery
  none / means / stats   the data-free passes from the BN statistics (a no-op on folded files);
  default                nothing given: prune(path, target_macs=T) — an image model is recovered
                         on synthetic images, the input range read from the first BN
                         (docs/methods.md §5.7);
and evaluated afterwards on the 450-image test split (labels), which the prune never sees.

`--input-norm M:S` measures how the default copes with a model that expects normalised inputs:
each model gets a first node turning (x - M)/S back into pixels, and the test images are
normalised the same way, so the model is the same function of the pixels; only what the
default must find out about its input changes. Writes benchmarks/results/accuracy_datafree.{json,md}
(with --input-norm: accuracy_datafree_norm.{json,md}).
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
from onnx import helper, numpy_helper  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.fidelity import evaluate  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

FAMILIES = ["resnet", "mobilenet", "vgg", "densenet"]
MODELS = ([f"digits_{f}{s}" for f in FAMILIES for s in ("", "_s1")]
          + [f"digits_{f}{s}_folded" for f in FAMILIES for s in ("", "_s1")])
CRITERIA = ["auto"]
RECOVERY = ["none", "means", "stats", "default"]
BARS = {False: {0.8: 0.97, 0.7: 0.95}, True: {0.8: 0.90}}   # BN kept / folded


def expecting_normalised_input(path: str, mean: float, std: float) -> onnx.ModelProto:
    """The model behind a first node x * std + mean: it now takes (pixels - mean) / std."""
    m = onnx.load(path)
    g, name = m.graph, m.graph.input[0].name
    for node in g.node:
        node.input[:] = ["pixels" if t == name else t for t in node.input]
    g.initializer.extend([numpy_helper.from_array(np.float32(std).reshape(1, 1, 1, 1), "norm_std"),
                          numpy_helper.from_array(np.float32(mean).reshape(1, 1, 1, 1), "norm_mean")])
    first = [helper.make_node("Mul", [name, "norm_std"], ["scaled"], name="unnormalise_scale"),
             helper.make_node("Add", ["scaled", "norm_mean"], ["pixels"], name="unnormalise_shift")]
    nodes = first + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return m


def prune_once(source, target, criterion, recover, test):
    """(report, fidelity on the test images). The test images never reach the prune: what
    the default checks its own recovery on is what a user without data gets (held-out
    synthetic images), and they are scored afterwards."""
    if recover == "default":
        kw = {} if criterion == "auto" else dict(criterion=criterion)
    else:
        kw = dict(criterion=criterion, recover=recover)
    slim, rep = onnxprune.prune(source, target_macs=target, **kw)
    return rep, evaluate(source, slim, test, labels_key="labels")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.7])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--input-norm", default=None, metavar="MEAN:STD")
    args = ap.parse_args()
    _, _, x_test, y_test = load_digits_split(16)
    norm = tuple(map(float, args.input_norm.split(":"))) if args.input_norm else None
    recovery = ["default"] if norm else RECOVERY
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        test = os.path.join(tmp, "test.npz")
        np.savez(test, input=(x_test - norm[0]) / norm[1] if norm else x_test, labels=y_test)
        for name in args.models:
            path = os.path.join(ROOT, "models", f"{name}.onnx")
            source = expecting_normalised_input(path, *norm) if norm else path
            for target in args.targets:
                for criterion in args.criteria:
                    row = {"model": name, "target_macs": target, "criterion": criterion}
                    for recover in recovery:
                        t = time.perf_counter()
                        rep, fidelity = prune_once(source, target, criterion, recover, test)
                        out = fidelity.outputs[0]
                        row["unpruned"] = out.accuracy_original
                        row["achieved_macs"] = rep.after["macs"] / rep.before["macs"]
                        row[recover] = out.accuracy_pruned
                        row[recover + "_seconds"] = round(time.perf_counter() - t, 2)
                        if recover == "default":
                            row["default_calibration"] = rep.recovery.get("calibration", {}).get("source")
                            row["default_rejected"] = "rejected" in rep.recovery
                        row["options"] = {k: rep.options.get(k) for k in ("criterion", "scope", "ranking",
                                                                         "coupled", "round_to")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    table = render(rows, args.targets, args.criteria, recovery)
    print(table)
    out = os.path.join(ROOT, "benchmarks", "results", "accuracy_datafree" + ("_norm" if norm else ""))
    command = "python benchmarks/accuracy_datafree.py " + " ".join(sys.argv[1:])
    with open(out + ".json", "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "command": command, "rows": rows}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(f"Command: `{command}`\n\n" + table + "\n")


def render(rows, targets, criteria, recovery) -> str:
    lines = ["| model | MAC target (achieved) | criterion | unpruned | " + " | ".join(recovery) + " |",
             "|---|---|---|---|" + "---|" * len(recovery)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target_macs']} ({r['achieved_macs']:.3f}) | {r['criterion']} | "
                     f"{r['unpruned']:.3f} | " + " | ".join(f"{r[k]:.3f}" for k in recovery) + " |")
    lines += ["", "Mean [min] accuracy per criterion, recovery and target; the last column counts the models "
              "meeting the bar (BN kept: >= 97 % at T=0.8, >= 95 % at T=0.7; BN folded: >= 90 % at T=0.8):", "",
              "| models | criterion | recovery | " + " | ".join(f"T={t}" for t in targets) + " | bar met |",
              "|---|---|---|" + "---|" * (len(targets) + 1)]
    for folded in (False, True):
        for criterion in criteria:
            for recover in recovery:
                cells, bars = [], []
                for t in targets:
                    accs = [r[recover] for r in rows if r["criterion"] == criterion and r["target_macs"] == t
                            and r["model"].endswith("_folded") == folded]
                    cells.append(f"{np.mean(accs):.3f} [{np.min(accs):.3f}]" if accs else "-")
                    bar = BARS[folded].get(t)
                    if bar is not None and accs:
                        bars.append(f"T={t}: {sum(a >= bar for a in accs)}/{len(accs)}")
                if any(c != "-" for c in cells):
                    lines.append(f"| {'BN folded' if folded else 'BN kept'} | {criterion} | {recover} | "
                                 + " | ".join(cells) + f" | {', '.join(bars)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
