"""`onnxprune reconfigure IN OUT (--target-macs F | --target-params F | both) [--max-widen U]`:
PreConfig (onnxprune/reconfigure.py) — new widths for an untrained model, to train from scratch."""
from __future__ import annotations

import logging

from . import cli_files

log = logging.getLogger("onnxprune")


def reconfigure_arguments(p):
    from .cli_args import _common
    p.add_argument("input", help="untrained model (never modified)")
    p.add_argument("output", help="where to write the reconfigured model")
    p.add_argument("--target-macs", type=float, metavar="F",
                   help="MAC budget as a fraction of the input's (above 1 only with --max-widen > 1)")
    p.add_argument("--target-params", type=float, metavar="F",
                   help="parameter budget as a fraction of the input's; with --target-macs both are met")
    p.add_argument("--max-widen", type=float, default=1.0, metavar="U",
                   help="a group may grow to U times its width (default 1: groups only narrow)")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="new widths are multiples of N (default 1)")
    p.add_argument("--min-keep", default="0.1", help="floor per group, a count or a fraction (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights' generator (default 0)")
    p.add_argument("--report", metavar="PATH", help="write the report (per group old -> new widths) as JSON")
    _common(p)


def run(args) -> int:
    from .io import save_model
    from .reconfigure import reconfigure_model

    cli_files.check_targets(args)
    out, report = reconfigure_model(args.input, target_macs=args.target_macs, target_params=args.target_params,
                                    max_widen=args.max_widen, round_to=args.round_to, seed=args.seed,
                                    min_keep=args.min_keep, exclude=args.exclude,
                                    input_shapes=cli_files.input_shapes(args.input_shape))
    log.info(report.table())
    for note in report.notes:
        log.info("note: %s", note)
    cli_files.write([(args.report, report.to_json() if args.report else "")],
           save=lambda: cli_files.save(save_model, out, args.output))
    log.info("wrote %s", args.output)
    return 0
