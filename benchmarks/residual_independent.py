"""Independent vs coupled residual branches (`--residual`, docs/methods.md §2), at equal MAC targets.

    python benchmarks/residual_independent.py [--part accuracy latency] [--targets 0.8 0.7 0.6]
        [--models digits_resnet ...] [--zoo resnet50 mobilenet_v2] [--size 224] [--runs 15] [--repeat 3]

(a) accuracy: the trained digits models (models/digits_*.onnx; we have no trained ImageNet
    weights), 450 labelled test images. Per model x target x mode, two prunes:
      * `calib`: 256 unlabelled train images, the library defaults with data (criterion auto =
        activation, recover auto = lsq); one run gives the accuracy before the refit ("none")
        and after it ("lsq");
      * `datafree`: no data, the library defaults without it (bn-variance, coupled last, stats
        recovery from the BN statistics), and the same with `coupled="all"`, which thins the
        residual streams alongside the blocks (with `last`, streams are thinned only once
        every block is at its floor, so at light targets both modes prune the same channels).
(b) latency: ResNet-50 and MobileNetV2 from models/zoo.py (random init, BN kept) at SIZE x SIZE,
    pruned data-free with coupled="all" (so the streams are pruned in both modes) at every target
    in both modes; the original and all pruned variants timed in one alternating onnxruntime run
    (onnxprune.bench.compare, 1 thread, batch 1), so ratios are measured within one run; the run
    is repeated (the variants' order rotated) and rows give the median over the repeats.
(c) scatter: the Pad + Gather the rewrite emits against a Gather + Mul by a mask, and against a
    plain Add, on tensors the size of ResNet-50's streams.

Writes benchmarks/results/residual_independent.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnxprune  # noqa: E402
from onnxprune.fidelity import evaluate  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

MODELS = ["digits_resnet", "digits_resnet_s1", "digits_mobilenet", "digits_mobilenet_s1"]
ZOO = ["resnet50", "mobilenet_v2"]
TARGETS = [0.8, 0.7, 0.6]
MODES = ["coupled", "independent"]
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def gathers(report) -> str:
    note = next((n for n in report.notes if n.startswith("residual independent")), "")
    return note.split(" residual sum")[0].replace("residual independent: ", "") if note else "-"


def misaligned(proto, round_to: int) -> str:
    """Convolutions whose input width is not a multiple of `round_to` (off onnxruntime's
    blocked kernels): a sum's union width is not rounded, its branches' widths are."""
    weights = {t.name: t.dims for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    widths = [weights[n.input[1]][1] * g for n, g in zip(convs, groups)]
    return f"{sum(w % round_to != 0 for w in widths)} of {len(convs)}"


def accuracy_runs(models, targets):
    x_train, _, x_test, y_test = load_digits_split(16)
    calib = [{"input": x_train[np.random.default_rng(0).permutation(len(x_train))][:256]}]
    held = [{"input": x_test, "labels": y_test}]
    rows = []
    for model in models:
        path = os.path.join(ROOT, "models", f"{model}.onnx")
        for target in targets:
            for mode in MODES:
                t = time.perf_counter()
                # recover named: `auto` would also choose its repair on `held`, the test images
                _, rep = onnxprune.prune(path, target_macs=target, calibration=calib, eval_data=held, residual=mode,
                                         recover="lsq", allocator="rank")   # the modes on one allocator, not auto's
                f, u = rep.fidelity.outputs[0], rep.fidelity_unrecovered.outputs[0]
                row = {"model": model, "target": target, "mode": mode, "criterion": rep.options["criterion"],
                       "acc_original": f.accuracy_original, "calib_none": u.accuracy_pruned,
                       "calib_lsq": f.accuracy_pruned, "calib_macs": rep.after["macs"] / rep.before["macs"],
                       "calib_gathers": gathers(rep)}
                for coupled in ("last", "all"):
                    # nothing given, as a user without data; the test images are scored afterwards
                    slim, rep = onnxprune.prune(path, target_macs=target, residual=mode, coupled=coupled)
                    row[f"free_{coupled}"] = evaluate(path, slim, held).outputs[0].accuracy_pruned
                    row[f"free_{coupled}_macs"] = rep.after["macs"] / rep.before["macs"]
                    row[f"free_{coupled}_gathers"] = gathers(rep)
                row["seconds"] = round(time.perf_counter() - t, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def latency_runs(models, targets, size, runs, warmup, repeat):
    from models import build
    from onnxprune import bench
    rows = []
    for model in models:
        proto = build(model, (1, 3, size, size), keep_bn=True)
        variants, names, info = [proto], [f"{model} original"], []
        for target in targets:
            for mode in MODES:
                t = time.perf_counter()
                slim, rep = onnxprune.prune(proto, target_macs=target, residual=mode, coupled="all")
                variants.append(slim)
                names.append(f"{model}@{target:g} {mode}")
                info.append({"model": model, "target": target, "mode": mode, "criterion": rep.options["criterion"],
                             "round_to": rep.options["round_to"], "macs": rep.after["macs"] / rep.before["macs"],
                             "gathers": gathers(rep), "misaligned": misaligned(slim, rep.options["round_to"]),
                             "prune_s": round(time.perf_counter() - t, 1)})
                print(names[-1], info[-1], flush=True)
        medians = {name: [] for name in names}
        for r in range(repeat):   # the pruned variants' order rotates, so none always follows another
            order = [0] + [1 + (k + r) % (len(names) - 1) for k in range(len(names) - 1)]
            timings = bench.compare([variants[k] for k in order], threads=1, batch=1, warmup=warmup, runs=runs,
                                    names=[names[k] for k in order])
            for t in timings:
                medians[t.name].append(t.median_ms)
        base = float(np.median(medians[names[0]]))
        rows.append({"model": model, "variant": "original", "median_ms": base, "repeats_ms": medians[names[0]],
                     "speedup": 1.0})
        for name, meta in zip(names[1:], info):
            ms = float(np.median(medians[name]))
            ratios = [b / m for b, m in zip(medians[names[0]], medians[name])]
            rows.append({**meta, "variant": name, "median_ms": ms, "repeats_ms": medians[name], "speedup": base / ms,
                         "speedup_min": min(ratios), "speedup_max": max(ratios)})
            print(rows[-1], flush=True)
    return rows


# Ways to add a branch with `width` channels into a sum of `union` channels (onnxruntime, CPU).
SCATTER_SHAPES = [(256, 224, 56), (512, 448, 28), (1024, 896, 14), (2048, 1792, 7)]   # ResNet-50's streams


def scatter_graph(form: str, union: int, width: int, size: int):
    """out = scatter(a) + b, for a branch `a` that keeps `width` of the `union` channels of `b`:
    `pad-gather` (what passes/scatter_residual.py emits), `gather-mul` (gather with a
    clamped index, then zero the missing channels), or `plain` (a branch as wide as the sum:
    the cost of the Add alone)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(union, width, replace=False))
    position = np.full(union, width, dtype=np.int64)
    position[keep] = np.arange(width)
    inits, nodes = [], []
    a_width = union if form == "plain" else width
    if form == "pad-gather":
        pads = np.zeros(8, np.int64)
        pads[5] = 1
        inits += [numpy_helper.from_array(pads, "pads"), numpy_helper.from_array(position, "index")]
        nodes += [helper.make_node("Pad", ["a", "pads"], ["padded"]),
                  helper.make_node("Gather", ["padded", "index"], ["scattered"], axis=1)]
    elif form == "gather-mul":
        mask = (position < width).astype(np.float32).reshape(1, union, 1, 1)
        inits += [numpy_helper.from_array(np.minimum(position, width - 1), "index"),
                  numpy_helper.from_array(mask, "mask")]
        nodes += [helper.make_node("Gather", ["a", "index"], ["gathered"], axis=1),
                  helper.make_node("Mul", ["gathered", "mask"], ["scattered"])]
    nodes.append(helper.make_node("Add", ["a" if form == "plain" else "scattered", "b"], ["out"]))
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, a_width, size, size]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, union, size, size])]
    graph = helper.make_graph(nodes, form, inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def scatter_runs(runs, warmup, repeat):
    from onnxprune import bench
    rows = []
    for union, width, size in SCATTER_SHAPES:
        forms = ["plain", "pad-gather", "gather-mul"]
        medians = {f: [] for f in forms}
        for r in range(repeat):
            order = forms[r % 3:] + forms[:r % 3]
            for t in bench.compare([scatter_graph(f, union, width, size) for f in order], runs=runs,
                                   warmup=warmup, names=order):
                medians[t.name].append(t.median_ms)
        row = {"union": union, "width": width, "size": size,
               **{f: float(np.median(m)) * 1e3 for f, m in medians.items()}}
        rows.append(row)
        print(row, flush=True)
    return rows


def pct(x):
    return f"{100 * x:.1f}"


def measured(run) -> str:
    return (f"Measured {run['date']} on {run['machine']}, onnxruntime {run['onnxruntime']}, git {run['git']}. "
            f"Command: `{run['command']}`.")


def markdown(result) -> str:
    lines = []
    acc = result.get("accuracy", [])
    if acc:
        lines += [measured(result["accuracy_run"]), "",
                  "Accuracy (%) on the 450 digits test images, coupled -> independent, at the MAC target "
                  "(calib: 256 unlabelled train images, criterion auto = activation; none = before the lsq "
                  "refit; data-free: bn-variance + BN-statistics recovery, coupled last (default) or all). "
                  "`gathers`: residual sums that read a branch through Pad + Gather (independent, calib run).", "",
                  "| model | target | unpruned | calib MACs | calib none | calib lsq | data-free (last) | data-free (all) "
                  "| gathers |", "|---|---|---|---|---|---|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in acc):
            for target in dict.fromkeys(r["target"] for r in acc):
                c = next(r for r in acc if r["model"] == model and r["target"] == target and r["mode"] == "coupled")
                i = next(r for r in acc if r["model"] == model and r["target"] == target and r["mode"] == "independent")
                cells = [f"{pct(c[k])} -> {pct(i[k])}" for k in ("calib_none", "calib_lsq", "free_last", "free_all")]
                lines.append(f"| {model} | {target:g} | {pct(c['acc_original'])} | {c['calib_macs']:.3f} -> "
                             f"{i['calib_macs']:.3f} | " + " | ".join(cells)
                             + f" | {i['calib_gathers']} |")
        lines += [""]
        for key, label in (("calib_none", "calib none"), ("calib_lsq", "calib lsq"), ("free_last", "data-free last"),
                           ("free_all", "data-free all")):
            c = np.mean([r[key] for r in acc if r["mode"] == "coupled"])
            i = np.mean([r[key] for r in acc if r["mode"] == "independent"])
            lines.append(f"- mean {label}: coupled {pct(c)}, independent {pct(i)}")
        lines += [""]
    lat = result.get("latency", [])
    if lat:
        run = result["latency_run"]
        lines += [measured(run) + f" Load average {run['load_average']:.1f} before, {run['load_average_after']:.1f} "
                  "after (2 cores shared).", "",
                  f"onnxruntime CPU latency, 1 thread, batch 1, {run['size']}x{run['size']}: {run['repeat']} "
                  f"alternating runs of {run['runs']} rounds each (original and every variant in one run, the "
                  "variants' order rotated between runs); median ms and speedup are medians over the runs, "
                  "[min, max] the speedup's range. Pruned data-free (bn-variance) with coupled=all, default "
                  "round-to.", "",
                  "| model | target | mode | MAC fraction | median ms | speedup [min, max] | gathers | convs off round-to |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in lat:
            if r["variant"] == "original":
                lines.append(f"| {r['model']} | original | | 1.000 | {r['median_ms']:.1f} | 1.00x | | |")
            else:
                lines.append(f"| {r['model']} | {r['target']:g} | {r['mode']} | {r['macs']:.3f} | "
                             f"{r['median_ms']:.1f} | {r['speedup']:.2f}x [{r['speedup_min']:.2f}, "
                             f"{r['speedup_max']:.2f}] | {r['gathers']} | {r.get('misaligned', '')} |")
    scatter = result.get("scatter", [])
    if scatter:
        run = result["scatter_run"]
        lines += ["", measured(run), "",
                  f"A branch added into a wider sum, alone (onnxruntime CPU, 1 thread, median µs over {run['repeat']} "
                  f"alternating runs of {run['runs']} rounds, the order rotated): `plain` is an Add of two tensors as "
                  "wide as the sum (no scatter); `pad-gather` is what the rewrite emits; `gather-mul` gathers with "
                  "a clamped index and zeroes the missing channels by a mask.", "",
                  "| sum channels | branch channels | H=W | plain µs | pad-gather µs | gather-mul µs |",
                  "|---|---|---|---|---|---|"]
        for r in scatter:
            lines.append(f"| {r['union']} | {r['width']} | {r['size']} | {r['plain']:.0f} | {r['pad-gather']:.0f} | "
                         f"{r['gather-mul']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["accuracy", "latency", "scatter"],
                    choices=["accuracy", "latency", "scatter"])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--zoo", nargs="+", default=ZOO)
    ap.add_argument("--targets", nargs="+", type=float, default=TARGETS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per model; rows give the median")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--render", action="store_true", help="measure nothing: rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.render:
        text = markdown(json.load(open(os.path.join(args.out, "residual_independent.json"))))
        with open(os.path.join(args.out, "residual_independent.md"), "w") as f:
            f.write(text)
        return 0
    import onnxruntime
    from latency import _git_state
    path = os.path.join(args.out, "residual_independent.json")
    result = json.load(open(path)) if os.path.exists(path) else {}   # a part not asked for is kept
    run = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average": os.getloadavg()[0], "onnxruntime": onnxruntime.__version__, "git": _git_state(),
           "size": args.size, "runs": args.runs, "repeat": args.repeat,
           "command": "python benchmarks/residual_independent.py " + " ".join(argv or sys.argv[1:])}
    if "accuracy" in args.part:
        result["accuracy"], result["accuracy_run"] = accuracy_runs(args.models, args.targets), run
    if "latency" in args.part:
        result["latency"] = latency_runs(args.zoo, args.targets, args.size, args.runs, args.warmup, args.repeat)
        result["latency_run"] = {**run, "load_average_after": os.getloadavg()[0]}
    if "scatter" in args.part:
        rounds = 5 * args.runs   # microseconds each: more rounds for the same wall time
        result["scatter"], result["scatter_run"] = scatter_runs(rounds, args.warmup, args.repeat), {**run, "runs": rounds}
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "residual_independent.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    sys.exit(main())
