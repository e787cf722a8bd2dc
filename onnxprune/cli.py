"""Command line: `onnxprune in.onnx out.onnx --ratio 0.3` and `onnxprune analyze in.onnx`.

Exit codes: 0 done; 1 the masking oracle exceeded its tolerance (nothing written);
2 bad input or options (one line on stderr, nothing written); 3 internal error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .errors import OnnxPruneError

EXIT_ORACLE, EXIT_INPUT, EXIT_INTERNAL = 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 too; ours is one line, no usage block
        raise OnnxPruneError(f"{message} (see '{self.prog} --help')")


def _common(p):
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="fix the shape of an input with dynamic dimensions (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="node-name glob whose channels stay (repeatable)")


def _prune_parser():
    p = _Parser(prog="onnxprune", description="Structured pruning of ONNX models "
                "(coupled channels, data-free). Also: 'onnxprune analyze IN'.")
    p.add_argument("input", help="model to prune (never modified)")
    p.add_argument("output", help="where to write the pruned model")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, help="fraction of prunable channels to remove (default 0.3)")
    budget.add_argument("--target-macs", type=float, metavar="F", help="keep this fraction of the MACs")
    budget.add_argument("--target-params", type=float, metavar="F", help="keep this fraction of the parameters")
    p.add_argument("--criterion", default="l1", help="saliency: bgsc (data-free DFPC bound), l1, l2, random")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion and the oracle inputs")
    p.add_argument("--scope", choices=["local", "global"],
                   help="local: the same fraction in every group; global: one ranking across groups "
                        "(default: global for bgsc, local otherwise)")
    p.add_argument("--ranking", choices=["raw", "normalized"],
                   help="global ranking: raw scores (faithful DFPC) or scores divided by their group's "
                        "mean (default for bgsc: normalized)")
    p.add_argument("--allocator", default="rank", choices=["rank", "density"],
                   help="with --target-macs/--target-params: 'rank' removes channels in score order; "
                        "'density' sets each group's count from layer densities (PreCrop) and lets "
                        "the criterion pick the channels")
    p.add_argument("--coupled", default="all", choices=["all", "only", "none"],
                   help="prune all groups, only coupled ones (several feed-in layers), or none of those")
    p.add_argument("--min-keep", default="0.1",
                   help="floor per group: a count >= 1, or a fraction in (0, 1) (default 0.1)")
    p.add_argument("--round-to", type=int, default=None,
                   help="kept channel counts are multiples of N (default: 16 on AVX-512 CPUs, 8 "
                        "otherwise, so onnxruntime's blocked kernels stay on their fast path; 1 "
                        "for the finest steps)")
    p.add_argument("--fold", default="exact", choices=["none", "exact", "approx"],
                   help="constants carried by removed channels: fold into consumer biases where "
                        "exact (default), also approximately (interior value), or drop")
    p.add_argument("--plan", help="apply this plan (JSON) instead of scoring")
    p.add_argument("--plan-out", help="write the applied plan as JSON")
    p.add_argument("--report", help="write the full report as JSON")
    p.add_argument("--verify", action="store_true",
                   help="run the masking oracle; exit 1 (and write nothing) when it fails")
    p.add_argument("--bench", action="store_true", help="time the input and the output (see 'onnxprune bench')")
    _bench_options(p)
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="oracle tolerance: max relative difference, or 4x the measured noise, or "
                        "4 eps of float16 (float16 models) if larger")
    _common(p)
    return p


def _bench_options(p):
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="execution provider")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per model")
    p.add_argument("--runs", type=int, default=30, help="timed runs per model (alternating)")


def _bench_parser():
    p = _Parser(prog="onnxprune bench", description="Latency of models in onnxruntime, compared "
                "with the first one (alternating runs).")
    p.add_argument("models", nargs="+")
    _bench_options(p)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...")
    return p


def _analyze_parser():
    p = _Parser(prog="onnxprune analyze", description="Print the coupled channel groups; change nothing.")
    p.add_argument("input")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.add_argument("--criterion", help="also score channels: per-group score statistics and the "
                   "Maximum Score Disagreement between feed-in layers")
    _common(p)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "analyze":
            return _analyze(_analyze_parser().parse_args(argv[1:]))
        if argv and argv[0] == "bench":
            return _bench(_bench_parser().parse_args(argv[1:]))
        return _prune(_prune_parser().parse_args(argv))
    except OnnxPruneError as e:
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # `onnxprune analyze m.onnx | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return EXIT_INPUT
    except Exception as e:  # never a traceback for users; ONNXPRUNE_DEBUG=1 shows it
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        print(f"onnxprune: internal error: {type(e).__name__}: {e} "
              "(set ONNXPRUNE_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _same_file(a: str, b: str) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return os.path.exists(b) and os.path.exists(a) and os.path.samefile(a, b)


def _check_targets(args) -> None:
    """Every path we will write: not the input, not each other, in a writable directory.
    Checked before any work so that a bad path never leaves some files written."""
    targets = [(flag, path) for flag, path in (("output", args.output), ("--report", args.report),
                                               ("--plan-out", args.plan_out)) if path]
    for i, (flag, path) in enumerate(targets):
        if _same_file(args.input, path):
            what = "output path" if flag == "output" else f"{flag} path"
            raise OnnxPruneError(f"{what} equals the input path; the input is never overwritten")
        for other_flag, other in targets[:i]:
            if _same_file(other, path):
                raise OnnxPruneError(f"{flag} path equals the {other_flag} path: {path}")
        if os.path.isdir(path):
            raise OnnxPruneError(f"cannot write {path}: it is a directory")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OnnxPruneError(f"cannot write {path}: its directory does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OnnxPruneError(f"cannot write {path}: directory {directory} is not writable")


def _prune(args) -> int:
    from .api import prune_model as prune
    from .io import save_model
    from .model import parse_input_shapes
    from .plan import Plan

    if not args.tolerance >= 0:
        raise OnnxPruneError(f"--tolerance must be >= 0, got {args.tolerance}")
    _check_targets(args)
    plan = None
    if args.plan:
        try:
            with open(args.plan) as f:
                plan = Plan.from_json(f.read())
        except OSError as e:
            raise OnnxPruneError(f"cannot read plan {args.plan}: {e.strerror}") from None
    slim, report = prune(args.input, args.ratio, criterion=args.criterion, seed=args.seed,
                         scope=args.scope, ranking=args.ranking, target_macs=args.target_macs,
                         target_params=args.target_params, coupled=args.coupled,
                         min_keep=args.min_keep, round_to=args.round_to, allocator=args.allocator,
                         exclude=args.exclude, input_shapes=parse_input_shapes(args.input_shape),
                         plan=plan, verify=args.verify, tolerance=args.tolerance, fold=args.fold,
                         check_output=False)  # save_model checks the bytes it writes
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    if args.verify and not report.oracle_passed:
        print(f"onnxprune: masking oracle failed: max relative difference "
              f"{report.oracle.max_rel_diff:.3e} > {report.oracle.threshold(args.tolerance):.3g} "
              f"(tolerance {args.tolerance:g}, {report.oracle.dtype} noise "
              f"{report.oracle.noise:.1e}); nothing written", file=sys.stderr)
        return EXIT_ORACLE
    texts = [(args.report, report.to_json() if args.report else ""),
             (args.plan_out, report.plan.to_json() if args.plan_out else "")]
    staged = []  # report and plan go to temporary files first: a failure writes nothing
    try:
        for path, text in texts:
            if path:
                staged.append((_stage_text(path, text), path))
        save_model(slim, args.output, check=True)
        for tmp, path in staged:
            _rename(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
    print(f"wrote {args.output}")
    if args.bench:
        _print_bench([args.input, args.output], args, report.options["input_shapes"])
    return 0


def _print_bench(models, args, input_shapes) -> None:
    from .bench import compare, table
    timings = compare(models, args.provider, args.threads, args.batch, args.warmup, args.runs, input_shapes)
    print(table(timings, args.provider, args.threads, args.batch))


def _bench(args) -> int:
    from .model import parse_input_shapes
    _print_bench(args.models, args, parse_input_shapes(args.input_shape))
    return 0


def _stage_text(path: str, text: str) -> str:
    """Write `text` to a temporary file next to `path`; the caller renames it into place."""
    from .io import file_mode
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, file_mode(path))
    except OSError as e:
        os.remove(tmp)
        raise OnnxPruneError(f"cannot write {path}: {e.strerror or e}") from None
    return tmp


def _rename(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {path}: {e.strerror or e}") from None


def _analyze(args) -> int:
    from .api import analyze_model
    from .model import parse_input_shapes
    from .report import group_table

    model, couplings = analyze_model(args.input, parse_input_shapes(args.input_shape), args.exclude)
    rows = group_table(couplings, set())
    if args.criterion:
        from .diagnostics import group_diagnostics
        from .saliency import score
        for row, diag in zip(rows, group_diagnostics(model, couplings, score(model, couplings, args.criterion))):
            row.update({k: v for k, v in diag.items() if k.startswith(("score_", "msd_"))})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    prunable = [r for r in rows if not r["frozen"]]
    print(f"{len(model.graph.node)} nodes, {couplings.n_classes} channel classes, {len(rows)} groups "
          f"({len(prunable)} prunable, {len(rows) - len(prunable)} frozen)")
    for r in rows:
        state = f"frozen: {r['frozen']}" if r["frozen"] else "prunable"
        print(f"group {r['group']:4d}  {r['channels_before']:5d} ch  {state}")
        print(f"    feed-in : {_names(r['feed_in'])}")
        print(f"    feed-out: {_names(r['feed_out'])}")
        if r["channelwise"]:
            print(f"    channel-wise: {_names(r['channelwise'])}")
        if "score_min" in r:
            msd = "-" if r["msd_max"] is None else f"{r['msd_max']:.2f} (mean {r['msd_mean']:.2f})"
            print(f"    {args.criterion} scores: min {r['score_min']:.3g}  median {r['score_median']:.3g}  "
                  f"max {r['score_max']:.3g}   max score disagreement: {msd}")
    return 0


def _names(names, limit: int = 6) -> str:
    if not names:
        return "-"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
