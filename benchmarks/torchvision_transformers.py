"""torchvision's own transformers, exported and pruned: issue 14's acceptance on the real models.

    python benchmarks/torchvision_transformers.py [--models vit_b_16 swin_t ...] [--dynamo swin_t ...]
                                                  [--cache /tmp/onnxprune_torchvision]

Needs torchvision, which is not a dependency (`pip install torch==2.14.1 torchvision==0.29.1`,
a large build; onnxscript too for --dynamo): run it in a virtual environment that has them.
Each model is built by torchvision with random weights (`weights=None`), exported at
224x224, batch 1, opset 17 (legacy exporter, and the dynamo exporter for the names given to
--dynamo), then pruned by onnxprune at `--ratio 0.3 --verify` and at `--target-macs 0.7`
(criterion l1). Recorded per export: groups (prunable / frozen, with reasons), MACs and
parameters before and after, the oracle, pass time, where the MAC target landed.
Writes benchmarks/results/torchvision_transformers.{json,md}.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import onnx  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.api import analyze_model  # noqa: E402
from study import write_record  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "torchvision_transformers")
LEGACY = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s",
          "swin_v2_b", "maxvit_t"]
DYNAMO = ["vit_b_32", "swin_t", "maxvit_t"]


def exported(name: str, dynamo: bool, cache: str) -> str:
    path = os.path.join(cache, f"{name}{'_dynamo' if dynamo else ''}.onnx")
    if os.path.exists(path):
        return path
    import torch
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    os.makedirs(cache, exist_ok=True)
    tmp = path + ".tmp.onnx"
    # not under no_grad: nn.MultiheadAttention would take its fused fast path, which the
    # legacy exporter cannot write
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), tmp, opset_version=17 if not dynamo else 18,
                      dynamo=dynamo)
    proto = onnx.load(tmp)
    onnx.save(proto, path)
    for f in os.listdir(cache):
        if f.startswith(os.path.basename(tmp)):
            os.remove(os.path.join(cache, f))
    return path


def study(path: str) -> dict:
    _, couplings = analyze_model(path)
    prunable = [g for g in couplings.groups if g.frozen is None and g.width > 1]
    frozen = collections.Counter(_reason(g.frozen) for g in couplings.groups if g.frozen)
    start = time.perf_counter()
    _, report = onnxprune.prune(path, ratio=0.3, criterion="l1", verify=True, recover="none")
    wall = time.perf_counter() - start
    _, target = onnxprune.prune(path, target_macs=0.7, criterion="l1", recover="none")
    return {"groups": len(couplings.groups), "prunable": len(prunable),
            "prunable_widths": dict(collections.Counter(g.width for g in prunable)),
            "frozen": dict(frozen), "macs_before": report.before["macs"], "macs_after": report.after["macs"],
            "params_before": report.before["params"], "params_after": report.after["params"],
            "oracle_passed": report.oracle_passed, "oracle_max_rel_diff": report.oracle.max_rel_diff,
            "pass_s": round(report.timings["total"] - report.timings.get("verify", 0), 2), "wall_s": round(wall, 1),
            "target_0.7": round(target.after["macs"] / target.before["macs"], 4)}


def _reason(text: str) -> str:
    """A frozen reason without its node name: 'LayerNormalization: normalises over ...'."""
    head, _, tail = text.partition(": ")
    op = head.split(" ")[0]
    return text if not tail else tail if tail.startswith(op) else f"{op}: {tail}"


def markdown(rows) -> str:
    lines = ["| model | exporter | groups: prunable (count × width) | frozen (count × reason) | MACs before → after "
             "| params before → after | oracle | pass s | --target-macs 0.7 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['error']} | | | | | | |")
            continue
        widths = ", ".join(f"{n}× {w}" for w, n in sorted(r["prunable_widths"].items(), key=lambda x: int(x[0])))
        frozen = "; ".join(f"{n}× {k}" for k, n in r["frozen"].items())
        lines.append(f"| {r['model']} | {r['exporter']} | {r['prunable']} of {r['groups']} ({widths}) | {frozen} | "
                     f"{r['macs_before']:,} → {r['macs_after']:,} ({r['macs_after'] / r['macs_before']:.1%}) | "
                     f"{r['params_before']:,} → {r['params_after']:,} | "
                     f"{'pass' if r['oracle_passed'] else 'FAIL'} {r['oracle_max_rel_diff']:.1e} | {r['pass_s']} | "
                     f"{r['target_0.7']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=LEGACY)
    ap.add_argument("--dynamo", nargs="*", default=DYNAMO)
    ap.add_argument("--cache", default="/tmp/onnxprune_torchvision")
    args = ap.parse_args()
    import torch
    import torchvision
    rows = []
    for name, dynamo in [(m, False) for m in args.models] + [(m, True) for m in args.dynamo]:
        row = {"model": name, "exporter": "dynamo" if dynamo else "legacy"}
        try:
            path = exported(name, dynamo, args.cache)
        except Exception as e:  # noqa: BLE001 - an export failure is recorded, not ours
            row["error"] = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        else:
            row.update(study(path))
        print(json.dumps(row), flush=True)
        rows.append(row)
    met = [r for r in rows if "error" not in r and r["oracle_passed"]
           and r["macs_after"] <= 0.8 * r["macs_before"] and abs(r["target_0.7"] - 0.7) <= 0.02]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "onnx": onnx.__version__, "rows": rows,
              "acceptance": f"{len(met)} of {len(rows)} exports oracle-exact with MACs <= 0.8 at --ratio 0.3 "
                            "and --target-macs 0.7 within 0.02"}
    print(markdown(rows))
    write_record(os.path.dirname(OUT), os.path.basename(OUT), result, markdown(rows))


if __name__ == "__main__":
    main()
