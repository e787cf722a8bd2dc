"""Shrink masked models: what "x % of filters zeroed" predicts against what `onnxprune shrink`
really obtains, and how far the shrunk model is from the masked one.

    python benchmarks/shrink_masked.py [--models resnet18 ...] [--rates 0.1 0.3 0.5 0.7]
                                       [--styles random magnitude slimming]

Per model (our torch definitions of models/zoo.py, random init, randomised BN statistics,
BN kept; the test input sizes of models/export.py; or an .onnx path relative to the
repository, such as the trained models/digits_resnet.onnx), mask style (models/masks.py) and rate:
the fraction of layer filters zeroed, the kept fraction that predicts (1 - zeroed), the
real kept fractions of parameters and MACs after `shrink`, by default and with
`--approximate`, and max |masked - shrunk| on the outputs (4 random inputs in [-1, 1],
absolute, and relative to the largest output). Writes benchmarks/results/shrink_masked.json
and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet_small", "models/digits_resnet.onnx",
                  "models/digits_mobilenet.onnx"]


def output_difference(a_proto, b_proto, samples=4, seed=0):
    """(max |a - b|, that divided by max |a|) over every output and sample."""
    sessions = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
                for p in (a_proto, b_proto)]
    rng = np.random.default_rng(seed)
    inp = sessions[0].get_inputs()[0]
    worst, scale = 0.0, 0.0
    for _ in range(samples):
        feeds = {inp.name: rng.uniform(-1, 1, inp.shape).astype(np.float32)}
        for a, b in zip(*(s.run(None, feeds) for s in sessions)):
            worst = max(worst, float(np.abs(a - b).max()))
            scale = max(scale, float(np.abs(a).max()))
    return worst, worst / max(scale, 1e-12)


def run(name, proto, style, rate, residual="coupled"):
    import onnxprune
    from models.masks import masked
    m = masked(proto, rate, (style,))
    row = {"model": name, "style": style, "rate": rate}
    for mode, approximate in (("exact", False), ("approx", True)):
        start = time.perf_counter()
        slim, report = onnxprune.shrink(m, approximate=approximate, residual=residual)
        s = report.shrink
        diff, rel = output_difference(m, slim)
        row.update({"filters": s["filters"], "zeroed_fraction": round(s["zeroed_fraction"], 4),
                    "predicted_kept": round(s["predicted_kept_fraction"], 4),
                    f"{mode}_params_kept": round(s["params_kept_fraction"], 4),
                    f"{mode}_macs_kept": round(s["macs_kept_fraction"], 4),
                    f"{mode}_classes_removed": s["classes_removed"],
                    f"{mode}_kept_inexact": s["classes_kept_inexact"],
                    f"{mode}_max_abs_diff": diff, f"{mode}_max_rel_diff": rel,
                    f"{mode}_seconds": round(time.perf_counter() - start, 2)})
    return row


def markdown(rows) -> str:
    head = ("| model | mask | rate | filters zeroed | predicted kept | params kept | MACs kept | "
            "kept: inexact | max abs diff | params kept (approx) | MACs kept (approx) | max rel diff (approx) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['style']} | {r['rate']:g} | {r['zeroed_fraction']:.3f} | "
                     f"{r['predicted_kept']:.3f} | {r['exact_params_kept']:.3f} | {r['exact_macs_kept']:.3f} | "
                     f"{r['exact_kept_inexact']} | {r['exact_max_abs_diff']:.1e} | {r['approx_params_kept']:.3f} | "
                     f"{r['approx_macs_kept']:.3f} | {r['approx_max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--styles", nargs="+", default=["random", "magnitude", "slimming"])
    ap.add_argument("--residual", default="coupled", choices=["coupled", "independent"],
                    help="independent: masks that differ across residual branches are honoured")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/shrink_masked[_independent]")
    args = ap.parse_args()
    args.out = args.out or os.path.join(ROOT, "benchmarks", "results", "shrink_masked"
                                        + ("_independent" if args.residual == "independent" else ""))
    from models import build
    rows = []
    for name in args.models:
        proto = onnx.load(os.path.join(ROOT, name)) if name.endswith(".onnx") else build(name)
        name = os.path.basename(name)
        for style in args.styles:
            for rate in args.rates:
                rows.append(run(name, proto, style, rate, args.residual))
                r = rows[-1]
                print(f"{name:15s} {style:9s} {rate:.1f}  zeroed {r['zeroed_fraction']:.3f}  predicted "
                      f"{r['predicted_kept']:.3f}  params {r['exact_params_kept']:.3f}  MACs {r['exact_macs_kept']:.3f}"
                      f"  diff {r['exact_max_abs_diff']:.1e}  | approx params {r['approx_params_kept']:.3f} "
                      f"MACs {r['approx_macs_kept']:.3f} rel diff {r['approx_max_rel_diff']:.1e}", flush=True)
    table = markdown(rows)
    print(table)
    with open(args.out + ".json", "w") as f:
        json.dump({"command": "python benchmarks/shrink_masked.py " + " ".join(sys.argv[1:]), "rows": rows}, f,
                  indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
