"""Command line: `onnxprune prune IN OUT [options]` (short form: `onnxprune IN OUT [options]`),
`onnxprune analyze IN` and `onnxprune bench A B ...`.

Exit codes: 0 done; 1 the masking oracle exceeded its tolerance (the model is not written;
a --report is); 2 bad input or options (one line on stderr, nothing written); 3 internal
error.

Output: the summary (table, notes, "wrote ...") goes through the `onnxprune` logger at
INFO level to stdout; -q keeps errors only, -v adds stage timings and debug detail on
stderr. Errors are printed whatever the level. What `analyze` and `bench` are asked to
print is their result, not a log, and is printed under -q too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from . import progress
from .errors import OnnxPruneError

EXIT_ORACLE, EXIT_INPUT, EXIT_INTERNAL = 1, 2, 3
COMMANDS = ("prune", "analyze", "bench")
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")
log = logging.getLogger("onnxprune")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 too; ours is one line, no usage block
        raise OnnxPruneError(f"{message} (see '{self.prog} --help')")


def _common(p):
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="fix the shape of an input with dynamic dimensions (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="node-name glob whose channels stay (repeatable)")


def _verbosity():
    """-q / -v, shared by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    levels = p.add_mutually_exclusive_group()
    levels.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.ERROR,
                        default=logging.INFO, help="print errors only (and the results of analyze and bench)")
    levels.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                        help="also print stage timings and debug detail (on stderr)")
    return p


def _prune_arguments(p):
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
    p.add_argument("--report", help="write the full report as JSON (also when the oracle fails)")
    p.add_argument("--verify", action="store_true",
                   help="run the masking oracle; exit 1 (and write no model) when it fails")
    p.add_argument("--bench", action="store_true", help="time the input and the output (see 'onnxprune bench')")
    _bench_options(p)
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="oracle tolerance: max relative difference, or 4x the measured noise, or "
                        "4 eps of float16 (float16 models) if larger")
    _common(p)


def _bench_options(p):
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="execution provider")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per model")
    p.add_argument("--runs", type=int, default=30, help="timed runs per model (alternating)")


def _bench_arguments(p):
    p.add_argument("models", nargs="+")
    _bench_options(p)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...")


def _analyze_arguments(p):
    p.add_argument("input")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.add_argument("--criterion", help="also score channels: per-group score statistics and the "
                   "Maximum Score Disagreement between feed-in layers")
    _common(p)


def _parsers() -> tuple[_Parser, dict[str, _Parser]]:
    from . import __version__
    top = _Parser(prog="onnxprune", formatter_class=argparse.RawDescriptionHelpFormatter,
                  usage="%(prog)s [-h] [--version] COMMAND ...\n       %(prog)s IN OUT [options]   "
                        "(short for 'onnxprune prune IN OUT [options]')",
                  description="Structured pruning of ONNX models (coupled channels, data-free).")
    top.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    commands = top.add_subparsers(dest="command", title="commands", metavar="COMMAND", required=True)
    verbosity = _verbosity()
    specs = (("prune", _prune_arguments, "prune a model: IN OUT [options] (the default command)",
              "Remove the least salient coupled channels and write a smaller model."),
             ("analyze", _analyze_arguments, "print the coupled channel groups of a model; change nothing",
              "Print the coupled channel groups; change nothing."),
             ("bench", _bench_arguments, "time models in onnxruntime, compared with the first one",
              "Latency of models in onnxruntime, compared with the first one (alternating runs)."))
    parsers = {}
    for name, add_arguments, summary, description in specs:
        parsers[name] = commands.add_parser(name, prog=f"onnxprune {name}", parents=[verbosity], help=summary,
                                            description=description)
        add_arguments(parsers[name])
    # `onnxprune --help` has always listed the options of the short form: keep them there
    top.epilog = ("The short form 'onnxprune IN OUT [options]' means 'onnxprune prune IN OUT [options]':\n\n"
                  + parsers["prune"].format_help())
    return top, parsers


def _parse(argv: list[str]) -> argparse.Namespace:
    """Subcommands, with `prune` implied when the first argument is neither a subcommand
    nor a top-level option (the documented `onnxprune IN OUT ...`)."""
    if not argv or argv[0] not in COMMANDS + TOP_LEVEL_OPTIONS:
        argv = ["prune", *argv]
    top, parsers = _parsers()
    args, unknown = top.parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser, so that its --help is the one suggested
        parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = _parse(argv)
        with _console(args.log_level), _progress(args.log_level):
            return RUNNERS[args.command](args)
    except SystemExit as e:  # --help and --version print and exit 0
        return e.code if isinstance(e.code, int) else 0
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


class _Console(logging.Handler):
    """INFO lines (the summary) to stdout as they are, today's output; debug and warnings
    to stderr with a prefix. Streams are looked up per record (tests swap them)."""

    def emit(self, record):  # no handleError: a closed pipe must reach main(), not print a traceback
        message = self.format(record)
        if record.levelno == logging.INFO:
            print(message, file=sys.stdout)
        else:
            print(f"onnxprune: {record.levelname.lower()}: {message}", file=sys.stderr)


@contextlib.contextmanager
def _console(level: int):
    """The CLI's logging, for the duration of one command; the library logs nowhere by itself."""
    handler = _Console()
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


