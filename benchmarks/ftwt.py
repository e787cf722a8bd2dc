"""FTWT on the trained digits models (docs/methods.md §3, `onnxprune estimate`).

    python benchmarks/ftwt.py [--models digits_resnet digits_mobilenet ...] [--targets 0.8 0.7 0.6]
                              [--masses 0.5 0.6 ...] [--calib 256] [--runs 300] [--out benchmarks/results]

Data: `models.digits.load_digits_split(16)`: calibration = the first N shuffled TRAIN images
(unlabelled; the same helper as the other digits studies), evaluation = the 450 TEST images
with labels. Two studies:

1. Estimate against achieved: for every mass threshold r and `--round-to` 1 and the default, the static
   MACs `estimate` predicts for the static model of r (per layer, the channels with the highest
   keep frequency, as many as the expected kept fraction) against the MACs of the model
   `apply_plan` writes from that plan; and the dynamic model's expected MACs.
2. Gated against static at equal MACs: r is bisected so that the dynamic MACs
   estimate meets each target; the gated model (`--emit-gated`) is fitted on the calibration
   images and measured on the test images (accuracy; expected dynamic MACs from its heads'
   own masks, heads included). The static models are the static models of the r whose static
   MACs meet the gated model's measured dynamic MACs, at `--round-to` 1 (closest MACs) and the
   default (16 on AVX-512: onnxruntime's fast kernels), pruned from their plans with
   `recover="none"` and `"lsq"` (on the same calibration images). Latency: onnxruntime CPU,
   1 thread, original / gated / static models in one alternating series
   (onnxprune.bench.compare), batch 1 and batch 32.

Writes benchmarks/results/ftwt.{json,md}."""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from benchmarks.accuracy_criteria import digits_data, digits_model_path  # noqa: E402
from benchmarks.accuracy_recovery import dump_json, environment  # noqa: E402
from onnxprune.bench import compare  # noqa: E402
from onnxprune.budget import default_round_to  # noqa: E402
from onnxprune.ftwt import DEFAULT_MASSES, build_estimator  # noqa: E402
from onnxprune.gating import emit_gated  # noqa: E402

COMMAND = "python benchmarks/ftwt.py"
MODELS = ["digits_resnet", "digits_mobilenet", "digits_resnet_s1", "digits_mobilenet_s1"]
TARGETS = [0.8, 0.7, 0.6]


def estimate_rows(path, model, feeds, masses, round_to):
    *_, estimator = build_estimator(path, feeds, round_to=round_to)
    rows = []
    for r in masses:
        point = estimator.point(r)
        _, report = onnxprune.prune(path, plan=estimator.static_plan(point), recover="none")
        rows.append({"model": model, "round_to": round_to, "mass": r, "dynamic_macs": point.dynamic_macs,
                     "static_predicted": point.static_macs,
                     "static_achieved": report.after["macs"] / report.before["macs"],
                     "kept": point.kept})
    return rows


