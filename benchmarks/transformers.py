"""Transformers: per model, groups found (prunable, frozen and why), MACs and parameters
before and after --ratio 0.3, the masking oracle, pass time, and where --target-macs 0.7
lands.

    python benchmarks/transformers.py [--models vit vit_fused_qkv torchvision_vit swin maxvit] [--dynamo] [--dynamic-batch]

The models are models/zoo_transformers.py's and zoo_hybrids.py's (random init, small widths; torchvision_vit_b16:
vit_b_16's sizes on the same definition; swin: torchvision's SwinTransformer topology, 40x40, patch 4,
dim 32, two stages of two blocks, window 4, heads 2/4; maxvit: torchvision's MaxVit topology, 32x32,
stem 16, two stages (32, 64) of one MBConv + block + grid attention layer, head dim 16, partition 4),
exported by the legacy exporter (opset 17) or with --dynamo by the dynamo exporter (needs onnxscript).
With --dynamic-batch the input's batch is symbolic ("batch"), as deployment exports have it;
the oracle then also compares at batch 2, and the pruned model is run at batch 3.
Criterion l1, --round-to 1 for the ratio (it applies exactly), 8 for the MAC target.
Writes benchmarks/results/transformers[_dynamo][_dynbatch].{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from study import write_record  # noqa: E402

MODELS = ["vit", "vit_fused_qkv", "torchvision_vit", "torchvision_vit_b16", "swin", "maxvit"]


def build(name):
    """models/zoo_extra.py's EXTRA, and torchvision's vit_b_16 sizes on our definition
    (224x224, patch 16, 768 wide, 12 blocks of 12 heads, MLP 3072; 86M parameters)."""
    from models.zoo_extra import build_extra
    if name != "torchvision_vit_b16":
        return build_extra(name)
    import torch
    from models.zoo_transformers import TorchvisionViT
    torch.manual_seed(0)
    return TorchvisionViT(1000, image=224, patch=16, dim=768, depth=12, heads=12, mlp_dim=3072).eval(), (1, 3, 224, 224)


def measure(name, dynamo, dynamic_batch=False):
    import onnxprune
    from models.zoo_extra import export
    module, shape = build(name)
    proto = export(module, shape, dynamo=dynamo, dynamic_batch=dynamic_batch)
    slim, r = onnxprune.prune(proto, 0.3, criterion="l1", round_to=1, verify=True, recover="stats")
    _, t = onnxprune.prune(proto, None, target_macs=0.7, criterion="l1", round_to=8, recover="stats")
    live = [g for g in r.groups if g["frozen"] is None and g["channels_before"] > 1]
    exporter = ("dynamo" if dynamo else "legacy") + (", symbolic batch" if dynamic_batch else "")
    extra = {"oracle_batches": list(r.oracle.batches), "batch_3_output": _run_at_batch(slim, shape, 3)} \
        if dynamic_batch else {}
    return {"model": name, "exporter": exporter, "input": list(shape), **extra,
            "groups": len(r.groups), "prunable": sorted(g["channels_before"] for g in live),
            "frozen": dict(Counter(_short(g["frozen"]) for g in r.frozen_groups)),
            "macs": [r.before["macs"], r.after["macs"]], "params": [r.before["params"], r.after["params"]],
            "oracle": r.oracle.max_rel_diff, "oracle_passed": r.oracle_passed,
            "pass_s": round(r.timings["total"] - r.timings["verify"], 3),
            "target_macs_0.7": round(t.after["macs"] / t.before["macs"], 4)}


def _run_at_batch(proto, shape, batch):
    """Output shapes of the pruned model run by onnxruntime at `batch`."""
    import numpy as np
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (batch, *shape[1:])).astype(np.float32)
    return [list(o.shape) for o in sess.run(None, {sess.get_inputs()[0].name: x})]


def _short(reason):
    """The reason without the node name: 'LayerNormalization <node>: why' -> 'LayerNormalization: why'."""
    head, _, why = reason.partition(": ")
    return f"{head.split(' ')[0]}: {why}" if why else reason


def _markdown(rows):
    out = ["| model | exporter | groups (prunable: count× width) | frozen | MACs before → after | "
           "params before → after | oracle | pass s | --target-macs 0.7 |", "|---|" * 1 + "---|" * 8]
    for r in rows:
        m, p = r["macs"], r["params"]
        frozen = "; ".join(f"{n}× {why}" for why, n in r["frozen"].items())
        widths = ", ".join(f"{n}× {w}" for w, n in sorted(Counter(r["prunable"]).items()))
        out.append(f"| {r['model']} | {r['exporter']} | {r['groups']} ({widths}) | "
                   f"{frozen} | {m[0]:,} → {m[1]:,} ({m[1] / m[0]:.1%}) | {p[0]:,} → {p[1]:,} ({p[1] / p[0]:.1%}) | "
                   f"{r['oracle']:.1e}{'' if r['oracle_passed'] else ' FAIL'} | {r['pass_s']:.2f} | "
                   f"{r['target_macs_0.7']:.4f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--dynamo", action="store_true", help="export with the dynamo exporter")
    ap.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.dynamo, args.dynamic_batch))
        print(json.dumps(rows[-1]), flush=True)
    stem = os.path.join(ROOT, "benchmarks", "results", "transformers" + ("_dynamo" if args.dynamo else "")
                        + ("_dynbatch" if args.dynamic_batch else ""))
    print(_markdown(rows))
    write_record(os.path.dirname(stem), os.path.basename(stem), rows, _markdown(rows))


if __name__ == "__main__":
    main()
