"""Throughput of pruned models against their originals on the CPU: batch 1, 8 and 32 at
1, 2 and all threads (issue 13, item 4).

    python benchmarks/throughput.py [--models resnet50 mobilenet_v2] [--targets 0.9 0.7 0.5]
        [--batches 1 8 32] [--threads 1 2 all] [--runs 15] [--runs-batched 4] [--warmup 1]
        [--repeat 1] [--size 224] [--criterion bgsc] [--tag NAME] [--results DIR] [--cache DIR]

For each model (zoo export at SIZE×SIZE, random weights, BN kept) and its prunes at every
MAC target (default rounding, fast `stats` recovery), every (threads, batch) configuration
times the original and all its pruned variants in ONE alternating run of
`onnxprune.bench.compare`, so the ratios share the machine's load. `all` threads means
os.cpu_count(). The 1-minute load average is recorded before and after each run: on a
shared machine it says how far the absolute figures can be trusted (the ratios, measured
in alternation, less affected). Checks issue 13's bar: no pruned model slower than its
original at a target <= 0.9. With --repeat N, each configuration's alternating run is
repeated and a row gives the medians (and the speedup's min/max) over the N runs. Writes
RESULTS/throughput[_TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from latency import _git_state, _spread  # noqa: E402
from study import acceptance, original, prune_variant, speedup_table, study_arguments, timing_rows  # noqa: E402
from study import write_record  # noqa: E402

KEYS = ("threads", "batch")


def thread_counts(values) -> list[int]:
    """'all' is every core; duplicates (2 and all on a 2-core machine) are timed once."""
    counts = [os.cpu_count() if v == "all" else int(v) for v in values]
    return list(dict.fromkeys(counts))


def markdown(record) -> str:
    rows = record["rows"]
    lines = [f"# Throughput: `{record['command']}`", "",
             f"{record['date']}, {record['machine']}, onnxruntime {record['onnxruntime']} cpu, git {record['git']}, "
             f"{record['size']}×{record['size']}, criterion {record['criterion']}, random weights; "
             f"'all' threads = {record['all_threads']}. Original and pruned models alternate in one run per "
             f"(model, threads, batch): warmup {record['warmup']}, {record['runs']} timed runs at batch 1, "
             f"{record['runs_batched']} above, {record['repeat']} alternating run(s) per configuration (rows: "
             "medians over them). samples/s = batch / median latency.", "",
             f"1-minute load average: {record['load_before']:.2f} before, {record['load_after']:.2f} after "
             "(per run in the last table). The machine is shared: a load above its core count means "
             "other jobs competed for the cores during the runs.", "",
             acceptance(rows, KEYS), ""]
    lines += speedup_table(rows, KEYS)
    lines += ["", "| model | target | MAC kept | threads | batch | load before → after | orig ms (p10–p90) "
              "| pruned ms (p10–p90) | latency speedup | efficiency |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']:g} | {r['mac_fraction']:.3f} | {r['threads']} | {r['batch']} | "
                     f"{r['load_before']:.2f} → {r['load_after']:.2f} | {r['orig_median_ms']:.2f} "
                     f"({r['orig_p10_ms']:.2f}–{r['orig_p90_ms']:.2f}) | {r['median_ms']:.2f} "
                     f"({r['p10_ms']:.2f}–{r['p90_ms']:.2f}) | {r['speedup']:.2f}×{_spread(r)} | {r['efficiency']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_arguments(ap)
    ap.add_argument("--threads", nargs="+", default=["1", "2", "all"], help="thread counts, or 'all'")
    ap.add_argument("--runs", type=int, default=15, help="timed runs per model at batch 1")
    ap.add_argument("--runs-batched", type=int, default=4, help="timed runs per model at batch > 1")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs per configuration")
    ap.add_argument("--tag", default="", help="results go to throughput_TAG.{json,md}")
    ap.add_argument("--criterion", default="bgsc")
    args = ap.parse_args(argv)

    import onnxruntime
    from onnxprune import bench
    from onnxprune.budget import default_round_to

    record = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "onnxruntime": onnxruntime.__version__,
              "git": _git_state(), "size": args.size, "criterion": args.criterion, "warmup": args.warmup,
              "runs": args.runs, "runs_batched": args.runs_batched, "repeat": args.repeat, "all_threads": os.cpu_count(),
              "load_before": os.getloadavg()[0]}
    rows = []
    for model in args.models:
        proto = original(model, args.size, args.cache)
        variants = [prune_variant(proto, model, t, default_round_to(), "all", args.criterion) for t in args.targets]
        names = [f"{model} original"] + [f"{model}@{t:g}" for t in args.targets]
        for threads in thread_counts(args.threads):
            for batch in args.batches:
                runs = args.runs if batch == 1 else args.runs_batched
                load = os.getloadavg()[0]
                reps = [bench.compare([proto] + [slim for _, slim in variants], threads=threads, batch=batch,
                                      warmup=args.warmup, runs=runs, names=names) for _ in range(args.repeat)]
                for timings in reps:
                    print(bench.table(timings, "cpu", threads, batch), flush=True)
                rows += timing_rows([info for info, _ in variants], reps, threads=threads, batch=batch,
                                    runs=runs, load_before=load, load_after=os.getloadavg()[0])
    record["load_after"] = os.getloadavg()[0]
    record["acceptance"] = acceptance(rows, KEYS)
    record["rows"] = rows
    write_record(args.results, "throughput" + (f"_{args.tag}" if args.tag else ""), record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
