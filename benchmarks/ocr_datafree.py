"""PP-OCRv4 text recognition pruned WITHOUT any data, with the library defaults: the plan
chosen on synthetic images (`--allocator auto`, the default) against `--allocator rank`
(the data-free default before session 10).

    python benchmarks/ocr_datafree.py [--targets 0.9 0.8 0.7]

`onnxprune.prune(model, target_macs=T, input_shapes={"x": (1, 3, 48, 320)}, allocator=A)`;
nothing else is given, so both recover on synthetic images. Scored afterwards on
ocr_accuracy.py's rendered evaluation lines (character accuracy, rapidocr's own recognizer),
which never reach the library. Writes benchmarks/results/ocr_datafree.{json,md}.
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

import onnx  # noqa: E402

import ocr_accuracy as base  # noqa: E402
import onnxprune  # noqa: E402
from ocr_recovery import INPUT_SHAPES, MODEL, evaluation_lines  # noqa: E402

ALLOCATORS = {"rank": "rank", "default (auto)": None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.8, 0.7])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    lines, images, _, _ = evaluation_lines()
    metadata = list(onnx.load(MODEL).metadata_props)
    unpruned = base.char_accuracy(base.recognise(MODEL, images), lines)
    print(f"unpruned: {unpruned:.4f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            for name, allocator in ALLOCATORS.items():
                t = time.perf_counter()
                proto, report = onnxprune.prune(MODEL, target_macs=target, input_shapes=INPUT_SHAPES,
                                                allocator=allocator)
                seconds = time.perf_counter() - t
                accuracy, _, _ = base.evaluate_proto(proto, images, lines, metadata, tmp, "pruned")
                row = {"target": target, "allocator": name, "char_accuracy": accuracy,
                       "macs": report.after["macs"] / report.before["macs"], "seconds": round(seconds, 1),
                       "kept": report.options["allocator"], "coupled": report.options["coupled"],
                       "recovery": report.recovery.get("methods"),
                       "choice": next((n for n in report.notes if n.startswith("--allocator auto")), None)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"command": "python benchmarks/ocr_datafree.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "unpruned": unpruned, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ocr_datafree.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = "\n".join([
        "# PP-OCRv4 recognition pruned without data\n",
        f"`{result['command']}`, {result['date']}. Character accuracy on the rendered evaluation lines "
        f"(unpruned {unpruned:.4f}); achieved MAC fraction; prune time.\n",
        "| T | allocator | char accuracy | MACs | seconds | plan kept |", "|---|---|---|---|---|---|",
        *[f"| {r['target']} | {r['allocator']} | {r['char_accuracy']:.4f} | {r['macs']:.3f} | {r['seconds']} | "
          f"{r['kept']} (coupled {r['coupled']}) |" for r in rows]]) + "\n"
    with open(os.path.join(args.out, "ocr_datafree.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