def gated_vs_static(path, model, feeds, eval_data, target, runs):
    _, _, calib, held, estimator = build_estimator(path, feeds, round_to=1, eval_data=eval_data)
    r_dynamic = estimator.solve(target, "dynamic")
    gated = emit_gated(estimator, calib, r_dynamic, held)
    row = {"model": model, "target": target, "r_dynamic": r_dynamic,
           "gated_accuracy": gated.fidelity.outputs[0].accuracy_pruned,
           "original_accuracy": gated.fidelity.outputs[0].accuracy_original,
           "gated_dynamic_macs": gated.dynamic_macs, "gated_head_macs": gated.head_macs,
           "estimated_dynamic_macs": estimator.point(r_dynamic).dynamic_macs,
           "head_agreement": [h.agreement for h in gated.heads], "static": {}}
    protos, names = [path, gated.model.to_proto()], ["original", "gated"]
    # the static model of the r whose static MACs meet the gated model's measured ones; at
    # round-to 1 (the closest match) and at the default round-to (onnxruntime's fast kernels)
    for round_to in sorted({1, default_round_to()}):
        est = estimator if round_to == 1 else build_estimator(path, feeds, round_to=round_to)[-1]
        r_static = est.solve(gated.dynamic_macs, "static")
        if r_static is None:
            continue
        plan = est.static_plan(est.point(r_static))
        entry = {"r": r_static}
        for recover in ("none", "lsq"):
            slim, report = onnxprune.prune(path, plan=plan, calibration=feeds, eval_data=eval_data, recover=recover)
            entry[f"accuracy_{recover}"] = report.fidelity.outputs[0].accuracy_pruned
        entry["macs"] = report.after["macs"] / report.before["macs"]
        row["static"][str(round_to)] = entry
        protos.append(slim)
        names.append(f"static round-to {round_to}")
    for batch in (1, 32):
        timings = compare(protos, threads=1, batch=batch, warmup=20, runs=runs, names=names)
        row[f"latency_ms_b{batch}"] = {t.name: t.median_ms for t in timings}
    return row


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(result) -> str:
    lines = ["# FTWT: estimate and gated model on the digits models", "",
             f"`{result['command']}` ({result['calib']} calibration images, 450 test images; "
             f"elapsed {result['elapsed_s']} s on {result['environment']['cpus']} shared cores).", "",
             "## Static MACs: estimate against achieved", "",
             "| model | round-to | r | dynamic MACs (est.) | static MACs predicted | static MACs achieved | diff (points) |",
             "|---|---|---|---|---|---|---|"]
    for e in result["estimate"]:
        lines.append(f"| {e['model']} | {e['round_to']} | {e['mass']:g} | {e['dynamic_macs']:.4f} | "
                     f"{e['static_predicted']:.4f} | {e['static_achieved']:.4f} | "
                     f"{100 * (e['static_predicted'] - e['static_achieved']):+.2f} |")
    worst = max(abs(e["static_predicted"] - e["static_achieved"]) for e in result["estimate"])
    lines += ["", f"Largest difference: {100 * worst:.2f} points.", "",
              "## Gated against static at equal MACs", "",
              "Static models: the static model of the r whose static MACs meet the gated model's measured "
              "dynamic MACs, at round-to 1 and 16; accuracy without recovery / after `lsq`. Latency: median ms, "
              "onnxruntime CPU, 1 thread, one alternating series per row.", "",
              "| model | target | r gated | gated dyn. MACs | gated acc. % | static (round-to): r, MACs, acc. % none / lsq "
              "| original acc. % | latency b1: orig / gated / static | latency b32: orig / gated / static |",
              "|---|---|---|---|---|---|---|---|---|"]
    for g in result["gated"]:
        statics = "<br>".join(f"({k}) {v['r']:.3f}, {v['macs']:.4f}, {pct(v['accuracy_none'])} / "
                              f"{pct(v['accuracy_lsq'])}" for k, v in g["static"].items())
        lat = {b: " / ".join(f"{ms:.3f}" for ms in g[f"latency_ms_b{b}"].values()) for b in (1, 32)}
        lines.append(f"| {g['model']} | {g['target']:g} | {g['r_dynamic']:.4f} | {g['gated_dynamic_macs']:.4f} | "
                     f"{pct(g['gated_accuracy'])} | {statics} | {pct(g['original_accuracy'])} | {lat[1]} | {lat[32]} |")
    lines += ["", "Latency columns list the static models in the order of the static column (round-to 1, then 16)."]
    return "\n".join(lines)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--targets", nargs="+", type=float, default=TARGETS)
    ap.add_argument("--masses", nargs="+", type=float, default=list(DEFAULT_MASSES))
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    start = time.time()
    feeds, eval_data, _ = digits_data(args.calib)
    result = {"command": " ".join([COMMAND] + (argv if argv is not None else sys.argv[1:])), "calib": args.calib,
              "environment": environment(), "estimate": [], "gated": []}
    for model in args.models:
        path = digits_model_path(model)
        for round_to in sorted({default_round_to(), 1}, reverse=True):
            result["estimate"] += estimate_rows(path, model, feeds, args.masses, round_to)
            print(model, round_to, "estimate done", flush=True)
        for target in args.targets:
            result["gated"].append(gated_vs_static(path, model, feeds, eval_data, target, args.runs))
            print(model, target, {k: v for k, v in result["gated"][-1].items() if "latency" in k or "acc" in k},
                  flush=True)
    result["elapsed_s"] = round(time.time() - start, 1)
    os.makedirs(args.out, exist_ok=True)
    dump_json(result, os.path.join(args.out, "ftwt.json"))
    md = markdown(result)
    with open(os.path.join(args.out, "ftwt.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
