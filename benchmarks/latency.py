"""Latency of pruned models against their originals, in onnxruntime.

    python benchmarks/latency.py [--models resnet50 mobilenet_v2] [--targets 0.5]
        [--threads 1 2] [--batches 1] [--runs 15] [--runs-batched 5] [--warmup 3]
        [--round-to 16] [--coupled all] [--criterion bgsc] [--size 224]
        [--provider cpu|cuda] [--repeat 1] [--batch-configs MODEL:BATCH ...] [--tag NAME]
        [--no-plot] [--no-inspect] [--cache DIR]
    python benchmarks/latency.py --probe-nchwc      # which widths onnxruntime runs as NCHWc
    python benchmarks/latency.py --replot benchmarks/results/latency.json
    python benchmarks/latency.py --pivot benchmarks/results/latency.json   # compact table

For each model: export it from the zoo at SIZE×SIZE (torch, random init, BN kept,
batch dimension fixed to 1; onnxprune.bench.compare makes it symbolic for larger
batches), prune it with CRITERION at every (MAC target, --round-to, --coupled)
combination, then, for every (threads, batch) configuration, time the original and all
its pruned variants in ONE alternating run of `onnxprune.bench.compare` (the only
timing loop; the original is the reference). Per pruned model it records median, p10,
p90, latency speedup (original median / pruned median), MAC speedup (MACs before /
MACs after) and efficiency = latency speedup / MAC speedup. With --repeat N the whole
alternating run is repeated and the rows give the median (and min/max) over the N runs.
Unless --no-inspect, it also counts, in onnxruntime's optimised graph, the convolutions
run with NCHWc (blocked) kernels, those left on plain NCHW kernels, and the layout
reorders: the usual reason for a pruned model to be slower than its original.

Writes benchmarks/results/latency[_TAG].json, .md (tables) and .png (latency speedup
against MAC speedup: one panel per (threads, batch), one line per model / variant). `--provider cuda` does the same on
CUDA; without a CUDA provider it records "not measured: no CUDA provider" and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

from onnxprune.budget import COUPLED  # noqa: E402
from study import alignment, conv_widths, original, prune_variant, timing_rows  # noqa: E402
from study import pivot as study_pivot  # noqa: E402


def _git_state() -> str:
    """HEAD commit, plus '+dirty' when onnxprune/ or passes/ differ from it (the library
    measured is the working tree, not necessarily the commit)."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "onnxprune", "passes"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _variant_name(model, target, round_to, coupled):
    return f"{model}@{target:g} r{round_to}" + ("" if coupled == "all" else f" c={coupled}")


def _spread(r):
    return f" ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})" if r.get("repeat", 1) > 1 else ""


def _ort_cell(r):
    if "ort" not in r:
        return "–"
    o, p = r["ort_original"], r["ort"]
    return (f"{o['nchwc_conv']}/{o['plain_conv']}, {o['reorders']} → "
            f"{p['nchwc_conv']}/{p['plain_conv']}, {p['reorders']}")


def ort_layout(proto, threads: int = 1) -> dict:
    """Operators of the graph onnxruntime actually runs (ORT_ENABLE_ALL, CPU): how many
    convolutions went to the NCHWc blocked kernels, how many stayed plain NCHW, and how
    many layout reorders were inserted between the two."""
    import tempfile
    from collections import Counter
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = path
        opts.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        opt = onnx.load(path)
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in opt.graph.node)
    nchwc = sum(v for k, v in ops.items() if k.startswith("com.microsoft.nchwc.") and "Conv" in k)
    plain = ops.get("Conv", 0) + ops.get("com.microsoft.FusedConv", 0)
    reorders = sum(v for k, v in ops.items() if "Reorder" in k)
    return {"nchwc_conv": nchwc, "plain_conv": plain, "reorders": reorders, "nodes": sum(ops.values()),
            "ops": dict(ops)}


