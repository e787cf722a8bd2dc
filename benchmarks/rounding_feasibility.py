"""Can any plan at the default rounding meet the with-data accuracy bar? Every plan, tried.

    python benchmarks/rounding_feasibility.py [--models digits_resnet digits_resnet_s1]
                                              [--targets 0.7 0.6 0.5] [--window 0.05]

The digits ResNets have six prunable groups of 16, 16, 32, 32, 64 and 64 channels. At
`--round-to 16` (the default on this AVX-512 machine) each group keeps a multiple of 16, so
there are only 1 x 1 x 2 x 2 x 4 x 4 = 64 plans. This script builds each of them (within a
group, the channels the `activation` criterion ranks lowest go, as in the default prune),
keeps those whose MACs lie in [T - window, T], and prunes with each one exactly as the
default does with calibration data (256 unlabelled TRAIN images, lsq recovery), scoring
the 450 labelled TEST images. The best plan is chosen by TEST accuracy: an upper bound on
what any allocator could reach at that rounding, not something a user could run. Next to
it, what the default allocator (`target_macs=T`, same data) reaches.

Writes benchmarks/results/rounding_feasibility.{json,md}.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import analyze_model  # noqa: E402
from onnxprune.budget import CostTracker, default_round_to, floor_of, prunable_groups  # noqa: E402
from onnxprune.calibration import load_calibration, model_inputs  # noqa: E402
from onnxprune.plan import plan_from_classes  # noqa: E402
from onnxprune.recover import batches_of  # noqa: E402
from onnxprune.saliency import CalibrationData, score  # noqa: E402
from accuracy_criteria import digits_data, digits_model_path  # noqa: E402
from accuracy_recovery import BAR, dump_json, environment  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "rounding_feasibility")


def plans(model, couplings, scores, step: int):
    """Every rounded plan: (kept counts per group, removed classes, MAC fraction)."""
    groups = prunable_groups(couplings)
    options = [[k for k in range(step, g.width + 1, step) if k >= floor_of(g.width, 0.1)] or [g.width]
               for g in groups]
    for kept in itertools.product(*options):
        removed = set()
        for g, k in zip(groups, kept):
            order = g.classes[np.argsort(scores[g.classes], kind="stable")]
            removed.update(order[:g.width - k].tolist())
        tracker = CostTracker(model, couplings, True)
        for c in removed:
            tracker.remove(c)
        yield list(kept), removed, tracker.macs / tracker.macs0


def accuracy(report) -> float:
    return 100 * report.fidelity.outputs[0].accuracy_pruned


def study(name: str, targets, window: float, step: int, feeds, eval_data) -> list[dict]:
    path = digits_model_path(name)
    model, couplings = analyze_model(path)
    calib = load_calibration(feeds, model_inputs(model.to_proto()))
    scores = score(model, couplings, "activation", 0, CalibrationData(batches_of(model, calib), len(calib))).values
    every = list(plans(model, couplings, scores, step))
    rows = []
    for t in targets:
        _, default = onnxprune.prune(path, target_macs=t, calibration=feeds, eval_data=eval_data, recover="lsq")
        tried = []
        for kept, removed, macs in every:
            if t - window <= macs <= t + 1e-9:
                _, r = onnxprune.prune(path, plan=plan_from_classes(couplings, removed), calibration=feeds,
                                       eval_data=eval_data, recover="lsq")
                tried.append({"kept": kept, "macs": round(macs, 4), "accuracy": accuracy(r)})
        unpruned = 100 * default.fidelity.outputs[0].accuracy_original
        best = max(tried, key=lambda p: p["accuracy"], default=None)
        rows.append({"model": name, "target": t, "unpruned": unpruned, "bar_pp": BAR[t],
                     "plans_total": len(every), "plans_in_window": len(tried),
                     "lowest_macs": round(min(m for _, _, m in every), 4), "best": best,
                     "best_meets_bar": best is not None and unpruned - best["accuracy"] <= BAR[t] + 1e-9,
                     "default": {"macs": round(default.after["macs"] / default.before["macs"], 4),
                                 "accuracy": accuracy(default)}, "tried": tried})
        found = f"best {best['accuracy']:.1f} {best['kept']}" if best else "none"
        print(f"{name} T={t}: {len(tried)} plans in [{t - window:.2f}, {t}]; {found}; default "
              f"{accuracy(default):.1f} at {rows[-1]['default']['macs']:.3f} (unpruned {unpruned:.1f}, bar {BAR[t]})",
              flush=True)
    return rows


def markdown(result) -> str:
    lines = [f"Plans at --round-to {result['round_to']}, MACs in [T - {result['window']}, T]; best by TEST "
             "accuracy (an upper bound: no allocator sees the test labels).", "",
             "| model | T | unpruned | plans in window / all | best plan (kept per group): accuracy, MACs | "
             "meets the bar | default allocator: accuracy, MACs |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        b = r["best"]
        best = f"{b['kept']}: {b['accuracy']:.1f}, {b['macs']:.3f}" if b else f"none (lowest MACs {r['lowest_macs']:.3f})"
        lines.append(f"| {r['model']} | {r['target']} | {r['unpruned']:.1f} | {r['plans_in_window']} / "
                     f"{r['plans_total']} | {best} | {'yes' if r['best_meets_bar'] else 'no'} | "
                     f"{r['default']['accuracy']:.1f}, {r['default']['macs']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits_resnet", "digits_resnet_s1"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.6, 0.5])
    ap.add_argument("--window", type=float, default=0.05)
    args = ap.parse_args()
    step = default_round_to()
    feeds, eval_data, _ = digits_data(256)
    start = time.time()
    rows = [row for name in args.models for row in study(name, args.targets, args.window, step, feeds, eval_data)]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "round_to": step, "window": args.window,
              "environment": environment(), "seconds": round(time.time() - start, 1), "rows": rows}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    dump_json(result, OUT + ".json")
    with open(OUT + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
