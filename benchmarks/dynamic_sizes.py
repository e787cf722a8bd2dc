"""Exports that take any image size: torchvision's CNNs exported with symbolic batch, height
and width, pruned at one size, checked by the masking oracle at batch 2 and at twice the
height and twice the width as well (docs/methods.md §2, README "What it covers").

    python benchmarks/dynamic_sizes.py [--models convnext_tiny ...] [--dynamo resnet50 ...]

Needs torchvision, which is not a dependency (`pip install torch==2.14.1 torchvision==0.29.1`;
onnxscript too for --dynamo): run it in a virtual environment that has them. Random weights
(`weights=None`), exported at 96 x 96 by the legacy exporter (opset 17, `dynamic_axes`) and,
for the names given to --dynamo, by the dynamo exporter (`dynamic_shapes`); pruned with
`--ratio 0.3 --criterion l1 --verify` (recover stats). Writes
benchmarks/results/dynamic_sizes.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnx  # noqa: E402

import onnxprune  # noqa: E402
from study import write_record  # noqa: E402

LEGACY = ["convnext_tiny", "efficientnet_v2_s", "mobilenet_v3_large", "regnet_y_400mf", "shufflenet_v2_x1_0",
          "squeezenet1_1", "mnasnet1_0", "googlenet", "resnext50_32x4d", "densenet121"]
DYNAMO = ["resnet50", "mobilenet_v3_large", "efficientnet_b0"]
SHAPE = (1, 3, 96, 96)


def module(name):
    import torch
    import torchvision
    torch.manual_seed(0)
    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **extra).eval()


def export(name: str, dynamo: bool, tmp: str) -> str:
    import torch
    path = os.path.join(tmp, f"{name}{'_dynamo' if dynamo else ''}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim
            dims = {0: Dim("N", min=1, max=64), 2: Dim("H", min=32, max=512), 3: Dim("W", min=32, max=512)}
            torch.onnx.export(module(name), (torch.randn(*SHAPE),), dynamo=True, input_names=["input"],
                              dynamic_shapes=(dims,)).save(path)
        else:
            buf = io.BytesIO()
            torch.onnx.export(module(name), (torch.randn(*SHAPE),), buf, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}})
            onnx.save(onnx.load_from_string(buf.getvalue()), path)
    return path


def check(name: str, dynamo: bool, tmp: str) -> dict:
    row = {"model": name, "exporter": "dynamo" if dynamo else "legacy"}
    try:
        path = export(name, dynamo, tmp)
    except Exception as e:  # noqa: BLE001 - an export torch cannot make is recorded, not ours
        return {**row, "export_error": str(e).strip().splitlines()[0][:200]}
    start = time.perf_counter()
    _, report = onnxprune.prune(path, 0.3, criterion="l1", verify=True, recover="stats",
                                input_shapes={"input": SHAPE})
    return {**row, "oracle_passed": report.oracle_passed, "max_rel_diff": report.oracle.max_rel_diff,
            "batches": list(report.oracle.batches), "mac_fraction": report.after["macs"] / report.before["macs"],
            "oracle_notes": [n for n in report.notes if n.startswith("oracle")],
            "seconds": round(time.perf_counter() - start, 2)}


def markdown(rows) -> str:
    lines = ["| model | exporter | oracle | max rel. diff | batches | other sizes | MACs kept |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "export_error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | export failed: {r['export_error']} | | | | |")
            continue
        sizes = "; ".join(n.removeprefix("oracle: ") for n in r["oracle_notes"]) or "none symbolic"
        lines.append(f"| {r['model']} | {r['exporter']} | {'pass' if r['oracle_passed'] else '**FAIL**'} | "
                     f"{r['max_rel_diff']:.1e} | {r['batches']} | {sizes} | {r['mac_fraction']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=LEGACY)
    ap.add_argument("--dynamo", nargs="*", default=DYNAMO)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [check(n, False, tmp) for n in args.models] + [check(n, True, tmp) for n in args.dynamo]
    md = markdown(rows)
    print(md)
    command = " ".join(["python benchmarks/dynamic_sizes.py"] + (argv if argv is not None else sys.argv[1:]))
    write_record(os.path.join(ROOT, "benchmarks", "results"), "dynamic_sizes",
                 {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows},
                 f"Command: `{command}`\n\n{md}\n")
    failed = [r for r in rows if r.get("oracle_passed") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