def nchwc_probe(widths=(6, 8, 12, 13, 16, 18, 20, 24, 30, 36, 40, 64)) -> list[dict]:
    """Which convolutions onnxruntime (ORT_ENABLE_ALL, CPU) moves to its NCHWc kernels, as
    a function of channel count: a 3x3 conv 32 -> C followed either by a 1x1 conv C -> 64
    or by a depthwise 3x3 conv on C channels. Reports the kernels chosen and the padded
    (blocked) weight shapes, which reveal the block size."""
    import tempfile
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def graph(c, depthwise):
        rng = np.random.default_rng(0)
        inits = [numpy_helper.from_array(rng.random((c, 32, 3, 3), dtype=np.float32), "wa")]
        if depthwise:
            inits.append(numpy_helper.from_array(rng.random((c, 1, 3, 3), dtype=np.float32), "wb"))
            second = helper.make_node("Conv", ["a", "wb"], ["y"], group=c, pads=[1, 1, 1, 1])
        else:
            inits.append(numpy_helper.from_array(rng.random((64, c, 1, 1), dtype=np.float32), "wb"))
            second = helper.make_node("Conv", ["a", "wb"], ["y"])
        g = helper.make_graph([helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]), second], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    def kernels(m):
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
            opts.log_severity_level = 3
            ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            opt = onnx.load(opts.optimized_model_filepath)
        dims = {t.name: list(t.dims) for t in opt.graph.initializer}
        return [("NCHWc " if n.domain.endswith("nchwc") else "") + n.op_type
                + (str(dims[n.input[1]]) if len(n.input) > 1 and n.input[1] in dims else "") for n in opt.graph.node]

    rows = []
    for c in widths:
        rows.append({"C": c, "conv 32->C, 1x1 C->64": kernels(graph(c, False)),
                     "conv 32->C, depthwise C": kernels(graph(c, True))})
        print(f"C={c:3d}  1x1: {' > '.join(rows[-1]['conv 32->C, 1x1 C->64'])}\n"
              f"        dw:  {' > '.join(rows[-1]['conv 32->C, depthwise C'])}")
    return rows


