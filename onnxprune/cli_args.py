"""The command line's arguments, per subcommand (onnxprune/cli.py parses and runs them)."""
from __future__ import annotations

import argparse
import logging


def _common(p):
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="fix the shape of an input with dynamic dimensions (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="node-name glob whose channels stay (repeatable)")


def verbosity():
    """-q / -v, shared by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    levels = p.add_mutually_exclusive_group()
    levels.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.ERROR,
                        default=logging.INFO, help="print errors only (and the results of analyze, bench, evaluate, sweep)")
    levels.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                        help="also print stage timings and debug detail (on stderr)")
    return p


def prune_arguments(p):
    p.add_argument("input", help="model to prune (never modified)")
    p.add_argument("output", help="where to write the pruned model")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, help="fraction of prunable channels to remove (default 0.3)")
    budget.add_argument("--target-macs", type=float, metavar="F", help="keep this fraction of the MACs")
    p.add_argument("--target-params", type=float, metavar="F", help="keep this fraction of the parameters "
                   "(with --target-macs too: both, with --allocator synexp)")
    budget.add_argument("--target-latency", type=float, metavar="F",
                        help="keep this fraction of the latency, measured in onnxruntime with --provider, "
                             "--threads and --batch (per-layer width curves measured and cached in "
                             "--latency-table; the pruned model is timed against the original)")
    p.add_argument("--latency-table", metavar="PATH",
                   help="JSON cache of measured layer latencies for --target-latency, reused by later runs "
                        "(default: ~/.cache/onnxprune/latency_table.json)")
    selection_options(p)
    p.add_argument("--plan", help="apply this plan (JSON) instead of scoring")
    p.add_argument("--plan-out", help="write the applied plan as JSON")
    p.add_argument("--report", help="write the full report as JSON (also when the oracle fails)")
    p.add_argument("--verify", action="store_true",
                   help="run the masking oracle; exit 1 (and write no model) when it fails")
    p.add_argument("--bench", action="store_true", help="time the input and the output (see 'onnxprune bench')")
    bench_options(p)
    data_options(p)
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="oracle tolerance: max relative difference, or 4x the measured noise, or "
                        "4 eps of float16 (float16 models) if larger")
    _common(p)


def shrink_arguments(p):
    p.add_argument("input", help="model whose pruned channels are zeroed (never modified)")
    p.add_argument("output", help="where to write the smaller model")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="weights, BN scales and constant factors with |w| <= T count as zero (default 0)")
    p.add_argument("--approximate", action="store_true",
                   help="also remove dead channels whose constant cannot be folded exactly (interior value "
                        "folded; the output then differs from the input's)")
    p.add_argument("--report", "--report-json", dest="report", help="write the full report as JSON")
    p.add_argument("--verify", action="store_true",
                   help="run the masking oracle and compare with the input; exit 1 (and write no model) "
                        "when they differ")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs the checks run on")
    residual_option(p)
    _common(p)


def selection_options(p):
    """How channels are chosen and removed: shared by prune and sweep."""
    p.add_argument("--criterion", default="auto", help="saliency: auto (default: activation with --calib, "
                   "bn-variance without), bgsc (data-free DFPC bound), bn-variance (data-free, from BN "
                   "statistics), l1, l2, random; with --calib also activation, fluctuation, heatmap, lsq-aware")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion and the oracle inputs")
    p.add_argument("--scope", choices=["local", "global"],
                   help="local: the same fraction in every group; global: one ranking across groups "
                        "(default: global for bgsc, local otherwise)")
    p.add_argument("--ranking", choices=["raw", "normalized"],
                   help="global ranking: raw scores (faithful DFPC) or scores divided by their group's "
                        "mean (default for bgsc: normalized)")
    p.add_argument("--allocator", default=None,
                   choices=["rank", "density", "sensitivity", "synexp", "synexp-weighted", "latency", "auto"],
                   help="'auto' (the default): rank, rank with residual streams last, rank with "
                        "the other --ranking and "
                        "(with a cost target) density are each tried, and the plan whose recovered "
                        "outputs stay closest on held-out data (without --calib: synthetic images) is kept; "
                        "'rank' (the default where there is nothing to measure on) "
                        "removes channels in score order; with --target-macs/--target-params: "
                        "'density' sets each group's count from layer densities (PreCrop, greedy), "
                        "'synexp' from the same program solved continuously, 'synexp-weighted' with "
                        "each group weighted by its sensitivity (measured on --calib, else from the "
                        "scores), 'sensitivity' from output error measured on --calib, 'latency' "
                        "trades importance against milliseconds per MAC, timed like --target-latency; the "
                        "criterion picks the channels")
    p.add_argument("--speed-weight", type=float, metavar="W",
                   help="--allocator latency: a fraction of the latency saved is worth W times the "
                        "importance the importance-only plan removes (default 128; 0: that plan)")
    p.add_argument("--coupled", default=None, choices=["all", "only", "none", "last"],
                   help="prune all groups, only coupled ones (several feed-in layers), none of those, "
                        "or coupled ones last (default: per criterion)")
    residual_option(p)
    p.add_argument("--min-keep", default="0.1",
                   help="floor per group: a count >= 1, or a fraction in (0, 1) (default 0.1)")
    p.add_argument("--round-to", type=int, default=None,
                   help="kept channel counts are multiples of N (default: 16 on AVX-512 CPUs, 8 "
                        "otherwise, so onnxruntime's blocked kernels stay on their fast path; 1 "
                        "for the finest steps)")
    p.add_argument("--fold", default="exact", choices=["none", "exact", "approx"],
                   help="constants carried by removed channels: fold into consumer biases where "
                        "exact (default), also approximately (interior value), or drop")


def residual_option(p):
    p.add_argument("--residual", default="coupled", choices=["coupled", "independent"],
                   help="a residual Add's branches keep the same channels (coupled, default) or each "
                        "its own: the Add then reads a branch through Pad + Gather where it lacks some "
                        "of the union's channels (independent)")


def bench_options(p):
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="execution provider (cuda, tensorrt: inputs and outputs stay on the GPU)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per model")
    p.add_argument("--runs", type=int, default=30, help="timed runs per model (alternating)")


def bench_arguments(p):
    p.add_argument("models", nargs="+")
    bench_options(p)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...")


def analyze_arguments(p):
    p.add_argument("input")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.add_argument("--criterion", help="also score channels: per-group score statistics and the "
                   "Maximum Score Disagreement between feed-in layers")
    residual_option(p)
    _common(p)


def data_options(p):
    """Calibration data for recovery, held-out data for fidelity (docs/methods.md §5)."""
    g = p.add_argument_group("data (optional): recovery and fidelity")
    g.add_argument("--calib", metavar="PATH",
                   help="unlabelled calibration inputs: .npz keyed by input name, .npy (one input), a "
                        "folder of images (see --calib-preprocess), or the word 'synthetic' (1/f-noise images); "
                        "recovery fits on them")
    g.add_argument("--calib-limit", type=int, metavar="N", help="use the first N calibration samples")
    g.add_argument("--calib-preprocess", metavar="SPEC",
                   help="image folders and synthetic images: e.g. 'size=224,224;mean=0.485,0.456,0.406;"
                        "std=0.229,0.224,0.225;scale=255;layout=NCHW;channels=RGB' (defaults from the model's "
                        "input; for synthetic images, the normalisation read from its first BatchNormalization)")
    g.add_argument("--eval-data", metavar="PATH",
                   help="held-out inputs for the fidelity report (default: a fifth of --calib, held out)")
    g.add_argument("--labels", default="labels", metavar="KEY",
                   help="npz key of integer labels: the fidelity report adds accuracy (default: labels)")
    g.add_argument("--recover", default="auto", metavar="METHODS",
                   help="after the exact rewrite: 'none' or a comma list of merge, means, stats, lsq, fit (neuron "
                        "merging, mean compensation, statistics correction, least-squares refit, end-to-end fit "
                        "to the original's outputs, which needs torch: pip install 'onnxprune[fit]'); default "
                        "'auto': lsq,fit with --calib (the fit kept where it brings the held-out outputs closer); "
                        "without, lsq on synthetic images for an image model (range read from its first "
                        "BatchNormalization), stats otherwise; 'stats' is the fast data-free path")


def evaluate_arguments(p):
    p.add_argument("original", help="the original model")
    p.add_argument("pruned", help="the pruned (or otherwise changed) model")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="inputs to compare on: .npz keyed by input name, .npy, or a folder of images")
    p.add_argument("--labels", default=None, metavar="KEY", help="npz key of integer labels (adds accuracy)")
    p.add_argument("--calib-preprocess", metavar="SPEC", help="preprocessing of an image folder")
    p.add_argument("--limit", type=int, metavar="N", help="use the first N samples")
    p.add_argument("--batch", type=int, default=32, help="samples per onnxruntime run")
    p.add_argument("--json", action="store_true", help="print the fidelity as JSON")


def sweep_arguments(p):
    p.add_argument("input", help="model to prune at every target (never modified)")
    p.add_argument("--targets", required=True, metavar="LIST",
                   help="comma list of fractions in (0, 1] to keep, e.g. 0.9,0.8,0.7,0.6,0.5")
    p.add_argument("--target-kind", default="macs", choices=["macs", "params"],
                   help="what each target is a fraction of (default: macs)")
    selection_options(p)
    p.add_argument("--bench", action="store_true",
                   help="also time the original and every pruned model (one alternating series)")
    bench_options(p)
    data_options(p)
    p.add_argument("--plot", metavar="PNG", help="draw fidelity and latency (or MACs) against the target "
                   "(needs matplotlib: pip install 'onnxprune[plot]')")
    p.add_argument("--json", metavar="PATH", help="write the sweep as JSON")
    p.add_argument("--save-dir", metavar="DIR", help="also write each pruned model there, as "
                   "<input stem>_<kind><target>.onnx")
    _common(p)
