"""Building blocks of the latency studies (latency.py, throughput.py, gpu_latency.py): the
zoo original, its pruned variants, and the rows of one alternating timing run."""
from __future__ import annotations

import os
import time


def conv_widths(proto):
    """Output-channel counts of the Conv nodes (to look at alignment)."""
    inits = {t.name: t for t in proto.graph.initializer}
    widths = []
    for n in proto.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits:
            widths.append(int(inits[n.input[1]].dims[0]))
    return widths


def alignment(widths):
    n = max(len(widths), 1)
    return {f"mult{k}": round(sum(w % k == 0 for w in widths) / n, 3) for k in (4, 8, 16)}


def original(model: str, size: int, cache: str):
    """The zoo model at size×size (torch, random init, BN kept, batch fixed to 1), exported
    once into `cache` (export is deterministic; '' disables the cache)."""
    import onnx
    from models import build
    cached = os.path.join(cache, f"{model}_{size}.onnx") if cache else None
    if cached and os.path.exists(cached):
        return onnx.load(cached)
    proto = build(model, (1, 3, size, size), keep_bn=True)
    if cached:
        os.makedirs(cache, exist_ok=True)
        onnx.save(proto, cached + ".tmp")
        os.replace(cached + ".tmp", cached)
    return proto


def prune_variant(proto, model, target, round_to, coupled, criterion="bgsc", fold="exact"):
    """(what the row records about the pruned model, the pruned ModelProto): `proto` pruned to
    the MAC `target` with the fast data-free recovery (stats)."""
    import onnxprune
    t0 = time.perf_counter()
    slim, rep = onnxprune.prune(proto, criterion=criterion, target_macs=target,
                                round_to=round_to, coupled=coupled, fold=fold, recover="stats")
    info = {"model": model, "target": target, "round_to": round_to, "coupled": coupled,
            "macs_before": rep.before["macs"], "macs_after": rep.after["macs"],
            "params_before": rep.before["params"], "params_after": rep.after["params"],
            "mac_fraction": rep.after["macs"] / rep.before["macs"],
            "mac_speedup": rep.before["macs"] / max(rep.after["macs"], 1),
            "nodes_before": sum(rep.before["ops"].values()),
            "nodes_after": sum(rep.after["ops"].values()),
            "ops_added": {k: v - rep.before["ops"].get(k, 0) for k, v in rep.after["ops"].items()
                          if v != rep.before["ops"].get(k, 0)},
            "alignment": alignment(conv_widths(slim)),
            "prune_s": round(time.perf_counter() - t0, 2),
            "notes": [n for n in rep.notes if n.startswith("target")]}
    return info, slim


def timing_rows(infos, reps, **config) -> list[dict]:
    """One row per pruned model from `reps`, the repeats of one alternating run
    (lists of bench.Timing, the original first, then the models of `infos` in order): the
    medians over the repeats, the spread of the speedup, and whether a model pruned to a
    target <= 0.9 came out slower than its original."""
    import numpy as np
    med = lambda xs: float(np.median(xs))  # noqa: E731
    ref = [r[0] for r in reps]
    rows = []
    for k, info in enumerate(infos, start=1):
        ts = [r[k] for r in reps]
        speedups = [t.speedup for t in ts]
        speedup = med(speedups)
        rows.append({**info, **config, "repeat": len(reps),
                     "orig_median_ms": round(med([t.median_ms for t in ref]), 3),
                     "orig_p10_ms": round(med([t.p10_ms for t in ref]), 3),
                     "orig_p90_ms": round(med([t.p90_ms for t in ref]), 3),
                     "median_ms": round(med([t.median_ms for t in ts]), 3),
                     "p10_ms": round(med([t.p10_ms for t in ts]), 3),
                     "p90_ms": round(med([t.p90_ms for t in ts]), 3), "speedup": round(speedup, 3),
                     "speedup_min": round(min(speedups), 3), "speedup_max": round(max(speedups), 3),
                     "efficiency": round(speedup / info["mac_speedup"], 3),
                     "slower": bool(speedup < 1.0 and info["target"] <= 0.9)})
    return rows