def plot(rows, path, title) -> None:
    """Latency speedup against MAC speedup: one panel per (threads, batch), one colour per
    model, one line style per --round-to / --coupled variant."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install matplotlib)")
        return
    configs = sorted({(r["threads"], r["batch"]) for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys((r["round_to"], r["coupled"]) for r in rows))
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    markers = ["o", "s", "^", "D", "v", "x"]
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 5.5), squeeze=False, sharey=True)
    top = max([1.0] + [max(r["mac_speedup"], r["speedup"]) for r in rows]) * 1.05
    for ax, (threads, batch) in zip(axes[0], configs):
        for mi, model in enumerate(models):
            for vi, (rt, cp) in enumerate(variants):
                pts = sorted((r["mac_speedup"], r["speedup"]) for r in rows if r["model"] == model
                             and (r["round_to"], r["coupled"]) == (rt, cp) and (r["threads"], r["batch"]) == (threads, batch))
                if not pts:
                    continue
                xs, ys = zip(*pts)
                label = model + (f" r{rt}" if len(variants) > 1 else "") + ("" if cp == "all" else f" c={cp}")
                ax.plot(xs, ys, color=colours(mi % 10), ls=styles[vi % len(styles)],
                        marker=markers[vi % len(markers)], ms=4, label=label)
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="latency = MAC speedup")
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.set_xlim(1.0, top)
        ax.set_title(f"{threads} thread(s), batch {batch}")
        ax.set_xlabel("MAC speedup (MACs before / after)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency speedup (original median / pruned median)")
    axes[0][-1].legend(fontsize=7, ncol=1 + len(models) * len(variants) // 12)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot in {os.path.relpath(path, ROOT)}")


def pivot(rows) -> str:
    """One line per (model, round_to, coupled, threads, batch), one column per MAC target:
    'latency speedup (efficiency)', bold where the pruned model is slower."""
    lines = study_pivot(rows, ("round_to", "coupled", "threads", "batch"),
                        lambda r: f"{r['speedup']:.2f}× ({r['efficiency']:.2f})",
                        {"orig ms": lambda r: f"{r['orig_median_ms']:.1f}"})
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", nargs="+", type=int, default=[1])
    ap.add_argument("--runs", type=int, default=15, help="timed runs per model at batch 1")
    ap.add_argument("--runs-batched", type=int, default=5, help="timed runs per model at batch > 1")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1,
                    help="independent alternating runs per config; rows give the median over repeats "
                         "(and the min/max speedup)")
    ap.add_argument("--round-to", nargs="+", type=int, default=None, dest="round_to",
                    help="default: the library's default for this CPU (16 with AVX-512, else 8)")
    ap.add_argument("--coupled", nargs="+", default=["all"], choices=COUPLED)
    ap.add_argument("--criterion", default="bgsc")
    ap.add_argument("--fold", default="exact")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-configs", nargs="*", default=None, metavar="MODEL:BATCH",
                    help="restrict batches > 1 to these models (e.g. resnet50:8); default: every model")
    ap.add_argument("--tag", default="", help="results go to latency_TAG.{json,md,png}")
    ap.add_argument("--results", default=RESULTS, help="folder for the results (default benchmarks/results)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-inspect", action="store_true",
                    help="skip counting NCHWc / plain convs and reorders in onnxruntime's optimised graph")
    ap.add_argument("--cache", default=os.path.join("/tmp", "onnxprune_latency_cache"),
                    help="exported originals are kept here (export is deterministic); '' disables")
    ap.add_argument("--probe-nchwc", action="store_true",
                    help="only report which channel counts onnxruntime runs with NCHWc kernels")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the PNG of a recorded latency*.json")
    ap.add_argument("--pivot", metavar="JSON", help="only print a recorded latency*.json as one line per "
                    "configuration and one column per MAC target: latency speedup (efficiency)")
    args = ap.parse_args(argv)
    if args.round_to is None:
        from onnxprune.budget import default_round_to
        args.round_to = [default_round_to()]
    if args.probe_nchwc:
        import onnxruntime
        rows = nchwc_probe()
        with open(os.path.join(args.results, "latency_nchwc_probe.json"), "w") as f:
            json.dump({"onnxruntime": onnxruntime.__version__, "machine": platform.processor() or platform.machine(),
                       "rows": rows}, f, indent=1)
        return 0
    if args.pivot:
        print(pivot(json.load(open(args.pivot))["rows"]))
        return 0
    if args.replot:
        rec = json.load(open(args.replot))
        plot(rec["rows"], os.path.splitext(args.replot)[0] + ".png",
             f"onnxprune {rec['criterion']}, onnxruntime {rec['provider']}, {rec['size']}×{rec['size']}")
        return 0

    import onnxruntime
    from onnxprune import bench

    stem = "latency" + (f"_{args.tag}" if args.tag else "") + ("_cuda" if args.provider == "cuda" else "")
    os.makedirs(args.results, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/latency.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}".strip(", "),
            "onnxruntime": onnxruntime.__version__, "provider": args.provider, "size": args.size,
            "criterion": args.criterion, "warmup": args.warmup, "runs": args.runs,
            "runs_batched": args.runs_batched, "git": _git_state()}
    if not bench.provider_available(args.provider):
        meta["status"] = f"not measured: no {args.provider.upper()} provider " \
                         f"(available: {', '.join(onnxruntime.get_available_providers())})"
        with open(os.path.join(args.results, stem + ".json"), "w") as f:
            json.dump({**meta, "rows": []}, f, indent=1)
        print(meta["status"])
        return 0

    batch_only = None
    if args.batch_configs is not None:
        batch_only = {}
        for item in args.batch_configs:
            m, b = item.split(":")
            batch_only.setdefault(m, set()).add(int(b))

    rows, tables, prune_info = [], [], []
    for model in args.models:
        t0 = time.perf_counter()
        proto = original(model, args.size, args.cache)
        t_export = time.perf_counter() - t0
        variants, names = [], []
        for rt in args.round_to:
            for cp in args.coupled:
                for target in args.targets:
                    info, slim = prune_variant(proto, model, target, rt, cp, args.criterion, args.fold)
                    if not args.no_inspect and args.provider == "cpu":
                        info["ort"] = ort_layout(slim)
                    prune_info.append(info)
                    variants.append((info, slim))
                    names.append(_variant_name(model, target, rt, cp))
                    print(f"pruned {names[-1]}: MACs {info['mac_fraction']:.3f} of original "
                          f"({info['mac_speedup']:.2f}x), {info['prune_s']} s", flush=True)
        orig_layout = ort_layout(proto) if not args.no_inspect and args.provider == "cpu" else None
        print(f"{model}: exported in {t_export:.1f} s; conv widths aligned "
              f"{alignment(conv_widths(proto))}; onnxruntime graph "
              f"{ {k: v for k, v in (orig_layout or {}).items() if k != 'ops'} }", flush=True)
        for info, _ in variants:
            if "ort" in info:
                info["ort_original"] = {k: v for k, v in orig_layout.items() if k != "ops"}
                print(f"  {_variant_name(model, info['target'], info['round_to'], info['coupled'])}: "
                      f"{ {k: v for k, v in info['ort'].items() if k != 'ops'} }", flush=True)
        for threads in args.threads:
            for batch in args.batches:
                if batch > 1 and batch_only is not None and batch not in batch_only.get(model, set()):
                    continue
                runs = args.runs if batch == 1 else args.runs_batched
                t0 = time.perf_counter()
                reps = []
                for _ in range(args.repeat):
                    timings = bench.compare([proto] + [s for _, s in variants], provider=args.provider,
                                            threads=threads, batch=batch, warmup=args.warmup, runs=runs,
                                            names=[f"{model} original"] + names)
                    text = bench.table(timings, args.provider, threads, batch)
                    tables.append(text)
                    print(text, f"\n({time.perf_counter() - t0:.1f} s)", flush=True)
                    reps.append(timings)
                rows += timing_rows([info for info, _ in variants], reps, threads=threads, batch=batch,
                                    runs=runs)
        del variants

    with open(os.path.join(args.results, stem + ".json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    md = [f"# Latency: {meta['command']}", "",
          f"{meta['date']}, {meta['machine']}, onnxruntime {meta['onnxruntime']} {args.provider}, "
          f"{args.size}×{args.size}, criterion {args.criterion}, warmup {args.warmup}, runs {args.runs} "
          f"(batch 1) / {args.runs_batched} (batch > 1), original and pruned alternating in one run "
          "per (model, threads, batch).", "",
          "| model | target | round_to | coupled | threads | batch | orig ms (p10–p90) | pruned ms (p10–p90) "
          "| MAC kept | MAC speedup | latency speedup | efficiency | Conv widths %8 / %16 | ORT NCHWc/plain conv, reorders (orig → pruned) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **slower**" if r["slower"] else ""
        md.append(f"| {r['model']} | {r['target']:g} | {r['round_to']} | {r['coupled']} | {r['threads']} | "
                  f"{r['batch']} | {r['orig_median_ms']:.2f} ({r['orig_p10_ms']:.2f}–{r['orig_p90_ms']:.2f}) | "
                  f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}–{r['p90_ms']:.2f}) | {r['mac_fraction']:.3f} | "
                  f"{r['mac_speedup']:.2f}x | {r['speedup']:.2f}x{_spread(r)}{flag} | {r['efficiency']:.2f} | "
                  f"{r['alignment']['mult8']:.2f} / {r['alignment']['mult16']:.2f} | {_ort_cell(r)} |")
    md += ["", "Raw tables (bench.table):", "", "```"] + ["\n\n".join(tables)] + ["```", ""]
    with open(os.path.join(args.results, stem + ".md"), "w") as f:
        f.write("\n".join(md))
    print(f"recorded in {os.path.join(args.results, stem)}.json and .md")

    if not args.no_plot and rows:
        plot(rows, os.path.join(args.results, stem + ".png"),
             f"onnxprune {args.criterion}, onnxruntime {args.provider}, {args.size}×{args.size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
