"""Neuron merging without data (passes/merge_neurons.py, docs/methods.md §5): test accuracy
of the trained digits models pruned at MAC targets 0.8 and 0.7, recover none / merge /
stats / merge,stats (BN kept) and none / merge (BN folded: no statistics, merging is the
only data-free recovery there), criteria bn-variance and l1; and the merge threshold swept
over all 16 files.

    python benchmarks/accuracy_merge.py [--targets 0.8 0.7] [--models digits_resnet ...]
        [--criteria bn-variance l1] [--thresholds 0.1 0.2 ...] [--no-sweep]

`merge,stats` predicts each pruned layer with its merged columns (correct_statistics
`_as_pruned`). The recorded results (2026-12-01) predate that: their `merge,stats` column
is the earlier behaviour (the original rows minus the removed ones) and `merge,stats*` a
prototype of today's. Writes benchmarks/results/accuracy_merge.{json,md}.
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
from onnxprune.passes import merge_neurons  # noqa: E402

FAMILIES = ["resnet", "mobilenet", "vgg", "densenet"]
BN_MODELS = [f"digits_{f}{s}" for f in FAMILIES for s in ("", "_s1")]
MODELS = BN_MODELS + [f"{m}_folded" for m in BN_MODELS]
CRITERIA = ["bn-variance", "l1"]
THRESHOLDS = [0.0, 0.1, 0.2, 0.3, 0.45, 0.6]
BN_RECOVERY = ["none", "merge", "stats", "merge,stats"]
FOLDED_RECOVERY = ["none", "merge"]
BARS = {0.8: 0.97, 0.7: 0.95}
FOLDED_BAR = 0.90   # at T = 0.8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.7])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    ap.add_argument("--no-sweep", action="store_true", help="only the table at merge_neurons.THRESHOLD")
    args = ap.parse_args()
    _, _, x_test, y_test = load_digits_split(16)
    rows, sweep = [], []
    with tempfile.TemporaryDirectory() as tmp:
        test = os.path.join(tmp, "test.npz")
        np.savez(test, input=x_test, labels=y_test)

        def run(name, target, criterion, recover):
            _, rep = onnxprune.prune(os.path.join(ROOT, "models", f"{name}.onnx"), target_macs=target,
                                     criterion=criterion, eval_data=test, labels_key="labels", recover=recover)
            notes = [n for n in (rep.recovery or {}).get("notes", []) if n.startswith("merge_neurons")]
            return rep, notes

        for name in args.models:
            recovers = FOLDED_RECOVERY if name.endswith("_folded") else BN_RECOVERY
            for target in args.targets:
                for criterion in args.criteria:
                    row = {"model": name, "target_macs": target, "criterion": criterion,
                           "threshold": merge_neurons.THRESHOLD}
                    for recover in recovers:
                        rep, notes = run(name, target, criterion, recover)
                        out = rep.fidelity.outputs[0]
                        row["unpruned"] = out.accuracy_original
                        row["achieved_macs"] = rep.after["macs"] / rep.before["macs"]
                        row[recover] = out.accuracy_pruned
                        if notes:
                            row["merge_note"] = notes[0]
                            row["merged"] = _merged(notes[0])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.no_sweep:
                        continue
                    default = merge_neurons.THRESHOLD
                    for t in args.thresholds:
                        merge_neurons.THRESHOLD = t
                        try:
                            entry = {"model": name, "target_macs": target, "criterion": criterion, "threshold": t,
                                     "none": row["none"]}
                            for recover in (["merge"] if name.endswith("_folded") else ["merge", "merge,stats"]):
                                rep, notes = run(name, target, criterion, recover)
                                entry[recover] = rep.fidelity.outputs[0].accuracy_pruned
                                entry["merged"] = _merged(notes[0]) if notes else 0
                        finally:
                            merge_neurons.THRESHOLD = default
                        sweep.append(entry)
                        print(json.dumps(entry), flush=True)
    out = os.path.join(ROOT, "benchmarks", "results", "accuracy_merge")
    command = "python benchmarks/accuracy_merge.py " + " ".join(sys.argv[1:])
    if args.no_sweep and os.path.exists(out + ".json"):   # keep the sweep of an earlier run
        with open(out + ".json") as f:
            earlier = json.load(f)
        sweep = earlier.get("sweep", [])
        if sweep:
            command += f"  (threshold sweep from an earlier run: {earlier.get('sweep_command', earlier['command'])})"
            sweep_command = earlier.get("sweep_command", earlier["command"])
    else:
        sweep_command = command
    table = _table(rows, args.targets) + ("\n\n" + _sweep_table(sweep, rows) if sweep else "")
    print(table)
    with open(out + ".json", "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "command": command,
                   "threshold": merge_neurons.THRESHOLD, "rows": rows, "sweep": sweep,
                   "sweep_command": sweep_command if sweep else None}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(f"Command: `{command}`\n\n" + table + "\n")


def _merged(note: str) -> int:
    return int(note.split(": ", 1)[1].split()[0])


def _table(rows, targets) -> str:
    cols = BN_RECOVERY
    lines = [f"Merge threshold (cosine) {merge_neurons.THRESHOLD}; `merged`: removed channels merged.", "",
             "| model | T (achieved) | criterion | unpruned | merged | " + " | ".join(cols) + " |",
             "|---|---|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if c in r else "-" for c in cols]
        lines.append(f"| {r['model']} | {r['target_macs']} ({r['achieved_macs']:.3f}) | {r['criterion']} | "
                     f"{r['unpruned']:.3f} | {r.get('merged', '-')} | " + " | ".join(cells) + " |")
    lines += ["", "Mean [min] over the models, and how many reach the bar "
              "(BN kept: >= 97 % at T=0.8, >= 95 % at T=0.7; folded: >= 90 % at T=0.8):", "",
              "| models | criterion | T | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    for kind in ("BN kept", "folded"):
        for criterion in criteria:
            for t in targets:
                sel = [r for r in rows if r["criterion"] == criterion and r["target_macs"] == t
                       and r["model"].endswith("_folded") == (kind == "folded")]
                if not sel:
                    continue
                bar = FOLDED_BAR if kind == "folded" else BARS.get(t)
                cells = []
                for c in cols:
                    accs = [r[c] for r in sel if c in r]
                    if not accs:
                        cells.append("-")
                        continue
                    hit = "" if bar is None or (kind == "folded" and t != 0.8) else \
                        f" ({sum(a >= bar for a in accs)}/{len(accs)})"
                    cells.append(f"{np.mean(accs):.3f} [{np.min(accs):.3f}]{hit}")
                lines.append(f"| {kind} | {criterion} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sweep_table(sweep, rows) -> str:
    """Per threshold, over every (model, target, criterion): mean accuracy of merge (all 16
    files), mean gain over none, how often merge is worse than none by more than 1 pp."""
    lines = ["Threshold sweep (all models, targets and criteria): `merge` vs `none`; "
             "`merge,stats` on the BN-kept models.", "",
             "| threshold | merged channels (total) | merge: mean acc | mean gain over none | "
             "cases worse than none by > 1 pp / better by > 1 pp | merge,stats mean acc (BN kept) |",
             "|---|---|---|---|---|---|"]
    for t in sorted({e["threshold"] for e in sweep}):
        sel = [e for e in sweep if e["threshold"] == t]
        gain = [e["merge"] - e["none"] for e in sel]
        ms = [e["merge,stats"] for e in sel if "merge,stats" in e]
        ms_cell = f"{np.mean(ms):.3f}" if ms else "-"
        lines.append(f"| {t} | {sum(e['merged'] for e in sel)} | {np.mean([e['merge'] for e in sel]):.3f} | "
                     f"{np.mean(gain):+.3f} | {sum(g < -0.01 for g in gain)} / {sum(g > 0.01 for g in gain)} of {len(sel)} | "
                     f"{ms_cell} |")
    base = [r["stats"] for r in rows if "stats" in r]
    if base:
        lines.append(f"\nFor comparison, `stats` alone on the BN-kept models: mean {np.mean(base):.3f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
