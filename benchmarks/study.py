"""Building blocks of the latency studies (latency.py, throughput.py, gpu_latency.py): the
zoo original, its pruned variants, and the rows of one alternating timing run."""
from __future__ import annotations

import json
import os
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def study_arguments(ap) -> None:
    """The options of the throughput and GPU studies: what is timed and where it goes."""
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.9, 0.7, 0.5], help="MAC targets")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--size", type=int, default=224, help="image side")
    ap.add_argument("--results", default=RESULTS, help="folder for the .json and .md")
    ap.add_argument("--cache", default=os.path.join("/tmp", "onnxprune_latency_cache"),
                    help="exported originals are kept here; '' disables")


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


def samples_per_s(batch: int, median_ms: float) -> float:
    return 1e3 * batch / median_ms


def acceptance(rows, keys) -> str:
    """Issue 13's bar: no model pruned to a MAC target <= 0.9 runs slower than its original
    (latency speedup < 1) in any configuration; `keys` name the configuration's fields."""
    judged = [r for r in rows if r["target"] <= 0.9]
    slower = [r for r in judged if r["slower"]]
    if not judged:
        return "Acceptance not judged: no row at a MAC target <= 0.9."
    if not slower:
        return (f"Acceptance met: no pruned model is slower than its original at a MAC target <= 0.9 "
                f"({len(judged)} rows).")
    return (f"Acceptance NOT met: {len(slower)} of {len(judged)} rows at a MAC target <= 0.9 are slower: "
            + "; ".join(f"{r['model']}@{r['target']:g} " + " ".join(f"{k} {r[k]}" for k in keys)
                        + f" {r['speedup']:.2f}x" for r in slower) + ".")


def pivot(rows, keys, cell, original_columns, target_title=lambda t: f"{t:g}") -> list[str]:
    """Markdown lines: one per (model, *keys), the `original_columns` (title -> text of a
    row) describing the original, then one column per MAC target holding `cell(row)`, bold
    where the pruned model is slower."""
    targets = sorted({r["target"] for r in rows}, reverse=True)
    lines = ["| model | " + " | ".join([*keys, *original_columns]) + " | "
             + " | ".join(target_title(t) for t in targets) + " |",
             "|---" * (1 + len(keys) + len(original_columns) + len(targets)) + "|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["model"],) + tuple(r[k] for k in keys), {})[r["target"]] = r
    for key, cells in groups.items():
        first = next(iter(cells.values()))
        texts = [cell(cells[t]) if t in cells else "–" for t in targets]
        texts = [f"**{x}**" if t in cells and cells[t]["speedup"] < 1 else x for x, t in zip(texts, targets)]
        lines.append("| " + " | ".join([*map(str, key), *(f(first) for f in original_columns.values()), *texts]) + " |")
    return lines


def speedup_table(rows, keys) -> list[str]:
    """`pivot` with the latency speedup over the original and the pruned model's samples/s."""
    return pivot(rows, keys, lambda r: f"{r['speedup']:.2f}× ({samples_per_s(r['batch'], r['median_ms']):.1f})",
                 {"original ms": lambda r: f"{r['orig_median_ms']:.2f}",
                  "original samples/s": lambda r: f"{samples_per_s(r['batch'], r['orig_median_ms']):.1f}"},
                 lambda t: f"target {t:g}: speedup (samples/s)")


def write_record(results: str, stem: str, record: dict, markdown: str) -> None:
    """RESULTS/STEM.json (the record) and .md; prints the acceptance line (when the record
    has one) and where they are."""
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, stem + ".json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(results, stem + ".md"), "w") as f:
        f.write(markdown)
    if isinstance(record, dict) and "acceptance" in record:
        print(record["acceptance"])
    print(f"recorded in {os.path.join(results, stem)}.json and .md")
