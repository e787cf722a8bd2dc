"""`onnxprune estimate IN --calib DATA`: the FTWT budget of mass thresholds r (onnxprune/ftwt.py),
bisection on r for --target-macs, and with --emit-gated the gated dynamic model
(onnxprune/gating.py); --plan-out writes the static plan that matches r, for `prune --plan`."""
from __future__ import annotations

import json
import logging

from . import cli_files
from .errors import OnnxPruneError

log = logging.getLogger("onnxprune")


def estimate_arguments(p):
    from .cli_args import _common
    p.add_argument("input", help="model to estimate (never modified)")
    p.add_argument("--calib", required=True, metavar="PATH",
                   help="calibration inputs the masks are computed on (and the heads fitted on): .npz, .npy "
                        "or a folder of images")
    p.add_argument("--calib-limit", type=int, metavar="N", help="use the first N calibration samples")
    p.add_argument("--calib-preprocess", metavar="SPEC", help="preprocessing of an image folder")
    p.add_argument("--masses", default=",".join(map(str, _default_masses())), metavar="LIST",
                   help="comma list of mass thresholds r in (0, 1] to tabulate")
    p.add_argument("--target-macs", type=float, metavar="F",
                   help="bisect on r for the largest r whose dynamic, and whose static, MACs are at most F")
    p.add_argument("--mass", type=float, metavar="R",
                   help="the r of --emit-gated and --plan-out (default: the one --target-macs finds)")
    p.add_argument("--emit-gated", metavar="PATH",
                   help="write the gated dynamic model (decision heads fitted on --calib); it runs no faster")
    p.add_argument("--plan-out", metavar="PATH", help="write the static plan of r as JSON (apply it with "
                   "'onnxprune prune IN OUT --plan PATH')")
    p.add_argument("--json", metavar="PATH", help="write the estimate (and the gated model's figures) as JSON")
    p.add_argument("--eval-data", metavar="PATH",
                   help="held-out inputs: the gated model's fidelity and dynamic MACs are measured on them")
    p.add_argument("--labels", default="labels", metavar="KEY", help="npz key of integer labels (default: labels)")
    p.add_argument("--min-keep", default="0.1", help="static model: floor per layer, a count or a fraction")
    p.add_argument("--round-to", type=int, default=None,
                   help="static model: kept counts are multiples of N (default as prune: 16 on AVX-512, else 8)")
    _common(p)


def _default_masses():
    from .ftwt import DEFAULT_MASSES
    return DEFAULT_MASSES


def run(args) -> int:
    from .ftwt import NO_GATED_LAYER, build_estimator, estimate
    from .io import save_model
    from .paths import check_targets
    from .sweep import parse_targets

    masses = sorted(parse_targets(args.masses, "--masses"))
    for flag, value in (("--target-macs", args.target_macs), ("--mass", args.mass)):
        if value is not None and not 0 < value <= 1:
            raise OnnxPruneError(f"{flag} must be in (0, 1], got {value}")
    if (args.emit_gated or args.plan_out) and args.target_macs is None and args.mass is None:
        raise OnnxPruneError("--emit-gated and --plan-out need --target-macs or --mass")
    check_targets(args.input, args.emit_gated, args.json, args.plan_out, report_flag="--json")
    _, _, calib, held, estimator = build_estimator(
        args.input, args.calib, calibration_limit=args.calib_limit, calibration_preprocess=args.calib_preprocess,
        input_shapes=cli_files.input_shapes(args.input_shape), min_keep=args.min_keep, round_to=args.round_to,
        eval_data=args.eval_data, labels_key=args.labels)
    result = estimate(estimator, masses, args.target_macs)
    print(result.table())
    if not estimator.layers and (args.emit_gated or args.plan_out):
        raise OnnxPruneError(f"--emit-gated and --plan-out: no layer can be gated; {NO_GATED_LAYER}")
    texts, out, gated = [], result.to_dict(), None
    if args.emit_gated or args.plan_out:
        gate_mass, plan_mass = (_chosen(result, args.mass, kind) for kind in ("dynamic", "static"))
        if args.plan_out:
            point = estimator.point(plan_mass)
            texts.append((args.plan_out, estimator.static_plan(point, {"ftwt_mass": plan_mass}).to_json()))
            print(f"static plan: r = {plan_mass:.4g}, MACs {point.static_macs:.4f} of the original's")
        if args.emit_gated:
            from .gating import emit_gated
            gated = emit_gated(estimator, calib, gate_mass, held)
            out["gated"] = gated.to_dict()
            print(gated.summary())
            if gated.fidelity is not None:
                print(gated.fidelity.summary())
    if args.json:
        texts.append((args.json, json.dumps(out, indent=1)))
    cli_files.write(texts, save=(lambda: cli_files.save(save_model, gated.model, args.emit_gated)) if gated else None)
    for path in (args.emit_gated, args.plan_out, args.json):
        if path:
            log.info("wrote %s", path)
    return 0


def _chosen(result, mass, kind: str) -> float:
    """--mass if given, else the r the --target-macs bisection found for `kind`."""
    if mass is not None:
        return mass
    point = result.target[kind]
    if point is None:
        raise OnnxPruneError(f"--target-macs {result.target['macs']:g} is not reachable by gating "
                             f"{len(result.layers)} layer(s) ({kind} MACs); give a larger target")
    return point.mass
