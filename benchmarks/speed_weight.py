"""`--allocator latency` under a MAC budget: how much faster a model at the same MACs runs
when the allocator also weighs measured milliseconds per MAC, and what that costs in accuracy.

    python benchmarks/speed_weight.py [--parts zoo ocr digits] [--weights 0 2 8 32] [--repeat 2]

zoo: ResNet-50 and MobileNetV2 (models.build, random weights, BN kept, 224², batch 1, 1
thread) at `--target-macs 0.5`, `recover="stats"`: the default allocator (rank) against
`--allocator latency` at each weight. The original and every pruned model are timed in one
alternating run of onnxprune.bench.compare, `--repeat` times. Efficiency is the latency
speedup over the MAC speedup (issue 13 asks for at least 1.0 on ResNet-50 at half its MACs):
the MAC fraction over the latency fraction, by 10th percentiles.

ocr: PP-OCRv4 recognition (Paddle's export in rapidocr_onnxruntime), 48 x 320, batch 1, with
the 256 calibration lines of benchmarks/ocr_recovery.py (criterion and recovery auto), at MAC
targets 0.8 and 0.7: the default allocator against `--allocator latency` at each weight;
character accuracy on the evaluation lines, latency in one alternating run per target.

digits: the trained digits ResNet and MobileNet (seed 0 and 1), 256 calibration TRAIN images,
450 TEST images scored afterwards, MAC targets 0.7 and 0.5, batch 32: the same comparison.

Writes benchmarks/results/speed_weight.{json,md}.
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
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import TimingOptions, bench  # noqa: E402
import accuracy_digits  # noqa: E402
from accuracy_recovery import dump_json, environment  # noqa: E402
from latency_target import load, zoo_model  # noqa: E402

COMMAND = "python benchmarks/speed_weight.py"


def variants(weights):
    """(name, prune keyword arguments): the default allocator without data (rank; named, since
    with calibration data the default is auto), then the latency allocator."""
    return [("rank", {"allocator": "rank"})] + [(f"latency W={w:g}", {"allocator": "latency", "speed_weight": w}) for w in weights]


def timed(paths, repeat, **kw) -> list[list[dict]]:
    """Per repeat, per pruned model: latency fractions against the original (paths[0])."""
    out = []
    for _ in range(repeat):
        t = bench.compare(paths, **kw)
        out.append([{"latency": x.p10_ms / t[0].p10_ms, "latency_median": x.median_ms / t[0].median_ms,
                     "original_ms": t[0].p10_ms} for x in t[1:]])
    return out


def part_zoo(args, tmp) -> list[dict]:
    rows = []
    for name in ("resnet50", "mobilenet_v2"):
        path = zoo_model(name, 224)
        timing = TimingOptions(runs=args.runs, table=args.table)
        pruned, paths = [], [path]
        for label, kw in variants(args.weights):
            t = time.perf_counter()
            slim, report = onnxprune.prune(path, target_macs=0.5, recover="stats", timing=timing, **kw)
            out = os.path.join(tmp, f"{name}_{len(paths)}.onnx")
            onnx.save(slim, out)
            paths.append(out)
            pruned.append({"variant": label, "macs": report.after["macs"] / report.before["macs"],
                           "prune_s": round(time.perf_counter() - t, 1),
                           "notes": [n for n in report.notes if n.startswith(("allocator latency", "latency table"))]})
        load_before = load()
        runs = timed(paths, args.repeat, runs=args.runs)
        for i, p in enumerate(pruned):
            p["latency"] = [r[i]["latency"] for r in runs]
            p["latency_median"] = [r[i]["latency_median"] for r in runs]
            p["efficiency"] = [p["macs"] / lat for lat in p["latency"]]
            print(f"{name} {p['variant']}: MACs {p['macs']:.3f}, latency "
                  f"{', '.join(f'{x:.3f}' for x in p['latency'])}, efficiency "
                  f"{', '.join(f'{x:.3f}' for x in p['efficiency'])}", flush=True)
        rows.append({"model": name, "target_macs": 0.5, "pruned": pruned, "load_before": load_before,
                     "load_after": load()})
    return rows


def part_ocr(args, tmp) -> list[dict]:
    import ocr_accuracy as base
    import ocr_recovery as ocr
    from onnxprune.calibration import load_calibration
    lines, images, font_path, recognizer = ocr.evaluation_lines()
    calib_x = ocr.build_calibration(lines, font_path, recognizer)[0]
    calib = load_calibration([{"x": calib_x[i:i + 32]} for i in range(0, len(calib_x), 32)],
                             {"x": (None, 3, 48, ocr.WIDTH)})
    metadata = list(onnx.load(ocr.MODEL).metadata_props)
    timing = TimingOptions(runs=args.runs, table=args.table)
    original = base.evaluate_proto(onnx.load(ocr.MODEL), images, lines, metadata, tmp, "orig")[0]
    rows = []
    for target in (0.8, 0.7):
        pruned, paths = [], [ocr.MODEL]
        for label, kw in variants(args.ocr_weights):
            t = time.perf_counter()
            slim, report = onnxprune.prune(ocr.MODEL, target_macs=target, calibration=calib, timing=timing,
                                           input_shapes=ocr.INPUT_SHAPES, **kw)
            name = f"ocr_{target}_{len(paths)}"
            pruned.append({"variant": label, "macs": report.after["macs"] / report.before["macs"],
                           "accuracy": base.evaluate_proto(slim, images, lines, metadata, tmp, name)[0],
                           "recovery": report.recovery.get("methods"), "prune_s": round(time.perf_counter() - t, 1)})
            paths.append(os.path.join(tmp, name + ".onnx"))
        load_before = load()
        runs = timed(paths, args.repeat, runs=args.runs, input_shapes=ocr.INPUT_SHAPES)
        for i, p in enumerate(pruned):
            p["latency"] = [r[i]["latency"] for r in runs]
            p["latency_median"] = [r[i]["latency_median"] for r in runs]
            print(f"PP-OCRv4 T={target} {p['variant']}: MACs {p['macs']:.3f}, accuracy {p['accuracy']:.3f}, "
                  f"latency {', '.join(f'{x:.3f}' for x in p['latency'])}", flush=True)
        rows.append({"model": "PP-OCRv4 rec", "target_macs": target, "original_accuracy": original,
                     "pruned": pruned, "load_before": load_before, "load_after": load()})
    return rows


def part_digits(args, tmp) -> list[dict]:
    from models.digits import load_digits_split
    x_train, _, x_test, y_test = load_digits_split(16)
    calib = [{"input": x_train[np.random.default_rng(0).permutation(len(x_train))[:256]]}]
    timing = TimingOptions(batch=32, runs=args.runs, table=args.table)
    rows = []
    for name in ("digits_resnet", "digits_resnet_s1", "digits_mobilenet", "digits_mobilenet_s1"):
        path = os.path.join(ROOT, "models", f"{name}.onnx")
        for target in (0.7, 0.5):
            pruned, paths = [], [path]
            for label, kw in variants(args.ocr_weights):
                slim, report = onnxprune.prune(path, target_macs=target, calibration=calib, timing=timing, **kw)
                out = os.path.join(tmp, f"{name}_{target}_{len(paths)}.onnx")
                onnx.save(slim, out)
                paths.append(out)
                pruned.append({"variant": label, "macs": report.after["macs"] / report.before["macs"],
                               "accuracy": accuracy(slim, x_test, y_test)})
            load_before = load()
            runs = timed(paths, args.repeat, batch=32, runs=args.runs)
            for i, p in enumerate(pruned):
                p["latency"] = [r[i]["latency"] for r in runs]
                print(f"{name} T={target} {p['variant']}: MACs {p['macs']:.3f}, accuracy {p['accuracy']:.4f}, "
                      f"latency {', '.join(f'{x:.3f}' for x in p['latency'])}", flush=True)
            rows.append({"model": name, "target_macs": target, "original_accuracy": accuracy(onnx.load(path),
                                                                                              x_test, y_test),
                         "pruned": pruned, "load_before": load_before, "load_after": load()})
    return rows


def accuracy(proto, x, y) -> float:
    return accuracy_digits.accuracy(proto, x, y) / len(y)


def markdown(result) -> str:
    lines = ["# `--allocator latency` under a MAC budget (benchmarks/speed_weight.py)", ""]
    for part, rows in result.items():
        if part == "runs":
            continue
        run = result["runs"][part]
        lines += [f"## {part}", "", f"`{run['command']}` ({run['date']}, {run['elapsed_s']} s)", "",
                  "| model | T | variant | MACs | latency (p10 ratio, per repeat) | efficiency | accuracy | load |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for p in r["pruned"]:
                acc = f"{100 * p['accuracy']:.1f} % (unpruned {100 * r['original_accuracy']:.1f})" \
                    if "accuracy" in p else "—"
                eff = ", ".join(f"{p['macs'] / x:.3f}" for x in p["latency"])
                lines.append(f"| {r['model']} | {r['target_macs']} | {p['variant']} | {p['macs']:.3f} | "
                             f"{', '.join(f'{x:.3f}' for x in p['latency'])} | {eff} | {acc} | "
                             f"{r['load_before']}→{r['load_after']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["zoo"], choices=["zoo", "ocr", "digits"])
    ap.add_argument("--weights", nargs="+", type=float, default=[0, 2, 8, 32], help="zoo part's speed weights")
    ap.add_argument("--ocr-weights", nargs="+", type=float, default=[8], help="ocr and digits parts' speed weights")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--table", default=os.path.join("/tmp", "onnxprune_latency_table.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    path = os.path.join(args.out, "speed_weight.json")
    result = json.load(open(path)) if os.path.exists(path) else {"runs": {}}   # parts run separately are merged
    command = " ".join([COMMAND] + (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            start = time.perf_counter()
            result[part] = {"zoo": part_zoo, "ocr": part_ocr, "digits": part_digits}[part](args, tmp)
            result["runs"][part] = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "elapsed_s": round(time.perf_counter() - start), "environment": environment()}
            dump_json(result, path)
    md = markdown(result)
    with open(os.path.join(args.out, "speed_weight.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
