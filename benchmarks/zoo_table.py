"""The zoo table: per model, MACs and parameters before/after at ratios 0.3 and 0.5,
groups, frozen groups and why, masking-oracle error, pass wall time.

    python benchmarks/zoo_table.py [--models ...] [--criterion l1] [--round-to 1]

Zoo models are our torch definitions (random init, BN kept, randomised BN statistics) at
the small test input sizes of models/export.py; PP-OCRv4 models come from the
rapidocr-onnxruntime wheel. Writes benchmarks/results/zoo_table.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
           "densenet_small", "densenet121", "googlenet", "resnext_small", "regnety_400mf",
           "ppocr_det", "ppocr_rec", "ppocr_cls"]
OCR = {"ppocr_det": ("ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 320, 320)}),
       "ppocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}),
       "ppocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)})}


def load(name):
    if name in OCR:
        import rapidocr_onnxruntime
        file, shapes = OCR[name]
        return os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", file), shapes
    from models import build
    return build(name), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--round-to", type=int, default=1, help="1: the ratio applies exactly")
    args = ap.parse_args()
    import onnxprune
    rows = []
    for name in args.models:
        source, shapes = load(name)
        for ratio in (0.3, 0.5):
            slim, r = onnxprune.prune(source, ratio, criterion=args.criterion, input_shapes=shapes,
                                      round_to=args.round_to, verify=True, recover="stats")
            frozen = Counter(g["frozen"] for g in r.frozen_groups)
            rows.append({"model": name, "ratio": ratio, "input": r.options["input_shapes"],
                         "macs": [r.before["macs"], r.after["macs"]],
                         "params": [r.before["params"], r.after["params"]],
                         "groups": len(r.groups), "frozen": dict(frozen),
                         "oracle": r.oracle.max_rel_diff, "oracle_noise": r.oracle.noise,
                         "oracle_passed": r.oracle_passed, "notes": r.notes,
                         "pass_s": round(r.timings["total"] - r.timings["verify"], 3),
                         "verify_s": r.timings["verify"]})
            print(_row(rows[-1]), flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "zoo_table.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(ROOT, "benchmarks", "results", "zoo_table.md"), "w") as f:
        f.write(HEADER + "\n".join(_row(r) for r in rows) + "\n\nFrozen groups:\n\n")
        for name in dict.fromkeys(r["model"] for r in rows):
            frozen = next(r["frozen"] for r in rows if r["model"] == name)
            f.write(f"- {name}: " + "; ".join(f"{n}× {why}" for why, n in frozen.items()) + "\n")


HEADER = ("| model | ratio | MACs before → after | params before → after | groups | frozen | "
          "oracle rel. diff (noise) | pass s |\n|---|---|---|---|---|---|---|---|\n")


def _row(r):
    m, p = r["macs"], r["params"]
    return (f"| {r['model']} | {r['ratio']} | {m[0] / 1e6:.1f}M → {m[1] / 1e6:.1f}M ({m[1] / m[0]:.0%}) | "
            f"{p[0] / 1e6:.2f}M → {p[1] / 1e6:.2f}M ({p[1] / p[0]:.0%}) | {r['groups']} | "
            f"{sum(r['frozen'].values())} | {r['oracle']:.1e} ({r['oracle_noise']:.0e}){'' if r['oracle_passed'] else ' FAIL'} | "
            f"{r['pass_s']:.2f} |")


if __name__ == "__main__":
    main()