@contextlib.contextmanager
def _progress(level: int):
    """Stage progress on stderr, only for a person at a terminal."""
    at_terminal = getattr(sys.stderr, "isatty", lambda: False)()
    previous = progress.enable(level <= logging.INFO and at_terminal)
    try:
        yield
    finally:
        progress.enable(previous)


def _same_file(a: str, b: str) -> bool:
    from .io import same_file
    return same_file(a, b)


def _check_targets(args) -> None:
    """Every path we will write: not one we read, not each other, writable (io.check_targets).
    Checked before any work so that a bad path never leaves some files written."""
    from .io import check_targets
    check_targets(args.input, args.output, getattr(args, "report", None),
                  getattr(args, "plan_out", None), getattr(args, "plan", None))


def _prune(args) -> int:
    from .api import prune_model as prune
    from .bench import check_options, require_provider
    from .io import save_model

    _check_targets(args)
    check_options(args.provider, args.threads, args.batch, args.warmup, args.runs)
    if args.bench:  # found out now, not after the model is written
        require_provider(args.provider)
    input_shapes = _input_shapes(args.input_shape)
    plan = _read_plan(args.plan) if args.plan else None
    slim, report = prune(args.input, args.ratio, criterion=args.criterion, seed=args.seed,
                         scope=args.scope, ranking=args.ranking, target_macs=args.target_macs,
                         target_params=args.target_params, coupled=args.coupled,
                         min_keep=args.min_keep, round_to=args.round_to, allocator=args.allocator,
                         exclude=args.exclude, input_shapes=input_shapes,
                         plan=plan, verify=args.verify, tolerance=args.tolerance, fold=args.fold,
                         check_output=False)  # save_model checks the bytes it writes
    log.info(report.table())
    for note in report.notes:
        log.info("note: %s", note)
    if args.verify and not report.oracle_passed:
        # the report says by how much it failed; the model must not be used
        _write([(args.report, report.to_json() if args.report else "")])
        written = f"model not written, report in {args.report}" if args.report else "nothing written"
        print(f"onnxprune: masking oracle failed: max relative difference "
              f"{report.oracle.max_rel_diff:.3e} > {report.oracle.threshold(args.tolerance):.3g} "
              f"(tolerance {args.tolerance:g}, {report.oracle.dtype} noise "
              f"{report.oracle.noise:.1e}); {written}", file=sys.stderr)
        return EXIT_ORACLE
    _write([(args.report, report.to_json() if args.report else ""),
            (args.plan_out, report.plan.to_json() if args.plan_out else "")],
           save=lambda: _save(save_model, slim, args.output))
    log.info("wrote %s", args.output)
    if args.bench:
        _print_bench([args.input, args.output], args, report.options["input_shapes"])
    return 0


def _save(save_model, slim, path: str) -> None:
    with progress.stage("save"):
        save_model(slim, path, check=True)


def _write(texts, save=None) -> None:
    """Write the texts (path, text; no path: skipped) and, with `save`, the model: texts go
    to temporary files first and are renamed after the model is saved, so a failure
    anywhere leaves no report without its model and no temporary file."""
    staged = []
    try:
        for path, text in texts:
            if path:
                staged.append((_stage_text(path, text), path))
        if save is not None:
            save()
        for tmp, path in staged:
            _rename(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


def _read_plan(path: str):
    from .plan import Plan
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OnnxPruneError(f"cannot read plan {path}: {e.strerror}") from None
    try:
        return Plan.from_json(data)
    except OnnxPruneError as e:
        raise OnnxPruneError(f"{path}: {e}") from None


def _input_shapes(specs) -> dict[str, tuple]:
    """--input-shape values; one input given twice must be given the same shape."""
    from .model import parse_input_shapes
    shapes: dict[str, tuple] = {}
    for spec in specs:
        (name, shape), = parse_input_shapes([spec]).items()
        if shapes.get(name, shape) != shape:
            raise OnnxPruneError(f"--input-shape gives '{name}' two different shapes: "
                                 f"{','.join(map(str, shapes[name]))} and {','.join(map(str, shape))}")
        shapes[name] = shape
    return shapes


def _print_bench(models, args, input_shapes) -> None:
    from .bench import compare, table
    timings = compare(models, args.provider, args.threads, args.batch, args.warmup, args.runs, input_shapes)
    print(table(timings, args.provider, args.threads, args.batch))


def _bench(args) -> int:
    _print_bench(args.models, args, _input_shapes(args.input_shape))
    return 0


def _stage_text(path: str, text: str) -> str:
    """Write `text` to a temporary file; `_rename` puts it in place (io.stage_text)."""
    from .io import stage_text
    return stage_text(path, text)


def _rename(tmp: str, path: str) -> None:
    from .io import publish_text
    publish_text(tmp, path)


def _analyze(args) -> int:
    from .api import analyze_model
    from .report import group_table

    model, couplings = analyze_model(args.input, _input_shapes(args.input_shape), args.exclude)
    rows = group_table(couplings, set())
    if args.criterion:
        from .diagnostics import group_diagnostics
        from .saliency import score
        with progress.stage("score"):
            diagnostics = group_diagnostics(model, couplings, score(model, couplings, args.criterion))
        for row, diag in zip(rows, diagnostics):
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


RUNNERS = {"prune": _prune, "analyze": _analyze, "bench": _bench}  # command -> function(args) -> exit code
