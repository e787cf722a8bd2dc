"""Test accuracy after pruning with channels chosen from calibration data (docs/methods.md §5.4).

    python benchmarks/accuracy_criteria.py [--models digits_resnet ...] [--targets 0.8 0.7 0.6 0.5]
                                           [--configs l1 bgsc activation ...] [--out benchmarks/results]

Same models, data and bar as benchmarks/accuracy_recovery.py: 256 unlabelled TRAIN images calibrate
(the criteria, the sensitivity allocator and the lsq refit all read them), the 450 labelled TEST
images evaluate. Every model × target T (fraction of MACs kept) × config runs

    onnxprune.prune(path, target_macs=T, criterion=C, allocator=A, calibration=..., eval_data=...,
                    recover="lsq")

with the library defaults otherwise (round_to, scope, ranking, min_keep 0.1, fold exact). One run
gives both columns: accuracy after the lsq refit (report.fidelity) and without recovery
(report.fidelity_unrecovered, the same pruned model before the refit).

Configs: a criterion name (allocator rank), `sens:<criterion>` (allocator sensitivity, the criterion
picks the channels), `heatmap@<r>` (the heatmap criterion at cumulative mass r, registered by this
script for the study); a suffix `/global` or `/local` sets the scope, and `+<methods>` (e.g.
`+means`) runs that recovery instead of lsq (the "lsq" columns then hold that recovery); with
`+auto` the TEST images are not passed to the library (see `_calibration_only`). `--plans-only MODEL...` compares the plans of the data criteria on a model and
its BN-folded twin instead of pruning (they read the feed-outs' inputs, which folding does not change).

Writes benchmarks/results/accuracy_criteria.{json,md} (after every model, so a partial run is kept;
runs of (model, config) pairs not asked for are kept from an earlier .json); `--render` rewrites the .md.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnx  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.calibration import load_calibration, model_inputs  # noqa: E402
from onnxprune.fidelity import evaluate  # noqa: E402
from onnxprune.budget import default_round_to  # noqa: E402
from onnxprune.saliency import CRITERIA  # noqa: E402
from onnxprune.saliency.heatmap import DEFAULT_MASS, heatmap  # noqa: E402
from accuracy_recovery import BAR, CALIB_SEED, MODELS_COMMAND, dump_json, environment, family, pct  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

COMMAND = "python benchmarks/accuracy_criteria.py"
MODELS = ["digits_resnet", "digits_resnet_s1", "digits_mobilenet", "digits_mobilenet_s1"]
TARGETS = [0.8, 0.7, 0.6, 0.5]
CONFIGS = ["l1", "bgsc", "activation", "fluctuation", "lsq-aware", "heatmap", "heatmap@0.9", "sens:l1"]
DATA_CRITERIA = ["activation", "fluctuation", "heatmap", "lsq-aware"]


def criterion_and_allocator(config: str) -> tuple[str, str]:
    config = config.split("+")[0].split("/")[0]
    if config.startswith("sens:"):
        return config[5:], "sensitivity"
    if "@" in config and config not in CRITERIA:   # heatmap at another mass, for this study only
        r = float(config.split("@")[1])
        fn = functools.partial(heatmap, mass=r)
        fn.needs_data = True
        CRITERIA[config] = fn
    return config, "rank"


def scope_and_recovery(config: str) -> tuple[str | None, str]:
    """`<config>/global` or `/local` sets the scope (else the criterion's default);
    `<config>+means` (any recover value) replaces the lsq refit."""
    head, _, recover = config.partition("+")
    _, _, scope = head.partition("/")
    return scope or None, recover or "lsq"


def run(path, model, target, config, feeds, eval_data, n_test):
    crit, alloc = criterion_and_allocator(config)
    scope, recover = scope_and_recovery(config)
    t = time.perf_counter()
    if recover == "auto":
        report, f, u = _calibration_only(path, target, crit, alloc, scope, feeds, eval_data)
    else:
        _, report = onnxprune.prune(path, target_macs=target, criterion=crit, allocator=alloc, calibration=feeds,
                                    eval_data=eval_data, recover=recover, scope=scope)
        f, u = report.fidelity.outputs[0], report.fidelity_unrecovered.outputs[0]
    wall = time.perf_counter() - t
    if f.labelled != n_test:
        raise SystemExit(f"{model}: evaluated {f.labelled} labelled samples, not {n_test}")
    return {"model": model, "family": family(model), "target_macs": target, "config": config,
            "criterion": crit, "allocator": alloc, "round_to": report.options["round_to"],
            "accuracy": f.accuracy_pruned, "accuracy_none": u.accuracy_pruned,
            "accuracy_original": f.accuracy_original, "top1_agreement": f.top1_agreement,
            "drop_pp": 100 * (f.accuracy_original - f.accuracy_pruned),
            "drop_none_pp": 100 * (u.accuracy_original - u.accuracy_pruned),
            "mac_fraction": report.after["macs"] / report.before["macs"],
            "param_fraction": report.after["params"] / report.before["params"],
            "score_s": report.timings.get("score"), "allocate_s": report.timings.get("allocate"),
            "recover_s": report.timings.get("recover"), "prune_s": round(wall, 3),
            "notes": [n for n in report.notes if n.startswith(crit + ":") or n.startswith("sensitivity:")]}


def _calibration_only(path, target, crit, alloc, scope, feeds, eval_data):
    """`+auto`: what a user with only calibration data gets. The TEST images never reach the
    library (it holds out a fifth of the calibration images for its own fidelity check and
    for auto recovery's choice); both models are scored on them afterwards."""
    kw = dict(target_macs=target, criterion=crit, allocator=alloc, calibration=feeds, scope=scope)
    slim, report = onnxprune.prune(path, recover="auto", **kw)
    bare, _ = onnxprune.prune(path, recover="none", **kw)
    f, u = (evaluate(path, m, load_calibration(eval_data, model_inputs(onnx.load(path)))).outputs[0]
            for m in (slim, bare))
    return report, f, u


def compare_plans(models, feeds):
    """Data criteria read the feed-outs' inputs: BN folding should not change their plans."""
    out = []
    for model in models:
        for config in DATA_CRITERIA + ["sens:fluctuation"]:
            crit, alloc = criterion_and_allocator(config)
            plans = []
            for name in (model, f"{model}_folded"):
                plan, _ = onnxprune.plan(os.path.join(ROOT, "models", f"{name}.onnx"), target_macs=0.6, criterion=crit,
                                         allocator=alloc, calibration=feeds, eval_data=feeds)
                plans.append(plan.removed)
            same = plans[0] == plans[1]
            out.append({"model": model, "config": config, "same_plan": same,
                        "removed": sum(len(v) for v in plans[0].values())})
            print(model, config, "same plan with BN folded:", same, flush=True)
    return out


# -- markdown --------------------------------------------------------------------------------
def met(r, key="drop_pp"):
    return r[key] <= BAR.get(r["target_macs"], 0.5) + 1e-9


def summary(result):
    runs, targets = result["runs"], result["targets"]
    lines = ["| config | " + " | ".join(f"T={t} lsq" for t in targets) + " | bar met (lsq) | "
             + " | ".join(f"T={t} none" for t in targets) + " | median score+allocate s |",
             "|---|" + "---|" * (2 * len(targets) + 2)]
    for config in result["configs"]:
        rows = [r for r in runs if r["config"] == config]
        if not rows:
            continue
        lsq = [pct(np.mean([r["accuracy"] for r in rows if r["target_macs"] == t])) for t in targets]
        none = [pct(np.mean([r["accuracy_none"] for r in rows if r["target_macs"] == t])) for t in targets]
        secs = np.median([(r["score_s"] or 0) + (r["allocate_s"] or 0) for r in rows])
        lines.append(f"| {config} | " + " | ".join(lsq) + f" | {sum(met(r) for r in rows)}/{len(rows)} | "
                     + " | ".join(none) + f" | {secs:.2f} |")
    return lines


def per_model(result):
    runs, targets = result["runs"], result["targets"]
    lines = []
    for model in result["models"]:
        rows = [r for r in runs if r["model"] == model]
        if not rows:
            continue
        lines += [f"### {model} (unpruned {pct(rows[0]['accuracy_original'])} %)", "",
                  "| config | " + " | ".join(f"T={t}" for t in targets) + " |", "|---|" + "---|" * len(targets)]
        for config in result["configs"]:
            cells = []
            for t in targets:
                r = [x for x in rows if x["config"] == config and x["target_macs"] == t]
                cells.append("—" if not r else f"{'**' if met(r[0]) else ''}{pct(r[0]['accuracy'])}"
                             f"{'**' if met(r[0]) else ''} / {pct(r[0]['accuracy_none'])} ({r[0]['mac_fraction']:.2f})")
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def markdown(result):
    lines = ["# Digits accuracy: channels chosen from calibration data", "",
             f"Regenerate: `{COMMAND}` (models: `{MODELS_COMMAND}`).", "",
             f"Calibration: {result['calibration']} unlabelled TRAIN images; evaluation: the {result['test_samples']} "
             f"TEST images. round_to {result['default_round_to']} (library default here). Recovery: lsq; the "
             "'none' columns are the same pruned models before the refit. Bar: at most "
             + ", ".join(f"{v} pp below unpruned at T={k}" for k, v in BAR.items()) + ".", "",
             f"## Mean accuracy % over {len(result['models'])} models", ""]
    lines += summary(result) + ["", "## Per model: accuracy lsq / none % (achieved MAC fraction); bold = bar met (lsq)", ""]
    lines += per_model(result)
    if result.get("plans"):
        lines += ["## Plans of the data criteria with BN kept vs folded (T=0.6)", "",
                  "| model | config | same plan |", "|---|---|---|"]
        lines += [f"| {p['model']} | {p['config']} | {p['same_plan']} |" for p in result["plans"]]
    lines += ["", f"Elapsed: {result.get('elapsed_s')} s on {result['environment']['cpus']} shared cores."]
    return "\n".join(lines)


def digits_data(calib: int):
    """(calibration feeds: the first `calib` of the shuffled TRAIN images, unlabelled; the
    labelled TEST images as eval data; the test labels)."""
    x_train, _, x_test, y_test = load_digits_split(16)
    pool = x_train[np.random.default_rng(CALIB_SEED).permutation(len(x_train))]
    return [{"input": pool[:calib]}], [{"input": x_test, "labels": y_test}], y_test


def digits_model_path(model: str) -> str:
    path = os.path.join(ROOT, "models", f"{model}.onnx")
    if not os.path.exists(path):
        sys.exit(f"models/{model}.onnx is missing: run `{MODELS_COMMAND}` first")
    return path


def study_parser(doc: str, models: list, targets: list) -> argparse.ArgumentParser:
    """The options every digits study takes: models, MAC targets, calibration size, output folder."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=models)
    ap.add_argument("--targets", nargs="+", type=float, default=targets)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    return ap


def main(argv=None):
    ap = study_parser(__doc__, MODELS, TARGETS)
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--plans-only", nargs="*", default=None, metavar="MODEL")
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args(argv)
    path_json = os.path.join(args.out, "accuracy_criteria.json")
    if args.render:
        return write(json.load(open(path_json)), args.out)
    start = time.perf_counter()
    feeds, eval_data, y_test = digits_data(args.calib)
    old = json.load(open(path_json)) if os.path.exists(path_json) else {}
    if args.plans_only is not None:
        old["plans"] = compare_plans(args.plans_only or MODELS, feeds)
        dump_json(old, path_json)
        return write(old, args.out) if "runs" in old else None
    # runs of other models or other configs stay: a study can be extended or redone in parts
    kept = [r for r in old.get("runs", []) if r["model"] not in args.models or r["config"] not in args.configs]
    models = list(dict.fromkeys([m for m in old.get("models", []) if any(r["model"] == m for r in kept)]
                                + args.models))
    configs = list(dict.fromkeys([c for c in old.get("configs", []) if any(r["config"] == c for r in kept)]
                                 + args.configs))
    result = {"command": COMMAND, "models": models, "targets": args.targets, "configs": configs,
              "calibration": args.calib, "test_samples": len(y_test), "default_round_to": default_round_to(),
              "heatmap_default_mass": DEFAULT_MASS, "bar_pp": {str(k): v for k, v in BAR.items()},
              "plans": old.get("plans"),
              "environment": environment(), "runs": kept}
    os.makedirs(args.out, exist_ok=True)
    for model in args.models:
        path = digits_model_path(model)
        t0 = time.perf_counter()
        for target in args.targets:
            for config in args.configs:
                r = run(path, model, target, config, feeds, eval_data, len(y_test))
                result["runs"].append(r)
                print(f"{model} T={target} {config}: lsq {pct(r['accuracy'])} none {pct(r['accuracy_none'])} "
                      f"macs {r['mac_fraction']:.3f} ({r['prune_s']:.1f}s)", flush=True)
        print(f"{model}: {time.perf_counter() - t0:.0f}s", flush=True)
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        dump_json(result, path_json)
    write(result, args.out)


def write(result, out):
    md = markdown(result)
    with open(os.path.join(out, "accuracy_criteria.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
