"""`--target-latency` (docs/methods.md §6) against its acceptance bar, on this machine.

    python benchmarks/latency_target.py [--parts zoo batches accuracy ocr vit] [--size 224]
        [--batch-size 112] [--runs 30] [--table /tmp/onnxprune_latency_table.json] [--out benchmarks/results]

zoo: ResNet-50 and MobileNetV2 (models.build, random weights, BN kept, SIZE x SIZE, exported
once into /tmp/onnxprune_latency_cache) pruned with `target_latency=0.5` (criterion auto,
recover stats: the weights are random), batch 1, 1 thread. Recorded: the library's own
measurement (its note), then an independent check: original and pruned timed again in
one alternating run of `onnxprune.bench.compare`.

batches: the same models at --batch-size x --batch-size, targets 0.9, 0.7, 0.5, batch 1, 8
and 32 (RUNS, 15 and 10 timed runs): per batch, one alternating run of the original and its
three pruned models; a pruned model slower than its original fails the bar.

accuracy: the trained digits ResNet and MobileNet (models/digits_*.onnx), batch 32, 1 thread,
calibration = the first 256 of a permutation (default_rng(0)) of the train images,
evaluation = the 450 test images (models.digits.load_digits_split(16)); default recovery
(lsq with calibration). `target_latency=0.5` against `target_macs` in {0.3, ..., 0.7}, all
timed in one alternating run with the original; the MAC-pruned accuracy at the
latency-pruned model's measured latency is interpolated between the two MAC targets that
bracket it.

vit (not in the default parts): a torchvision-style ViT at vit_b_16's size
(models/zoo_transformers.py's TorchvisionViT, random weights, SIZE x SIZE, patch 16, width
768, 12 heads, MLP 3072, 12 blocks), targets 0.7 and 0.5, batch 1, 1 thread, as zoo.

ocr (not in the default parts): PP-OCRv4 recognition at batch 1 (see `part_ocr`), the same
comparison at `target_latency=0.7` with character accuracy, calibration lines only.

The machine is shared: every latency is a ratio within one alternating run, recorded next to
the load average (1 minute) before and after; ratios are of 10th percentiles (what the library
compares, docs/methods.md §6), with the ratio of medians next to them. Writes OUT/latency_target.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnxprune  # noqa: E402
from onnxprune import TimingOptions, bench  # noqa: E402
from accuracy_recovery import dump_json, environment  # noqa: E402

COMMAND = "python benchmarks/latency_target.py"
CACHE = os.path.join("/tmp", "onnxprune_latency_cache")
MAC_TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7)
OCR_MAC_TARGETS = (0.9, 0.8, 0.7, 0.6)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def zoo_model(name: str, size: int) -> str:
    from models import build
    path = os.path.join(CACHE, f"{name}_{size}.onnx")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        onnx.save(build(name, (1, 3, size, size), keep_bn=True), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def ratios(original, pruned) -> dict:
    """Pruned / original from one alternating run: by 10th percentiles (what the library
    compares; medians follow the other jobs on this shared machine), and by medians."""
    return {"original_ms": original.p10_ms, "pruned_ms": pruned.p10_ms,
            "achieved_check": pruned.p10_ms / original.p10_ms,
            "original_median_ms": original.median_ms, "pruned_median_ms": pruned.median_ms,
            "achieved_check_median": pruned.median_ms / original.median_ms}


def latency_note(report) -> str:
    return next(n for n in report.notes if n.startswith("target latency"))


def prune_to(path, out, target, timing, **kw):
    t = time.perf_counter()
    slim, report = onnxprune.prune(path, target_latency=target, timing=timing, **kw)
    onnx.save(slim, out)
    note = latency_note(report)
    return report, {"target": target, "achieved_in_prune": float(note.split("achieved ")[1].split(" ")[0]),
                    "note": note, "table_note": next(n for n in report.notes if n.startswith("latency table")),
                    "mac_fraction": report.after["macs"] / report.before["macs"],
                    "prune_s": round(time.perf_counter() - t, 1)}


def part_zoo(args, tmp) -> list[dict]:
    rows = []
    for name in ("resnet50", "mobilenet_v2"):
        path = zoo_model(name, args.size)
        timing = TimingOptions(runs=args.runs, table=args.table)
        load_before = load()
        _, row = prune_to(path, os.path.join(tmp, f"{name}.onnx"), 0.5, timing, recover="stats")
        check = bench.compare([path, os.path.join(tmp, f"{name}.onnx")], runs=args.runs)
        row.update(model=name, size=args.size, batch=1, threads=1, **ratios(check[0], check[1]),
                   load_before=load_before, load_after=load())
        row["within_5pct"] = abs(row["achieved_check"] - 0.5) <= 0.025
        print(f"{name}: target 0.5, achieved {row['achieved_in_prune']:.3f} in prune, {row['achieved_check']:.3f} "
              f"in the check run (load {load_before} -> {row['load_after']})", flush=True)
        rows.append(row)
    return rows


def vit_model(size: int) -> str:
    import torch
    from models.zoo_extra import export
    from models.zoo_transformers import TorchvisionViT
    path = os.path.join(CACHE, f"vit_b16_{size}.onnx")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        torch.manual_seed(0)
        model = TorchvisionViT(num_classes=1000, image=size, patch=16, dim=768, depth=12, heads=12,
                               mlp_dim=3072).eval()
        onnx.save(export(model, (1, 3, size, size)), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def part_vit(args, tmp) -> list[dict]:
    rows = []
    path = vit_model(args.size)
    for target in (0.7, 0.5):
        timing = TimingOptions(runs=args.runs, table=args.table)
        load_before = load()
        out = os.path.join(tmp, f"vit_{target}.onnx")
        _, row = prune_to(path, out, target, timing, recover="none")
        check = bench.compare([path, out], runs=args.runs)
        row.update(model="vit_b_16 (torchvision-style)", size=args.size, batch=1, threads=1,
                   **ratios(check[0], check[1]), load_before=load_before, load_after=load())
        row["within_5pct"] = abs(row["achieved_check"] - target) <= 0.05 * target
        print(f"vit: target {target}, achieved {row['achieved_in_prune']:.3f} in prune, {row['achieved_check']:.3f} "
              f"in the check run, MACs {row['mac_fraction']:.3f} (load {load_before} -> {row['load_after']})",
              flush=True)
        rows.append(row)
    return rows


def part_batches(args, tmp) -> list[dict]:
    rows = []
    for name in ("resnet50", "mobilenet_v2"):
        path = zoo_model(name, args.batch_size)
        for batch in (1, 8, 32):
            timing = TimingOptions(batch=batch, runs={1: args.runs, 8: 15, 32: 10}[batch], warmup=2, table=args.table)
            load_before = load()
            outs, prunes = [], []
            for target in (0.9, 0.7, 0.5):
                out = os.path.join(tmp, f"{name}_b{batch}_{target}.onnx")
                prunes.append(prune_to(path, out, target, timing, recover="stats")[1])
                outs.append(out)
            check = bench.compare([path, *outs], batch=batch, runs=timing.runs, warmup=2)
            for p, t in zip(prunes, check[1:]):
                p.update(model=name, size=args.batch_size, batch=batch, **ratios(check[0], t),
                         load_before=load_before, load_after=load())
                p["not_slower"] = p["achieved_check"] < 1
                print(f"{name} batch {batch}: target {p['target']}, achieved {p['achieved_in_prune']:.3f} in prune, "
                      f"{p['achieved_check']:.3f} in the check run (load {load_before} -> {p['load_after']})",
                      flush=True)
            rows += prunes
    return rows


def part_accuracy(args, tmp) -> list[dict]:
    from models.digits import load_digits_split
    x_train, _, x_test, y_test = load_digits_split(16)
    calib = [{"input": x_train[np.random.default_rng(0).permutation(len(x_train))[:256]]}]
    eval_data = [{"input": x_test, "labels": y_test}]
    rows = []
    for name in ("digits_resnet", "digits_mobilenet"):
        path = os.path.join(ROOT, "models", f"{name}.onnx")
        timing = TimingOptions(batch=32, runs=args.runs, table=args.table)
        load_before = load()
        report, lat = prune_to(path, os.path.join(tmp, f"{name}_lat.onnx"), 0.5, timing, calibration=calib,
                               eval_data=eval_data, round_to=args.round_to)
        lat["accuracy"] = report.fidelity.outputs[0].accuracy_pruned
        original_acc = report.fidelity.outputs[0].accuracy_original
        macs = []
        for target in MAC_TARGETS:
            slim, r = onnxprune.prune(path, target_macs=target, calibration=calib, eval_data=eval_data,
                                      round_to=args.round_to)
            out = os.path.join(tmp, f"{name}_macs{target}.onnx")
            onnx.save(slim, out)
            macs.append({"target_macs": target, "accuracy": r.fidelity.outputs[0].accuracy_pruned,
                         "mac_fraction": r.after["macs"] / r.before["macs"], "path": out})
        check = bench.compare([path, os.path.join(tmp, f"{name}_lat.onnx")] + [m["path"] for m in macs],
                              batch=32, runs=args.runs)
        lat.update(ratios(check[0], check[1]))
        lat["latency"] = lat["achieved_check"]
        for m, t in zip(macs, check[2:]):
            m.update(ratios(check[0], t))
            m["latency"] = m["achieved_check"]
            del m["path"]
        at_same = _interpolate(macs, lat["latency"])
        rows.append({"model": name, "batch": 32, "round_to": report.options["round_to"],
                     "original_accuracy": original_acc, "latency_target": lat,
                     "mac_targets": macs, "mac_accuracy_at_same_latency": at_same,
                     "load_before": load_before, "load_after": load()})
        print(f"{name}: latency target 0.5 -> measured {lat['latency']:.3f}, accuracy {lat['accuracy']:.4f}; "
              f"MAC targets at the same latency: {at_same}", flush=True)
    return rows


def part_ocr(args, tmp) -> list[dict]:
    """PP-OCRv4 recognition, batch 1, 1 thread, 48 x 320: `--target-latency 0.7` against
    `--target-macs` in OCR_MAC_TARGETS, each with the 256 calibration lines of
    benchmarks/ocr_recovery.py and nothing else (defaults: criterion and recovery auto; the
    evaluation lines never reach the library). Character accuracy on the evaluation lines."""
    import ocr_accuracy as base
    import ocr_recovery as ocr
    from onnxprune.calibration import load_calibration
    lines, images, font_path, recognizer = ocr.evaluation_lines()
    calib_x = ocr.build_calibration(lines, font_path, recognizer)[0]
    calib = load_calibration([{"x": calib_x[i:i + 32]} for i in range(0, len(calib_x), 32)],
                             {"x": (None, 3, 48, ocr.WIDTH)})
    metadata = list(onnx.load(ocr.MODEL).metadata_props)
    shapes = ocr.INPUT_SHAPES

    def accuracy(slim, name):
        return base.evaluate_proto(slim, images, lines, metadata, tmp, name)[0]

    timing = TimingOptions(runs=args.runs, table=args.table)
    load_before = load()
    t = time.perf_counter()
    slim, report = onnxprune.prune(ocr.MODEL, target_latency=0.7, timing=timing, calibration=calib, input_shapes=shapes)
    lat = {"target": 0.7, "note": latency_note(report), "mac_fraction": report.after["macs"] / report.before["macs"],
           "accuracy": accuracy(slim, "ocr_lat"), "recovery": report.recovery.get("methods"),
           "prune_s": round(time.perf_counter() - t, 1)}
    paths, macs = [os.path.join(tmp, "ocr_lat.onnx")], []
    for target in OCR_MAC_TARGETS:
        slim, r = onnxprune.prune(ocr.MODEL, target_macs=target, calibration=calib, input_shapes=shapes)
        macs.append({"target_macs": target, "accuracy": accuracy(slim, f"ocr_macs{target}"),
                     "mac_fraction": r.after["macs"] / r.before["macs"], "recovery": r.recovery.get("methods")})
        paths.append(os.path.join(tmp, f"ocr_macs{target}.onnx"))
    check = bench.compare([ocr.MODEL] + paths, runs=args.runs, input_shapes=shapes)
    lat.update(ratios(check[0], check[1]))
    lat["latency"] = lat["achieved_check"]
    for m, timed in zip(macs, check[2:]):
        m.update(ratios(check[0], timed))
        m["latency"] = m["achieved_check"]
    at_same = _interpolate(macs, lat["latency"])
    print(f"PP-OCRv4: latency target 0.7 -> measured {lat['latency']:.3f}, accuracy {lat['accuracy']:.4f}; "
          f"MAC targets at the same latency: {at_same}", flush=True)
    return [{"model": "PP-OCRv4 rec", "batch": 1, "original_accuracy": accuracy(onnx.load(ocr.MODEL), "ocr_orig"),
             "latency_target": lat, "mac_targets": macs, "mac_accuracy_at_same_latency": at_same,
             "load_before": load_before, "load_after": load()}]


def _interpolate(macs, latency):
    """Accuracy of the MAC-pruned models at `latency`, linear between the two that bracket it."""
    pts = sorted((m["latency"], m["accuracy"]) for m in macs)
    for (l0, a0), (l1, a1) in zip(pts, pts[1:]):
        if l0 <= latency <= l1:
            return a0 + (a1 - a0) * (latency - l0) / max(l1 - l0, 1e-12)
    return None   # outside the measured range


def _table(header: list[str], rows: list[list]) -> list[str]:
    if not rows:   # a part this run did not record
        return []
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _checked(r) -> str:
    return f"{r['achieved_in_prune']:.3f} | {r['achieved_check']:.3f} / {r['achieved_check_median']:.3f}"


def markdown(result) -> str:
    lines = [f"* {part}: `{run['command']}` ({run['date']} UTC, {run['elapsed_s']} s; onnxruntime "
             f"{run['environment']['onnxruntime']}, {run['environment']['cpus']} cores shared with other jobs: "
             "load averages per row)" for part, run in result["runs"].items()] + [""]
    checked = ["achieved (in prune)", "achieved (check run: p10 / median)"]
    lines += _table(["model", "target", *checked, "original ms (p10)", "pruned ms (p10)", "MAC fraction", "within 5 %",
                     "load"],
                    [[f"{r['model']} {r['size']}² b1", r["target"], _checked(r), f"{r['original_ms']:.1f}",
                      f"{r['pruned_ms']:.1f}", f"{r['mac_fraction']:.3f}", "yes" if r["within_5pct"] else "no",
                      f"{r['load_before']}→{r['load_after']}"] for r in result.get("zoo", []) + result.get("vit", [])])
    lines += _table(["model", "batch", "target", *checked, "not slower (p10)", "load"],
                    [[f"{r['model']} {r['size']}²", r["batch"], r["target"], _checked(r),
                      "yes" if r["not_slower"] else "**no**", f"{r['load_before']}→{r['load_after']}"]
                     for r in result.get("batches", [])])
    rows = []
    for r in result.get("accuracy", []) + result.get("ocr", []):
        lat, same = r["latency_target"], r["mac_accuracy_at_same_latency"]
        macs = "; ".join(f"{m['target_macs']}: {m['latency']:.3f}, {100 * m['accuracy']:.1f} %" for m in r["mac_targets"])
        rows.append([f"{r['model']}, batch {r['batch']}, round-to {r.get('round_to', 'default')}",
                     f"{100 * r['original_accuracy']:.1f} %",
                     f"{lat.get('target', 0.5)}: {lat['latency']:.3f}, {100 * lat['accuracy']:.1f} %", macs,
                     "outside the measured range" if same is None else f"{100 * same:.1f} %",
                     f"{r['load_before']}→{r['load_after']}"])
    lines += _table(["model", "unpruned", "`--target-latency` T: latency (p10 ratio), accuracy",
                     "`--target-macs` T: latency (p10 ratio), accuracy", "MAC-pruned accuracy at the same latency",
                     "load"], rows)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["zoo", "batches", "accuracy"],
                    choices=["zoo", "batches", "accuracy", "ocr", "vit"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=112, help="image size of the batch 1/8/32 part")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--table", default=os.path.join("/tmp", "onnxprune_latency_table.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--round-to", type=int, default=None, help="accuracy part: --round-to of every prune "
                    "(default: the library's)")
    ap.add_argument("--tag", default="", help="results go to latency_target_TAG.{json,md}")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the recorded .json")
    args = ap.parse_args(argv)
    stem = os.path.join(args.out, "latency_target" + (f"_{args.tag}" if args.tag else ""))
    if args.render:
        md = markdown(json.load(open(stem + ".json")))
        with open(stem + ".md", "w") as f:
            f.write(md + "\n")
        print(md)
        return 0
    command = " ".join([COMMAND] + (argv if argv is not None else sys.argv[1:]))
    path = stem + ".json"
    result = json.load(open(path)) if os.path.exists(path) else {"runs": {}}   # parts run separately are merged
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            start = time.perf_counter()
            result[part] = {"zoo": part_zoo, "batches": part_batches, "accuracy": part_accuracy,
                            "ocr": part_ocr, "vit": part_vit}[part](args, tmp)
            result["runs"][part] = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "elapsed_s": round(time.perf_counter() - start), "environment": environment()}
            dump_json(result, path)
    md = markdown(result)
    with open(stem + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
