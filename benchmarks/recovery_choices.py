"""Two levers for the with-data default, measured on the trained digits models: which channel
criterion, and how strong the least-squares ridge.

    python benchmarks/recovery_choices.py [--study criteria ridge] [--round-to 16]
                                          [--models ...] [--targets 0.8 0.7 0.6 0.5] [--name NAME]

Every cell is `onnxprune.prune(path, target_macs=T, round_to=R, calibration=256 TRAIN images)`,
the default with data (allocator auto, recovery lsq, a fifth of the images held out by the
library), scored afterwards on the 450 labelled TEST images; no test image reaches the library.

- criteria: the same prune with each criterion that can read the data (`activation`, the
  default, `lsq-aware`, `fluctuation`) and two that do not (`l1`, `bgsc`). Next to them,
  "by held-out error": per cell, the criterion whose kept plan has the lowest held-out mean
  relative error (report.fidelity), which is what an `auto` choosing the criterion too
  would keep; and "oracle": the best by TEST accuracy, which no user can run.
- ridge: the default prune with the refit's relative ridge λ (passes/reconstruct.py RIDGE)
  set to 1e-3 (the library's), 1e-2 and 1e-1 (the module constant is set for the run).

Bar: within 0.5 points of unpruned at T 0.8, 0.7, 0.6, within 2 at 0.5. One image is 0.22
points. Writes benchmarks/results/<NAME>.{json,md} (default recovery_choices).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnxprune.passes.reconstruct as reconstruct  # noqa: E402
from accuracy_criteria import digits_data, digits_model_path  # noqa: E402
from accuracy_defaults import DATA_MODELS, run as defaults_run  # noqa: E402
from accuracy_recovery import BAR, environment, record  # noqa: E402

CRITERIA = ["activation", "lsq-aware", "fluctuation", "l1", "bgsc"]
RIDGES = [1e-3, 1e-2, 1e-1]


def run(path, target, round_to, calibration, test, ridge, **options) -> dict:
    """accuracy_defaults.run with the refit's ridge set for the run; accuracies in %."""
    default_ridge, reconstruct.RIDGE = reconstruct.RIDGE, ridge
    try:
        r = defaults_run(path, target, round_to, calibration, test, **options)
    finally:
        reconstruct.RIDGE = default_ridge
    return {"accuracy": 100 * r["accuracy"], "unpruned": 100 * r["unpruned"],
            "held_out_error": r["held_out_error"], "macs": r["macs"]}


def meets(row) -> bool:
    return row["unpruned"] - row["accuracy"] <= BAR[row["target"]] + 1e-9


def variants(study):
    """(name, ridge, prune options) of each variant."""
    if study == "criteria":
        return [(c, reconstruct.RIDGE, {"criterion": c}) for c in CRITERIA]
    return [(f"ridge {r:g}", r, {}) for r in RIDGES]


def summary(rows, study) -> list[str]:
    """Per variant: cells meeting the bar and mean test accuracy; for criteria also the
    choice by held-out error and the test-label oracle."""
    cells = {}
    for r in rows:
        if r["study"] == study:
            cells.setdefault((r["round_to"], r["model"], r["target"]), {})[r["variant"]] = r
    names = [v for v, _, _ in variants(study)]
    full = [c for c in cells.values() if all(n in c for n in names)]
    if not full:
        return []
    picks = {n: [c[n] for c in full] for n in names}
    if study == "criteria":
        picks["by held-out error"] = [min(c.values(), key=lambda r: r["held_out_error"]) for c in full]
        picks["oracle (test labels)"] = [max(c.values(), key=lambda r: r["accuracy"]) for c in full]
    lines = [f"\n## {study}: {len(full)} cells (models x targets x round_to)\n",
             "| variant | cells meeting the bar | mean test accuracy % |", "|---|---|---|"]
    for name, chosen in picks.items():
        lines.append(f"| {name} | {sum(map(meets, chosen))}/{len(chosen)} | "
                     f"{sum(r['accuracy'] for r in chosen) / len(chosen):.2f} |")
    lines += ["", "| model | round_to | T | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (rt, model, t), c in sorted(cells.items()):
        shown = [(f"{c[n]['accuracy']:.1f} / {c[n]['held_out_error']:.3f}" + ("" if meets(c[n]) else " ✗"))
                 if n in c else "—" for n in names]
        lines.append(f"| {model} | {rt} | {t} | " + " | ".join(shown) + " |")
    return lines


def markdown(result) -> str:
    lines = ["# Criterion and ridge, with 256 calibration images\n",
             f"`{result['command']}`, {result['date']}. Cells: test accuracy % / held-out mean relative "
             "error (the library's own measure, on its held-out fifth of the calibration images); "
             "✗ = bar missed."]
    for study in ("criteria", "ridge"):
        lines += summary(result["rows"], study)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", nargs="+", choices=["criteria", "ridge"], default=["criteria", "ridge"])
    ap.add_argument("--round-to", type=int, nargs="+", default=[16])
    ap.add_argument("--models", nargs="+", default=DATA_MODELS)
    ap.add_argument("--targets", nargs="+", type=float, default=[0.8, 0.7, 0.6, 0.5])
    ap.add_argument("--name", default="recovery_choices", help="output file name in benchmarks/results")
    args = ap.parse_args(argv)
    calibration, test, _ = digits_data(256)
    rows = []
    for study in args.study:
        for rt in args.round_to:
            for model in args.models:
                path = digits_model_path(model)
                for t in args.targets:
                    for name, ridge, options in variants(study):
                        row = run(path, t, rt, calibration, test, ridge, **options)
                        row.update(study=study, variant=name, model=model, round_to=rt, target=t)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    result = {"command": "python benchmarks/recovery_choices.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), **environment(), "rows": rows}
    record(result, args.name, markdown(result))


if __name__ == "__main__":
    main()
