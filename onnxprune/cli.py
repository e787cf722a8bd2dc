"""Command line: `onnxprune prune IN OUT [options]` (short form: `onnxprune IN OUT [options]`),
`onnxprune shrink IN OUT` (remove channels a training-time pruner only zeroed),
`onnxprune analyze IN`, `onnxprune bench A B ...`, `onnxprune evaluate ORIG PRUNED --data D`,
`onnxprune sweep IN --targets LIST`, `onnxprune estimate IN --calib D` (cli_estimate.py) and
`onnxprune reconfigure IN OUT --target-macs F` (cli_reconfigure.py).

Exit codes: 0 done; 1 the masking oracle exceeded its tolerance (the model is not written;
a --report is); 2 bad input or options (one line on stderr, nothing written); 3 internal
error.

Output: the summary (table, notes, "wrote ...") goes through the `onnxprune` logger at
INFO level to stdout; -q keeps errors only, -v adds stage timings and debug detail on
stderr. Errors are printed whatever the level. What `analyze`, `bench`, `evaluate`,
`sweep` and `estimate` are asked to print is their result, not a log, and is printed under -q too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from . import cli_args, cli_estimate, cli_files, cli_reconfigure, progress
from .errors import OnnxPruneError

EXIT_ORACLE, EXIT_INPUT, EXIT_INTERNAL = 1, 2, 3
COMMANDS = ("prune", "shrink", "analyze", "bench", "evaluate", "sweep", "estimate", "reconfigure")
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")
log = logging.getLogger("onnxprune")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 too; ours is one line, no usage block
        raise OnnxPruneError(f"{message} (see '{self.prog} --help')")


def _parsers() -> tuple[_Parser, dict[str, _Parser]]:
    from . import __version__
    top = _Parser(prog="onnxprune", formatter_class=argparse.RawDescriptionHelpFormatter,
                  usage="%(prog)s [-h] [--version] COMMAND ...\n       %(prog)s IN OUT [options]   "
                        "(short for 'onnxprune prune IN OUT [options]')",
                  description="Structured pruning of ONNX models (coupled channels, data-free).")
    top.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    commands = top.add_subparsers(dest="command", title="commands", metavar="COMMAND", required=True)
    verbosity = cli_args.verbosity()
    specs = (("prune", cli_args.prune_arguments, "prune a model: IN OUT [options] (the default command)",
              "Remove the least salient coupled channels and write a smaller model."),
             ("shrink", cli_args.shrink_arguments, "remove the channels a pruner only zeroed: IN OUT",
              "Remove structurally dead channels (zeroed filters, zero BN scales, zero Gemm rows or "
              "columns, channels nothing reads) and write a smaller model that computes the same."),
             ("analyze", cli_args.analyze_arguments, "print the coupled channel groups of a model; change nothing",
              "Print the coupled channel groups; change nothing."),
             ("bench", cli_args.bench_arguments, "time models in onnxruntime, compared with the first one",
              "Latency of models in onnxruntime, compared with the first one (alternating runs)."),
             ("evaluate", cli_args.evaluate_arguments, "compare a pruned model with its original on data",
              "Fidelity of a pruned model to its original on held-out inputs: per output relative "
              "error, cosine, top-1 agreement, and accuracy with labels."),
             ("sweep", cli_args.sweep_arguments, "prune at several targets and tabulate cost, fidelity, latency",
              "Prune one model at several targets and print, per target, its MACs, parameters, fidelity "
              "(accuracy with labels) and, with --bench, latency; --plot draws them against the target."),
             ("estimate", cli_estimate.estimate_arguments, "FTWT: MACs of heat-map-mass thresholds; gated model",
              "Per mass threshold r, the expected fraction of channels kept per layer and the expected MACs of "
              "the dynamic model and of the static model that matches it (docs/methods.md §3); bisection on r "
              "for --target-macs; --emit-gated writes the gated dynamic model, --plan-out the static plan."),
             ("reconfigure", cli_reconfigure.reconfigure_arguments, "PreConfig: new widths for an untrained model",
              "Narrow and (with --max-widen) widen every channel group of an untrained model under a MAC and/or "
              "parameter budget (docs/methods.md §4); the written model is for training from scratch."))
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
    from .paths import same_file
    return same_file(a, b)


def _prune(args) -> int:
    from .api import prune_model as prune
    from .bench import check_options, require_provider
    from .latency_model import TimingOptions

    cli_files.check_targets(args)
    check_options(args.provider, args.threads, args.batch, args.warmup, args.runs)
    if args.bench or args.target_latency is not None or args.allocator == "latency":  # now, not after writing
        require_provider(args.provider)
    _check_latency_table(args)
    input_shapes = cli_files.input_shapes(args.input_shape)
    plan = _read_plan(args.plan) if args.plan else None
    slim, report = prune(args.input, args.ratio, criterion=args.criterion, seed=args.seed,
                         scope=args.scope, ranking=args.ranking, target_macs=args.target_macs,
                         target_params=args.target_params, coupled=args.coupled,
                         min_keep=args.min_keep, round_to=args.round_to, allocator=args.allocator,
                         exclude=args.exclude, input_shapes=input_shapes,
                         plan=plan, verify=args.verify, tolerance=args.tolerance, fold=args.fold,
                         calibration=args.calib, calibration_limit=args.calib_limit,
                         calibration_preprocess=args.calib_preprocess, eval_data=args.eval_data,
                         labels_key=args.labels, recover=args.recover, residual=args.residual,
                         target_latency=args.target_latency, speed_weight=args.speed_weight,
                         timing=TimingOptions(args.provider, args.threads, args.batch, args.warmup, args.runs,
                                              args.latency_table),
                         check_output=False)  # save_model checks the bytes it writes
    if not _write_result(args, slim, report, args.tolerance,
                         [(args.plan_out, report.plan.to_json() if args.plan_out else "")]):
        return EXIT_ORACLE
    if args.bench:
        _print_bench([args.input, args.output], args, report.options["input_shapes"])
    return 0


def _check_latency_table(args) -> None:
    """The latency table is read and rewritten: never one of the files the command reads or writes."""
    if args.latency_table is None:
        return
    if args.target_latency is None and args.allocator != "latency":
        raise OnnxPruneError("--latency-table goes with --target-latency or --allocator latency")
    for flag, path in (("the input", args.input), ("the output", args.output), ("--report", args.report),
                       ("--plan-out", args.plan_out), ("--plan", args.plan)):
        if path and _same_file(args.latency_table, path):
            raise OnnxPruneError(f"--latency-table is {flag} path: give the table its own file")


def _shrink(args) -> int:
    from .shrink import shrink_model
    from .verify import DEFAULT_TOLERANCE

    cli_files.check_targets(args)
    slim, report = shrink_model(args.input, tolerance=args.tolerance, approximate=args.approximate,
                                verify=args.verify, exclude=args.exclude, seed=args.seed, residual=args.residual,
                                input_shapes=cli_files.input_shapes(args.input_shape), check_output=False)
    return 0 if _write_result(args, slim, report, DEFAULT_TOLERANCE) else EXIT_ORACLE


def _write_result(args, slim, report, tolerance: float, more_texts=()) -> bool:
    """Print the table and notes; write the model and its texts, or, when the oracle ran and
    failed, the report alone (it says by how much: the model must not be used). Returns
    whether the model was written."""
    from .io import save_model

    log.info(report.table())
    for note in report.notes:
        log.info("note: %s", note)
    if args.verify and not report.oracle_passed:
        cli_files.write([(args.report, report.to_json() if args.report else "")])
        written = f"model not written, report in {args.report}" if args.report else "nothing written"
        print(f"onnxprune: masking oracle failed: max relative difference "
              f"{report.oracle.max_rel_diff:.3e} > {report.oracle.threshold(tolerance):.3g} "
              f"(tolerance {tolerance:g}, {report.oracle.dtype} noise "
              f"{report.oracle.noise:.1e}); {written}", file=sys.stderr)
        return False
    cli_files.write([(args.report, report.to_json() if args.report else "")] + list(more_texts),
           save=lambda: cli_files.save(save_model, slim, args.output))
    log.info("wrote %s", args.output)
    return True


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


def _print_bench(models, args, input_shapes) -> None:
    from .bench import compare, table
    timings = compare(models, args.provider, args.threads, args.batch, args.warmup, args.runs, input_shapes)
    print(table(timings, args.provider, args.threads, args.batch))


def _bench(args) -> int:
    _print_bench(args.models, args, cli_files.input_shapes(args.input_shape))
    return 0


def _analyze(args) -> int:
    from .api import analyze_model
    from .report import group_table

    model, couplings = analyze_model(args.input, cli_files.input_shapes(args.input_shape), args.exclude, args.residual)
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


def _evaluate(args) -> int:
    from .fidelity import evaluate
    if args.batch < 1:
        raise OnnxPruneError(f"--batch must be an integer >= 1, got {args.batch}")
    fidelity = evaluate(args.original, args.pruned, args.data, batch_size=args.batch, limit=args.limit,
                        preprocess=args.calib_preprocess, labels_key=args.labels)
    if args.json:
        print(json.dumps(fidelity.to_dict(), indent=1))
        return 0
    print(fidelity.table())
    print(fidelity.summary())
    return 0


def _sweep(args) -> int:
    from .bench import check_options, require_provider
    from .latency_model import TimingOptions
    from .sweep import parse_targets, sweep
    from .sweep_view import require_matplotlib
    targets = parse_targets(args.targets)
    if args.plot:
        require_matplotlib()
    check_options(args.provider, args.threads, args.batch, args.warmup, args.runs)
    if args.bench or args.allocator == "latency":
        require_provider(args.provider)
    models = _sweep_outputs(args, targets)
    result = sweep(args.input, targets, metric=args.target_kind, calibration=args.calib,
                   calibration_limit=args.calib_limit, calibration_preprocess=args.calib_preprocess,
                   eval_data=args.eval_data, labels_key=args.labels, recover=args.recover, bench=args.bench,
                   provider=args.provider, threads=args.threads, batch=args.batch, warmup=args.warmup,
                   runs=args.runs, keep_models=bool(models), criterion=args.criterion, seed=args.seed,
                   scope=args.scope, ranking=args.ranking, allocator=args.allocator, coupled=args.coupled,
                   min_keep=args.min_keep, round_to=args.round_to, fold=args.fold, exclude=args.exclude,
                   residual=args.residual, speed_weight=args.speed_weight,
                   timing=TimingOptions(args.provider, args.threads, args.batch, args.warmup, args.runs),
                   input_shapes=cli_files.input_shapes(args.input_shape))
    print(result.table())
    cli_files.write([(args.json, result.to_json() if args.json else ""),
            (args.plot, result.plot_png() if args.plot else "")],
           save=lambda: _save_sweep_models(result, args.save_dir, models))
    for path in [args.json, args.plot] + models:
        if path:
            log.info("wrote %s", path)
    return 0


def _sweep_outputs(args, targets) -> list[str]:
    """The model paths of --save-dir; every path the sweep will write is checked now, before
    any work: not a file it reads, not written twice, in a writable folder."""
    from .files import external_data_files, shown
    from .paths import same_file, writable_directory, write_target
    models, new_dir = [], False
    if args.save_dir:
        if os.path.exists(args.save_dir) and not os.path.isdir(args.save_dir):
            raise OnnxPruneError(f"--save-dir {shown(args.save_dir)} is not a directory")
        new_dir = not os.path.isdir(args.save_dir)
        if new_dir:   # created at the end, in an existing writable folder
            writable_directory(os.path.normpath(args.save_dir))
        elif not os.access(args.save_dir, os.W_OK | os.X_OK):
            raise OnnxPruneError(f"--save-dir {shown(args.save_dir)} is not writable")
        stem = os.path.splitext(os.path.basename(args.input))[0]
        models = [os.path.join(args.save_dir, f"{stem}_{args.target_kind}{t:g}.onnx") for t in targets]
    reads = [args.input] + (external_data_files(args.input) if os.path.isfile(args.input) else [])
    written: list[str] = []
    for flag, path in [("--json", args.json), ("--plot", args.plot)] + [("--save-dir", m) for m in models]:
        if not path:
            continue
        if not write_target(path).stream and not (flag == "--save-dir" and new_dir):
            writable_directory(path)
        if any(same_file(path, other) for other in reads):
            raise OnnxPruneError(f"{flag} path {shown(path)} is a file the sweep reads; the input is never overwritten")
        if any(same_file(path, other) for other in written):
            raise OnnxPruneError(f"{flag} path {shown(path)} would be written twice")
        written += [path, path + ".data"] if flag == "--save-dir" else [path]
    return models


def _save_sweep_models(result, folder, paths) -> None:
    from .io import save_model
    if paths:
        os.makedirs(folder, exist_ok=True)
    for row, path in zip(result.rows, paths):
        cli_files.save(save_model, row.model, path)


RUNNERS = {"prune": _prune, "shrink": _shrink, "analyze": _analyze, "bench": _bench, "evaluate": _evaluate, "sweep": _sweep,
           "estimate": cli_estimate.run, "reconfigure": cli_reconfigure.run}  # command -> function(args) -> exit code
