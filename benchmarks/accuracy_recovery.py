"""Test accuracy after pruning WITH post-pruning recovery on calibration data (docs/methods.md §5).

    python benchmarks/accuracy_recovery.py [--targets 0.8 0.7 0.6 0.5] [--calib 256]
                                           [--sizes 64 1024] [--models digits_resnet ...]
                                           [--out benchmarks/results]

Models: models/digits_{resnet,mobilenet}{,_folded}.onnx (seed 0, `python -m models.default_model
--all`) and models/digits_{resnet,mobilenet}_s1{,_folded}.onnx (seed 1, `python -m
models.digits_seeds`): two trained instances per architecture, BN kept and BN folded. The files
are passed by path, as a user would: their batch is fixed at 1 and their input is "input";
onnxprune runs calibration and evaluation in chunks of that batch.

Data: the fixed split of `models.digits.load_digits_split(16)`. Calibration: the first N images
of a permutation (numpy default_rng(0)) of the 1347 TRAIN images, unlabelled, so 64 ⊂ 256 ⊂ 1024.
Evaluation: the 450 TEST images with their labels, given as `eval_data`, so calibration and
evaluation share no image. Accuracy, the unpruned accuracy and top-1 agreement with the unpruned
model come from `report.fidelity.outputs[0]` (the library's own evaluation).

Every model × target T (fraction of MACs kept) × criterion ∈ {l1, bgsc} × recovery:

    slim, report = onnxprune.prune(path, target_macs=T, criterion=C, calibration=[{"input": x_calib}],
                                   eval_data=[{"input": x_test, "labels": y_test}], recover=R)

    R ∈ {none, means, stats, lsq, stats,lsq} with the library default round_to (16 on AVX-512
    CPUs, 8 otherwise), and R = lsq again with round_to=1 (finest steps). recover="auto" (what
    `--calib` alone gives) is checked to run lsq. The allocator is `rank` (named: with data the
    default is now auto, which would choose a plan per method); everything else is the library
    default (scope, ranking, min_keep 0.1, fold exact).

Optional (--sizes): lsq at T = 0.6 with other calibration sizes (how much data is enough).

Recorded per run: achieved MAC and param fractions (report.after / report.before), accuracy,
top-1 agreement, the accuracy before recovery (report.fidelity_unrecovered), the recovery wall
time (report.timings["recover"]) and the whole prune() wall time. Writes
benchmarks/results/accuracy_recovery.{json,md,png} (`--render` rewrites the .md and .png from the
.json without pruning; the plot needs matplotlib). The recorded run took 68 minutes on 2 cores
shared with other jobs, most of it in the MobileNet's lsq refits (16-25 s each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from onnxprune.budget import default_round_to  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

COMMAND = "python benchmarks/accuracy_recovery.py"
MODELS_COMMAND = "python -m models.default_model --all && python -m models.digits_seeds --seed 1"
FAMILIES = {"resnet": ["digits_resnet", "digits_resnet_s1"], "mobilenet": ["digits_mobilenet", "digits_mobilenet_s1"]}
MODELS = [f"{m}{bn}" for fam in FAMILIES.values() for m in fam for bn in ("", "_folded")]
TARGETS = [0.8, 0.7, 0.6, 0.5]
CRITERIA = ["l1", "bgsc"]
RECOVERIES = ["none", "means", "stats", "lsq", "stats,lsq"]
DEFAULT_RECOVERY = "lsq"          # recover="auto" with calibration data
DEFAULT_CRITERION = "l1"          # prune()'s default criterion
BAR = {0.8: 0.5, 0.7: 0.5, 0.6: 0.5, 0.5: 2.0}   # acceptance: at most this many points below unpruned
CALIB_SEED = 0
# every recovery method is compared on one plan per cell: the allocator is named (with data the
# library's default is auto, which would choose a plan per method; benchmarks/accuracy_defaults.py
# measures that default)
ALLOCATOR = "rank"


def family(model):
    return "resnet" if "resnet" in model else "mobilenet"


def json_info(model):
    stem = model.replace("_folded", "")
    path = os.path.join(ROOT, "models", f"{stem}.json")
    if not os.path.exists(path):
        return None
    info = json.load(open(path))
    return info.get("folded_test_correct" if model.endswith("_folded") else "test_correct")


class Runner:
    def __init__(self, calib_pool, x_test, y_test):
        self.calib_pool, self.eval_data = calib_pool, [{"input": x_test, "labels": y_test}]
        self.n_test = len(y_test)
        self.records = []

    def run(self, model, target, criterion, recover, calib, round_to=None, study="main"):
        path = os.path.join(ROOT, "models", f"{model}.onnx")
        kw = {} if round_to is None else {"round_to": round_to}
        t = time.perf_counter()
        _, report = onnxprune.prune(path, target_macs=target, criterion=criterion, allocator=ALLOCATOR,
                                    calibration=[{"input": self.calib_pool[:calib]}],
                                    eval_data=self.eval_data, recover=recover, **kw)
        wall = time.perf_counter() - t
        f = report.fidelity.outputs[0]
        u = report.fidelity_unrecovered.outputs[0] if report.fidelity_unrecovered is not None else f
        b, a = report.before, report.after
        rec = {"study": study, "model": model, "family": family(model), "bn": "folded" if "_folded" in model else "kept",
               "target_macs": target, "criterion": criterion, "recover": recover,
               "round_to": report.options.get("round_to"), "round_to_arg": round_to, "calibration": calib,
               "methods": report.recovery.get("methods"),
               "accuracy": f.accuracy_pruned, "correct": f.correct_pruned,
               "accuracy_original": f.accuracy_original, "correct_original": f.correct_original,
               "top1_agreement": f.top1_agreement, "mean_cosine": f.mean_cosine,
               "mean_rel_error": f.mean_rel_error, "accuracy_unrecovered": u.accuracy_pruned,
               "drop_pp": 100 * (f.accuracy_original - f.accuracy_pruned),
               "macs_before": b["macs"], "macs_after": a["macs"], "mac_fraction": a["macs"] / b["macs"],
               "params_before": b["params"], "params_after": a["params"], "param_fraction": a["params"] / b["params"],
               "recover_s": report.timings.get("recover"), "evaluate_s": report.timings.get("evaluate"),
               "prune_s": round(wall, 3),
               "recovery_notes": [n for n in report.recovery.get("notes", []) if not n.startswith("fidelity:")]}
        if f.labelled != self.n_test:
            raise SystemExit(f"{model}: the library evaluated {f.labelled} labelled samples, not {self.n_test}")
        self.records.append(rec)
        return rec


def find(records, **kw):
    out = [r for r in records if all(r.get(k) == v for k, v in kw.items())]
    return out[0] if out else None


def pct(x):
    return f"{100 * x:.1f}"


# -- markdown --------------------------------------------------------------------------------
def headline(result):
    """Default recovery (lsq, default round_to) per model × target, for both criteria, vs unpruned."""
    recs, targets = result["runs"], result["targets"]
    lines = ["| model | unpruned | criterion | " + " | ".join(f"T={t}" for t in targets) + " | bar met |",
             "|---|---|---|" + "---|" * len(targets) + "---|"]
    for model in result["models"]:
        base = result["baselines"][model]["accuracy"]
        for crit in result["criteria"]:
            cells, ok = [], 0
            for t in targets:
                r = find(recs, study="main", model=model, target_macs=t, criterion=crit, recover=DEFAULT_RECOVERY,
                         round_to_arg=None)
                if r is None:
                    cells.append("—")
                    continue
                met = r["drop_pp"] <= BAR.get(t, 0.5) + 1e-9
                ok += met
                cells.append(f"{'**' if met else ''}{pct(r['accuracy'])}{'**' if met else ''} ({r['mac_fraction']:.2f})")
            lines.append(f"| {model} | {pct(base)} | {crit} | " + " | ".join(cells) + f" | {ok}/{len(targets)} |")
    return lines


def full_tables(result):
    recs, targets = result["runs"], result["targets"]
    lines = []
    for model in result["models"]:
        base = result["baselines"][model]
        lines += [f"### {model}", "",
                  f"Unpruned: {pct(base['accuracy'])} % ({base['correct']}/{result['test_samples']}). "
                  "Cells: accuracy % / top-1 agreement % (achieved MAC fraction); recovery seconds in the last column "
                  "(median over targets).", "",
                  "| criterion | recovery | round_to | " + " | ".join(f"T={t}" for t in targets) + " | recover s |",
                  "|---|---|---|" + "---|" * len(targets) + "---|"]
        for crit in result["criteria"]:
            for rec, rt in [(r, None) for r in result["recoveries"]] + [(DEFAULT_RECOVERY, 1)]:
                rows = [find(recs, study="main", model=model, target_macs=t, criterion=crit, recover=rec,
                             round_to_arg=rt) for t in targets]
                cells = ["—" if r is None else f"{pct(r['accuracy'])} / {pct(r['top1_agreement'])} ({r['mac_fraction']:.2f})"
                         for r in rows]
                secs = [r["recover_s"] for r in rows if r is not None]
                rt_label = rows[0]["round_to"] if rows[0] is not None else "?"
                tail = f" | {np.median(secs):.2f} |" if secs else " | — |"
                lines.append(f"| {crit} | {rec} | {rt_label} | " + " | ".join(cells) + tail)
        lines.append("")
    return lines


def method_summary(result):
    """Per recovery method and criterion: mean accuracy over the 8 files, per target."""
    recs, targets = result["runs"], result["targets"]
    lines = ["| criterion | recovery | round_to | " + " | ".join(f"T={t}" for t in targets) +
             " | model×target cells meeting the bar | median recover s |",
             "|---|---|---|" + "---|" * len(targets) + "---|---|"]
    for crit in result["criteria"]:
        for rec, rt in [(r, None) for r in result["recoveries"]] + [(DEFAULT_RECOVERY, 1)]:
            cells, met, n, secs = [], 0, 0, []
            for t in targets:
                rows = [r for r in recs if r["study"] == "main" and r["target_macs"] == t and r["criterion"] == crit
                        and r["recover"] == rec and r["round_to_arg"] == rt]
                acc = [r["accuracy"] for r in rows]
                cells.append(f"{pct(np.mean(acc))} [{pct(min(acc))}–{pct(max(acc))}]" if acc else "—")
                met += sum(r["drop_pp"] <= BAR.get(t, 0.5) + 1e-9 for r in rows)
                n += len(rows)
                secs += [r["recover_s"] for r in rows]
            rt_label = "default" if rt is None else str(rt)
            lines.append(f"| {crit} | {rec} | {rt_label} | " + " | ".join(cells) + f" | {met}/{n} | "
                         f"{np.median(secs):.2f} |")
    return lines


def criterion_compare(result):
    """l1 vs bgsc with recovery: per recovery method, mean accuracy difference and wins."""
    recs = result["runs"]
    lines = ["| recovery | round_to | mean l1 | mean bgsc | l1 better | bgsc better | tie | per family: l1 − bgsc (pp) |",
             "|---|---|---|---|---|---|---|---|"]
    for rec, rt in [(r, None) for r in result["recoveries"]] + [(DEFAULT_RECOVERY, 1)]:
        pairs = []
        for model in result["models"]:
            for t in result["targets"]:
                a = find(recs, study="main", model=model, target_macs=t, criterion="l1", recover=rec, round_to_arg=rt)
                b = find(recs, study="main", model=model, target_macs=t, criterion="bgsc", recover=rec, round_to_arg=rt)
                if a and b:
                    pairs.append((model, a["accuracy"], b["accuracy"]))
        if not pairs:
            continue
        l1 = np.array([p[1] for p in pairs])
        bg = np.array([p[2] for p in pairs])
        fam = []
        for name in FAMILIES:
            d = [100 * (p[1] - p[2]) for p in pairs if family(p[0]) == name]
            fam.append(f"{name} {np.mean(d):+.1f}")
        lines.append(f"| {rec} | {'default' if rt is None else rt} | {pct(l1.mean())} | {pct(bg.mean())} | "
                     f"{int(np.sum(l1 > bg))} | {int(np.sum(bg > l1))} | {int(np.sum(l1 == bg))} | {', '.join(fam)} |")
    return lines


def sizes_table(result):
    recs = [r for r in result["runs"] if r["study"] == "sizes" or
            (r["study"] == "main" and r["target_macs"] == result["sizes_target"] and r["recover"] == DEFAULT_RECOVERY
             and r["round_to_arg"] is None)]
    sizes = sorted({r["calibration"] for r in recs})
    if len(sizes) < 2:
        return []
    lines = ["| model | criterion | " + " | ".join(f"{n} images" for n in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for model in result["models"]:
        for crit in result["criteria"]:
            cells = []
            for n in sizes:
                r = [x for x in recs if x["model"] == model and x["criterion"] == crit and x["calibration"] == n]
                cells.append(f"{pct(r[0]['accuracy'])} ({r[0]['recover_s']:.1f} s)" if r else "—")
            lines.append(f"| {model} | {crit} | " + " | ".join(cells) + " |")
    return lines


def markdown(result):
    lines = ["# Digits accuracy after pruning with recovery on calibration data", "",
             f"Regenerate: `{COMMAND}` (models: `{MODELS_COMMAND}`).", "",
             f"Calibration: {result['calibration']} unlabelled TRAIN images (numpy default_rng({CALIB_SEED}) "
             f"permutation, first N). Evaluation: the {result['test_samples']} TEST images with labels "
             f"(1 image = {100 / result['test_samples']:.2f} pp), passed as `eval_data`. Library default round_to "
             f"on this machine: {result['default_round_to']}. Default recovery with `--calib`: "
             f"`{result['auto_methods']}`. Acceptance bar: at most "
             + ", ".join(f"{v} pp below unpruned at T={k}" for k, v in BAR.items()) + ".", "",
             "Recovery seconds: `report.timings[\"recover\"]`, wall time on the machine that ran the script (shared "
             "cores make them noisy: compare them within one run only).", "",
             "## Default recovery (lsq, default round_to): accuracy % (achieved MAC fraction); bold = bar met", "",
             "A cell whose achieved MAC fraction is above its target could not go lower with that round_to "
             "(groups narrower than two steps stay whole).", ""]
    lines += headline(result) + ["", "## Per recovery method, mean over the 8 files [min–max]", ""]
    lines += method_summary(result) + ["", "## l1 vs bgsc with recovery (8 files × 4 targets)", ""]
    lines += criterion_compare(result) + [""]
    sizes = sizes_table(result)
    if sizes:
        lines += [f"## Calibration size, lsq at T={result['sizes_target']} (default round_to): accuracy % "
                  "(recovery seconds)", ""] + sizes + [""]
    lines += ["## Every run", ""] + full_tables(result)
    return "\n".join(lines)


# -- plot ----------------------------------------------------------------------------------------
STYLE = {"none": ("tab:gray", "x"), "means": ("tab:orange", "v"), "stats": ("tab:green", "s"),
         "lsq": ("tab:blue", "o"), "stats,lsq": ("tab:purple", "D"), "lsq r1": ("tab:cyan", "^")}


def _series(main, fam, crit, rec, rt, targets):
    xs, ys, lo, hi = [], [], [], []
    for t in targets:
        rows = [r for r in main if r["family"] == fam and r["criterion"] == crit and r["recover"] == rec
                and r["round_to_arg"] == rt and r["target_macs"] == t]
        if rows:
            acc = [100 * r["accuracy"] for r in rows]
            xs.append(np.mean([r["mac_fraction"] for r in rows]))
            ys.append(np.mean(acc))
            lo.append(min(acc))
            hi.append(max(acc))
    return xs, ys, lo, hi


def plot(result, path):
    """Rows: model families. Columns: l1 and bgsc at full scale (every recovery), then a zoom
    on the top 4 points with the lsq variants of both criteria. Lines: mean over the 4 files
    of the family (2 seeds x BN kept/folded); bands: min-max."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams, crits = list(FAMILIES), result["criteria"]
    variants = [(r, None) for r in result["recoveries"]] + [(DEFAULT_RECOVERY, 1)]
    fig, axes = plt.subplots(len(fams), len(crits) + 1, figsize=(5.6 * (len(crits) + 1), 4.6 * len(fams)),
                             squeeze=False)
    main = [r for r in result["runs"] if r["study"] == "main"]
    for i, fam in enumerate(fams):
        base = np.mean([result["baselines"][m]["accuracy"] for m in result["models"] if family(m) == fam])
        for j, crit in enumerate(crits):
            ax = axes[i][j]
            ax.axhline(100 * base, color="k", lw=0.8, ls="--", label="unpruned (mean)")
            ax.axhline(10, color="k", lw=0.6, ls=":", alpha=0.5)
            for rec, rt in variants:
                label = rec if rt is None else f"{rec} r{rt}"
                color, marker = STYLE.get(label, (None, "o"))
                xs, ys, lo, hi = _series(main, fam, crit, rec, rt, result["targets"])
                if xs:
                    ax.plot(xs, ys, color=color, marker=marker, ls="--" if rt else "-", label=label)
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.12)
            ax.set_title(f"{fam}, {crit}: mean of 2 seeds x BN kept/folded, band = min-max", fontsize=9)
            ax.set_ylim(0, 102)
            ax.legend(fontsize=7, loc="lower left")
        ax = axes[i][len(crits)]
        ax.axhline(100 * base, color="k", lw=0.8, ls="--", label="unpruned (mean)")
        for crit, ls in zip(crits, ["-", ":"]):
            for rec, rt in variants:
                if rec == "lsq":
                    label = f"{crit} {rec}" + (f" r{rt}" if rt else "")
                    color, marker = STYLE.get("lsq r1" if rt else "lsq")
                    xs, ys, lo, hi = _series(main, fam, crit, rec, rt, result["targets"])
                    ax.plot(xs, ys, color=color if crit == crits[0] else ("tab:red" if rt is None else "tab:pink"),
                            marker=marker, ls=ls, label=label)
                    ax.fill_between(xs, lo, hi, color=ax.lines[-1].get_color(), alpha=0.10)
        ax.set_title(f"{fam}: zoom on lsq (default recovery), both criteria", fontsize=9)
        ax.set_ylim(96, 100.5)
        ax.legend(fontsize=7, loc="lower left")
        for ax in axes[i]:
            ax.set_xlabel("achieved MAC fraction (mean)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_xlim(0.85, 0.45)
            ax.grid(alpha=0.3)
    fig.suptitle(f"digits (450 test images): pruning + recovery on {result['calibration']} unlabelled train images",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--targets", nargs="+", type=float, default=TARGETS)
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--recoveries", nargs="+", default=RECOVERIES)
    ap.add_argument("--calib", type=int, default=256, help="calibration images (default 256)")
    ap.add_argument("--sizes", nargs="*", type=int, default=[64, 1024],
                    help="extra calibration sizes for lsq at --sizes-target (none: skip)")
    ap.add_argument("--sizes-target", type=float, default=0.6)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--render", action="store_true",
                    help="prune nothing: rewrite the .md and .png from the .json in --out")
    args = ap.parse_args(argv)
    if args.render:
        result = json.load(open(os.path.join(args.out, "accuracy_recovery.json")))
        return write(result, args.out)
    start = time.perf_counter()
    x_train, _, x_test, y_test = load_digits_split(16)
    pool = x_train[np.random.default_rng(CALIB_SEED).permutation(len(x_train))]
    if max([args.calib] + list(args.sizes)) > len(pool):
        sys.exit(f"at most {len(pool)} calibration images (the train split)")
    runner = Runner(pool, x_test, y_test)

    for model in args.models:
        if not os.path.exists(os.path.join(ROOT, "models", f"{model}.onnx")):
            sys.exit(f"models/{model}.onnx is missing: run `{MODELS_COMMAND}` first")
    # recover="auto" with calibration data is the default recovery
    _, rep = onnxprune.prune(os.path.join(ROOT, "models", f"{args.models[0]}.onnx"), target_macs=0.8,
                             calibration=[{"input": pool[:args.calib]}], eval_data=runner.eval_data)
    auto_methods = ",".join(rep.recovery["methods"])
    if auto_methods != DEFAULT_RECOVERY:
        print(f"NOTE: recover='auto' ran {auto_methods!r}, not {DEFAULT_RECOVERY!r}")

    baselines = {}
    for model in args.models:
        t0 = time.perf_counter()
        for target in args.targets:
            for crit in args.criteria:
                for rec in args.recoveries:
                    runner.run(model, target, crit, rec, args.calib)
                runner.run(model, target, crit, DEFAULT_RECOVERY, args.calib, round_to=1)
        for crit in args.criteria:
            for n in args.sizes:
                runner.run(model, args.sizes_target, crit, DEFAULT_RECOVERY, n, study="sizes")
        mine = [r for r in runner.records if r["model"] == model]
        correct = {r["correct_original"] for r in mine}
        if len(correct) != 1:
            sys.exit(f"{model}: the unpruned accuracy varies between runs: {correct}")
        correct = correct.pop()
        recorded = json_info(model)
        if recorded is not None and recorded != correct:
            sys.exit(f"{model}: library-evaluated unpruned accuracy {correct} != {recorded} in models/*.json")
        baselines[model] = {"correct": correct, "accuracy": correct / len(y_test), "recorded_correct": recorded,
                            "macs": mine[0]["macs_before"], "params": mine[0]["params_before"]}
        for r in mine:   # plain pruning measured twice: recover="none" and fidelity_unrecovered
            none = find(runner.records, model=model, target_macs=r["target_macs"], criterion=r["criterion"],
                        recover="none", round_to_arg=None, study="main")
            if r["round_to_arg"] is None and none is not None and r["accuracy_unrecovered"] != none["accuracy"]:
                print(f"WARNING {model} {r['criterion']} T={r['target_macs']} {r['recover']}: unrecovered accuracy "
                      f"{r['accuracy_unrecovered']} != recover='none' {none['accuracy']}")
        print(f"{model}: unpruned {correct}/{len(y_test)}, {len(mine)} prunes in {time.perf_counter() - t0:.1f}s",
              flush=True)

    result = {
        "command": COMMAND, "models_command": MODELS_COMMAND, "models": args.models, "targets": args.targets,
        "criteria": args.criteria, "recoveries": args.recoveries, "calibration": args.calib,
        "calibration_source": f"load_digits_split(16) train split, default_rng({CALIB_SEED}).permutation, first N",
        "sizes": args.sizes, "sizes_target": args.sizes_target, "test_samples": len(y_test),
        "default_round_to": default_round_to(), "auto_methods": auto_methods, "bar_pp": {str(k): v for k, v in BAR.items()},
        "baselines": baselines,
        "environment": environment(),
        "runs": runner.records,
    }
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    os.makedirs(args.out, exist_ok=True)
    dump_json(result, os.path.join(args.out, "accuracy_recovery.json"))
    write(result, args.out)


def environment() -> dict:
    """The versions and machine a study ran with (shared by the digits studies)."""
    try:   # the default recovery with data fits end to end only where torch is installed
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"python": platform.python_version(), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "numpy": np.__version__, "onnxprune": getattr(onnxprune, "__version__", "?"), "cpus": os.cpu_count(),
            "torch": torch_version}


def dump_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def record(result: dict, name: str, text: str) -> None:
    """benchmarks/results/<name>.json (the result) and .md (`text`, also printed)."""
    out = os.path.join(ROOT, "benchmarks", "results", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    dump_json(result, out + ".json")
    with open(out + ".md", "w") as f:
        f.write(text)
    print(text)


def write(result, out):
    md = markdown(result)
    with open(os.path.join(out, "accuracy_recovery.md"), "w") as f:
        f.write(md + "\n")
    plotted = plot(result, os.path.join(out, "accuracy_recovery.png"))
    print()
    print(md)
    print(f"wrote {os.path.join(out, 'accuracy_recovery.json')}, accuracy_recovery.md"
          + (", accuracy_recovery.png" if plotted else "") + f" in {result['elapsed_s']}s")
    print(f"regenerate: {COMMAND}")


if __name__ == "__main__":
    main()
