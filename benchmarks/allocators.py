"""Budget allocators compared: rank, density (PreCrop, greedy), synexp (PreCrop, continuous
solve + repair) and synexp-weighted (docs/methods.md §4).

    python benchmarks/allocators.py [--models digits_resnet ...] [--targets 0.8 0.6] [--skip-zoo]

(1) Solve time on ResNet-152 (models/zoo.py, exported at 1x3x64x64 as the zoo tier does): the
    synexp program's build and solve alone, and whole allocations by synexp and density at MAC
    target 0.6 with round_to 8 and 1 (median of REPEATS runs), with the Σ log p each reaches
    and whether their plans are the same.
(2) Plans of synexp and density on the digits files of every architecture (ResNet, MobileNet,
    VGG, DenseNet) at MAC targets 0.8, 0.6 and 0.4, round_to 8 and 1 (criterion bn-variance):
    the MAC fraction and Σ log p each reaches.
(3) Accuracy on the trained digits models at each MAC target, for every allocator: 256
    unlabelled TRAIN images calibrate (criterion `auto`, i.e. activation, the synexp-weighted
    sensitivity and the lsq refit read them), the 450 labelled TEST images evaluate; one run
    gives the accuracy without recovery (report.fidelity_unrecovered) and after `lsq`.
    Then the same without calibration data: criterion `auto` (bn-variance), synexp-weighted
    weights from the scores, recovery `stats` (BN statistics; no synthetic images).

Writes benchmarks/results/allocators.{json,md}.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnxprune  # noqa: E402
from onnxprune.api import analyze_model  # noqa: E402
from onnxprune.budget import prunable_groups  # noqa: E402
from onnxprune.cost import CostTracker  # noqa: E402
from onnxprune.density import allocate_density  # noqa: E402
from onnxprune.saliency import score  # noqa: E402
from onnxprune.synexp import allocate_synexp, build_program, solve  # noqa: E402
from accuracy_criteria import digits_data, digits_model_path, study_parser  # noqa: E402
from accuracy_recovery import dump_json, environment, pct  # noqa: E402

COMMAND = "python benchmarks/allocators.py"
MODELS = ["digits_resnet", "digits_resnet_s1", "digits_mobilenet", "digits_mobilenet_s1"]
TARGETS = [0.8, 0.6]
ALLOCATORS = ["rank", "density", "synexp", "synexp-weighted"]
REPEATS = 5


def log_density(model, couplings, removed) -> float:
    """Σ over the layers' weights of log(kept size / size): the objective both PreCrop
    allocators maximise."""
    tracker = CostTracker(model, couplings, fold=False)
    before = tracker.sizes.copy()
    for c in removed:
        tracker.remove(c)
    return float(sum(math.log(tracker.sizes[t] / before[t]) for t, tensor in enumerate(tracker.tensors)
                     if tensor["macs_per_element"]))


def median_time(fn, repeats=REPEATS):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def resnet152_timing(target=0.6):
    from models.export import ZOO, export_onnx
    factory, shape = ZOO["resnet152"]
    model, couplings = analyze_model(export_onnx(factory(), shape))
    scores = score(model, couplings, "bn-variance").values
    groups = prunable_groups(couplings)
    tracker = CostTracker(model, couplings, fold=False)
    build_s, program = median_time(lambda: build_program(tracker, groups, "macs", target, 0.1))
    solve_s, x = median_time(lambda: solve(program))
    rows = []
    for round_to in (8, 1):
        row = {"round_to": round_to, "target_macs": target}
        plans = {}
        for name, fn in (("synexp", allocate_synexp), ("density", allocate_density)):
            seconds, result = median_time(lambda: fn(model, couplings, scores, "macs", target, round_to=round_to))
            plans[name] = result.removed
            row[name] = {"allocate_s": round(seconds, 3), "mac_fraction": round(result.achieved, 4),
                         "log_density": round(log_density(model, couplings, result.removed), 3)}
        row["same_plan"] = plans["synexp"] == plans["density"]
        rows.append(row)
        print(f"ResNet-152 round_to {round_to}: {row}", flush=True)
    return {"groups": len(groups), "terms": len(program.coef), "build_s": round(build_s, 4),
            "solve_s": round(solve_s, 4), "continuous_log_density_bound": round(float(program.a @ x), 3),
            "allocations": rows}


PLAN_MODELS = ["digits_resnet", "digits_mobilenet", "digits_vgg", "digits_densenet"]


def plan_agreement():
    rows = []
    for name in PLAN_MODELS:
        model, couplings = analyze_model(digits_model_path(name))
        scores = score(model, couplings, "bn-variance").values
        for round_to, target in itertools.product((8, 1), (0.8, 0.6, 0.4)):
            row = {"model": name, "round_to": round_to, "target_macs": target}
            plans = {}
            for key, fn in (("synexp", allocate_synexp), ("density", allocate_density)):
                result = fn(model, couplings, scores, "macs", target, round_to=round_to)
                plans[key] = result.removed
                row[key] = {"mac_fraction": round(result.achieved, 4),
                            "log_density": round(log_density(model, couplings, result.removed), 3)}
            row["same_plan"] = plans["synexp"] == plans["density"]
            rows.append(row)
    return rows


def accuracy_run(path, model, target, allocator, feeds, eval_data, n_test):
    """With calibration feeds: recovery lsq; without (data-free): criterion auto is
    bn-variance, synexp-weighted takes its weights from the scores, recovery is stats."""
    start = time.perf_counter()
    recover = "lsq" if feeds is not None else "stats"
    _, report = onnxprune.prune(path, target_macs=target, allocator=allocator, calibration=feeds,
                                eval_data=eval_data, recover=recover)
    f, u = report.fidelity.outputs[0], report.fidelity_unrecovered.outputs[0]
    if f.labelled != n_test:
        raise SystemExit(f"{model}: evaluated {f.labelled} labelled samples, not {n_test}")
    return {"model": model, "target_macs": target, "allocator": allocator, "criterion": report.options["criterion"],
            "data": "calibration" if feeds is not None else "data-free", "recover": recover,
            "round_to": report.options["round_to"], "accuracy_recovered": f.accuracy_pruned,
            "accuracy_none": u.accuracy_pruned, "accuracy_original": f.accuracy_original,
            "mac_fraction": report.after["macs"] / report.before["macs"],
            "allocate_s": report.timings.get("allocate"), "prune_s": round(time.perf_counter() - start, 2),
            "plan_sha1": plan_digest(report.plan.removed)}


def plan_digest(removed: dict) -> str:
    """A short fingerprint of a plan, to tell whether two allocators chose the same one."""
    text = json.dumps({k: sorted(v) for k, v in removed.items()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def accuracy_table(result, data: str) -> list[str]:
    runs = [r for r in result["runs"] if r["data"] == data]
    if not runs:
        return []
    recover = runs[0]["recover"]
    head = " | ".join(f"{a} none / {recover}" for a in result["allocators"])
    lines = [f"{data}, criterion {runs[0]['criterion']}:", "", f"| model | T | {head} |",
             "|---|---|" + "---|" * len(result["allocators"])]
    for model in result["models"]:
        for t in result["targets"]:
            cells = []
            for a in result["allocators"]:
                r = next((r for r in runs if r["model"] == model and r["target_macs"] == t and r["allocator"] == a),
                         None)
                cells.append("-" if r is None else f"{pct(r['accuracy_none'])} / {pct(r['accuracy_recovered'])}")
            lines.append(f"| {model} | {t} | " + " | ".join(cells) + " |")
    same = [r for r in runs if r["allocator"] == "synexp" and any(
        d["allocator"] == "density" and d["model"] == r["model"] and d["target_macs"] == r["target_macs"]
        and d["plan_sha1"] == r["plan_sha1"] for d in runs)]
    if not {"synexp", "density"} <= set(result["allocators"]):
        return lines + [""]
    return lines + ["", f"synexp and density chose the same plan in {len(same)} of "
                    f"{sum(1 for r in runs if r['allocator'] == 'synexp')} (model, target) cells.", ""]


def markdown(result) -> str:
    lines = []
    z = result.get("resnet152")
    if z:
        lines += [f"ResNet-152 ({z['groups']} groups, {z['terms']} posynomial terms): program build "
                  f"{z['build_s'] * 1e3:.0f} ms, solve {z['solve_s'] * 1e3:.0f} ms (median of {REPEATS}); "
                  f"continuous optimum Σ log p = {z['continuous_log_density_bound']}", "",
                  "| round_to | synexp allocate s | density allocate s | synexp Σ log p | density Σ log p "
                  "| MAC fraction (synexp / density) | same plan |", "|---|---|---|---|---|---|---|"]
        for r in z["allocations"]:
            s, d = r["synexp"], r["density"]
            lines.append(f"| {r['round_to']} | {s['allocate_s']:.2f} | {d['allocate_s']:.2f} | {s['log_density']} | "
                         f"{d['log_density']} | {s['mac_fraction']} / {d['mac_fraction']} | {r['same_plan']} |")
        lines.append("")
    agreement = result.get("plans", [])
    if agreement:
        lines += ["| model | round_to | T | synexp MACs / Σ log p | density MACs / Σ log p | same plan |",
                  "|---|---|---|---|---|---|"]
        for r in agreement:
            s, d = r["synexp"], r["density"]
            lines.append(f"| {r['model']} | {r['round_to']} | {r['target_macs']} | {s['mac_fraction']} / "
                         f"{s['log_density']} | {d['mac_fraction']} / {d['log_density']} | {r['same_plan']} |")
        lines.append("")
    for data in ("calibration", "data-free"):
        lines += accuracy_table(result, data)
    return "\n".join(lines).rstrip()


def main(argv=None):
    ap = study_parser(__doc__, MODELS, TARGETS)
    ap.add_argument("--allocators", nargs="+", default=ALLOCATORS)
    ap.add_argument("--skip-zoo", action="store_true", help="leave out the ResNet-152 timing")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    result = {"command": COMMAND, "models": args.models, "targets": args.targets, "allocators": args.allocators,
              "calibration": args.calib, "environment": environment(), "runs": []}
    if not args.skip_zoo:
        result["resnet152"] = resnet152_timing()
    result["plans"] = plan_agreement()
    feeds, eval_data, y_test = digits_data(args.calib)
    os.makedirs(args.out, exist_ok=True)
    for model in args.models:
        path = digits_model_path(model)
        for calibration, target, allocator in itertools.product((feeds, None), args.targets, args.allocators):
            r = accuracy_run(path, model, target, allocator, calibration, eval_data, len(y_test))
            result["runs"].append(r)
            print(f"{model} {r['data']} T={target} {allocator}: none {pct(r['accuracy_none'])} {r['recover']} "
                  f"{pct(r['accuracy_recovered'])} macs {r['mac_fraction']:.3f} ({r['prune_s']:.1f}s)", flush=True)
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    dump_json(result, os.path.join(args.out, "allocators.json"))
    md = markdown(result)
    with open(os.path.join(args.out, "allocators.md"), "w") as f:
        f.write(f"`{COMMAND}`\n\n{md}\n")
    print(md)


if __name__ == "__main__":
    main()
