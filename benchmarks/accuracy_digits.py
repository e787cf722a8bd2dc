"""Test accuracy of data-free pruning, WITHOUT fine-tuning, on the trained digits models.

    python benchmarks/accuracy_digits.py [--targets 0.9 0.8 0.7 0.6 0.5] [--seeds 5]
                                         [--models digits_resnet ...] [--out benchmarks/results]

Models: models/digits_{resnet,mobilenet}{,_folded}.onnx (BN unfused / BN folded), built by
``python -m models.default_model --all``.  Each file is given a dynamic batch axis "N" in
memory (input and output dim 0; the graphs are batch-independent: Conv, BN, Clip/Relu,
Add, GlobalAveragePool, Flatten, Gemm), so onnxprune needs no --input-shape (a dynamic
batch defaults to 1) and the fixed test split of ``models.digits.load_digits_split(16)``
(450 images) runs as one batch in onnxruntime.  The unpruned batched accuracy is checked
against the per-image accuracy recorded in models/digits_*.json.

Each model is pruned with the library API at MAC targets T (fraction of MACs kept):

    slim, report = onnxprune.prune(proto, criterion=C, target_macs=T, ranking=R, seed=S)

    bgsc-raw         criterion="bgsc", ranking="raw"        faithful DFPC: one global list of raw scores
    bgsc-normalized  criterion="bgsc", ranking="normalized" scores / group mean, then one global list
    l1, l2           criterion="l1"/"l2", library defaults (scope local: every group thinned evenly)
    l1-global        criterion="l1", scope="global", ranking="normalized" (extra: separates the
                     criterion from the allocation)
    bgsc-density,    allocator="density": per-group counts from PreCrop layer densities, the
    l1-density       criterion only picks which channels (onnxprune/density.py)
    random           criterion="random", seeds 0..S-1: mean and sample std (ddof=1)
    ablation         bgsc (library-default ranking) with only coupled groups (residual streams,
                     DFCs with >1 feed-in) or only intra-block groups prunable: the keyword
                     `prune_coupled` or `coupled` = "only" / "none", whichever prune() accepts;
                     skipped with a note if neither exists.

Achieved numbers come from report.before / report.after ("macs", "params"). A target can be
missed when group floors (min_keep 10 %) stop the removal; the achieved fraction is what
the table and plot show.  Writes benchmarks/results/accuracy_digits.{json,md,png}.
Nothing is downloaded (scikit-learn ships the digits data).  About 1-2 minutes on 2 cores.
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

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxprune  # noqa: E402
from models.digits import load_digits_split  # noqa: E402

MODELS = ["digits_resnet", "digits_resnet_folded", "digits_mobilenet", "digits_mobilenet_folded"]
TARGETS = [0.9, 0.8, 0.7, 0.6, 0.5]
COMMAND = "python benchmarks/accuracy_digits.py"

# label -> prune() keyword arguments (besides the budget and seed)
CRITERIA = {
    "bgsc-raw": {"criterion": "bgsc", "ranking": "raw"},
    "bgsc-normalized": {"criterion": "bgsc", "ranking": "normalized"},
    "bgsc-position": {"criterion": "bgsc-position", "ranking": "raw"},
    "l1": {"criterion": "l1"},
    "l2": {"criterion": "l2"},
    "l1-global": {"criterion": "l1", "scope": "global", "ranking": "normalized"},
    "bgsc-density": {"criterion": "bgsc", "allocator": "density"},
    "l1-density": {"criterion": "l1", "allocator": "density"},
}
ABLATION = {"bgsc coupled-only": "only", "bgsc intra-block-only": "none"}


def dynamic_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with dim 0 of every graph input and output named "N" and no value_info."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for v in list(out.graph.input) + list(out.graph.output):
        dim = v.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "N"
    del out.graph.value_info[:]
    return out


def accuracy(proto: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> int:
    """Number of correctly classified test images (one batched onnxruntime run)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(dynamic_batch(proto).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return int(np.sum(logits.argmax(1) == y))


def coupled_keyword(proto):
    """The keyword prune() accepts for the coupled / intra-block ablation, or None. Probed by
    calling it (prune may take **options, so its signature does not tell)."""
    for name in ("prune_coupled", "coupled"):
        try:
            onnxprune.prune(proto, criterion="l1", ratio=0.1, **{name: "none"})
            return name
        except (TypeError, onnxprune.OnnxPruneError):
            continue
    return None


class Runner:
    def __init__(self, x, y, budget):
        self.x, self.y, self.budget = x, y, budget  # budget: "target_macs" or "ratio" (fallback)
        self.records = []

    def run(self, model, proto, label, target, seed=0, **kwargs):
        budget = {"target_macs": target} if self.budget == "target_macs" else {"ratio": round(1 - target, 6)}
        t = time.perf_counter()
        slim, report = onnxprune.prune(proto, seed=seed, round_to=1, **budget, **kwargs)  # finest steps
        prune_s = time.perf_counter() - t
        correct = accuracy(slim, self.x, self.y)
        b, a = report.before, report.after
        rec = {"model": model, "config": label, "target_macs": target, "seed": seed,
               "kwargs": {**kwargs, **budget},
               "options": {k: report.options.get(k) for k in ("criterion", "scope", "ranking", "coupled",
                                                               "prune_coupled", "min_keep") if k in report.options},
               "correct": correct, "accuracy": correct / len(self.y),
               "macs_before": b["macs"], "macs_after": a["macs"], "mac_fraction": a["macs"] / b["macs"],
               "params_before": b["params"], "params_after": a["params"],
               "param_fraction": a["params"] / b["params"],
               "notes": [n for n in report.notes if "target" in n or "reach" in n],
               "prune_s": round(prune_s, 3)}
        self.records.append(rec)
        return rec


def check_api(proto):
    """Which budget keyword works, and which criteria exist. Returns (budget, missing, notes)."""
    notes, missing = [], []
    budget = "target_macs"
    try:
        onnxprune.prune(proto, criterion="l1", target_macs=0.9)
    except TypeError as e:
        budget = "ratio"
        notes.append(f"prune() has no target_macs ({e}); FALLBACK: ratio = 1 - T (fraction of channel "
                     "classes removed), so columns are NOT MAC targets")
    for label, kw in CRITERIA.items():
        try:
            onnxprune.prune(proto, **({"target_macs": 0.9} if budget == "target_macs" else {"ratio": 0.1}), **kw)
        except (TypeError, onnxprune.OnnxPruneError) as e:
            missing.append(label)
            notes.append(f"{label} skipped: {type(e).__name__}: {str(e).splitlines()[0]}")
    return budget, missing, notes


def default_bgsc_ranking(proto, budget):
    try:
        kw = {"target_macs": 0.9} if budget == "target_macs" else {"ratio": 0.1}
        _, report = onnxprune.prune(proto, criterion="bgsc", **kw)
        return report.options.get("ranking", "raw")
    except (TypeError, onnxprune.OnnxPruneError):
        return None


def summarize(records, baselines, targets):
    """Per model, config and target: mean/std accuracy, mean MAC/param fraction, n runs."""
    rows = {}
    for r in records:
        rows.setdefault((r["model"], r["config"], r["target_macs"]), []).append(r)
    out = []
    for (model, config, target), rs in rows.items():
        acc = np.array([r["accuracy"] for r in rs])
        out.append({"model": model, "config": config, "target_macs": target, "runs": len(rs),
                    "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                    "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
                    "mac_fraction_mean": float(np.mean([r["mac_fraction"] for r in rs])),
                    "param_fraction_mean": float(np.mean([r["param_fraction"] for r in rs])),
                    "drop_pp": 100 * (baselines[model]["accuracy"] - float(acc.mean()))})
    return out


def cell(s):
    acc = f"{100 * s['accuracy_mean']:.1f}"
    if s["runs"] > 1:
        acc += f" ± {100 * s['accuracy_std']:.1f}"
    return f"{acc} ({s['mac_fraction_mean']:.2f} / {s['param_fraction_mean']:.2f})"


def markdown(result):
    lines = ["# Digits accuracy after data-free pruning, no fine-tuning", "",
             f"Regenerate: `{COMMAND}` (models: `python -m models.default_model --all`).", "",
             f"Test split: {result['test_samples']} images (1 image = {100 / result['test_samples']:.2f} pp). "
             f"Budget: `{result['budget']}`. Cells: test accuracy % (achieved MAC fraction / param fraction). "
             f"random: mean ± sample std over seeds {result['random_seeds']}. "
             f"bgsc library-default ranking: `{result['bgsc_default_ranking']}`.", ""]
    for note in result["notes"]:
        lines.append(f"- NOTE: {note}")
    if result["notes"]:
        lines.append("")
    summary = result["summary"]
    targets = result["targets"]
    for model in result["models"]:
        base = result["baselines"][model]
        lines += [f"## {model}", "",
                  f"Unpruned: {100 * base['accuracy']:.2f} % ({base['correct']}/{result['test_samples']}), "
                  f"{base['macs']:,} MACs, {base['params']:,} params.", "",
                  "| config | " + " | ".join(f"T={t}" for t in targets) + " |",
                  "|---|" + "---|" * len(targets)]
        configs = list(dict.fromkeys(s["config"] for s in summary if s["model"] == model))
        for config in configs:
            cells = []
            for t in targets:
                s = [s for s in summary if s["model"] == model and s["config"] == config and s["target_macs"] == t]
                cells.append(cell(s[0]) if s else "—")
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
        lines.append("")
    if 0.7 in targets:
        lines += ["## At T = 0.7: bgsc (default ranking) vs l1 vs random", "",
                  "| model | bgsc default | l1 | random (mean ± std) | bgsc − l1 (pp) | bgsc − random (pp) |",
                  "|---|---|---|---|---|---|"]
        default = f"bgsc-{result['bgsc_default_ranking']}"
        for model in result["models"]:
            get = {s["config"]: s for s in summary if s["model"] == model and s["target_macs"] == 0.7}
            if default in get and "l1" in get and "random" in get:
                b, l, r = get[default], get["l1"], get["random"]
                lines.append(f"| {model} | {cell(b)} | {cell(l)} | {cell(r)} | "
                             f"{100 * (b['accuracy_mean'] - l['accuracy_mean']):+.1f} | "
                             f"{100 * (b['accuracy_mean'] - r['accuracy_mean']):+.1f} |")
        lines.append("")
    return "\n".join(lines)


STYLE = {"bgsc-raw": ("tab:red", "o", "-"), "bgsc-normalized": ("tab:purple", "s", "-"),
         "l1": ("tab:blue", "^", "-"), "l2": ("tab:cyan", "v", "-"), "l1-global": ("tab:green", "D", "--"),
         "random": ("tab:gray", "x", "-"), "bgsc coupled-only": ("tab:orange", "<", ":"),
         "bgsc intra-block-only": ("tab:brown", ">", ":")}


def plot(result, path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    cols = 2 if len(models) > 1 else 1
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        base = result["baselines"][model]
        ax.axhline(100 * base["accuracy"], color="k", lw=0.8, ls="--", label="unpruned")
        ax.axhline(10, color="k", lw=0.6, ls=":", alpha=0.5)  # chance (10 classes)
        summary = [s for s in result["summary"] if s["model"] == model]
        for config in dict.fromkeys(s["config"] for s in summary):
            ss = sorted((s for s in summary if s["config"] == config), key=lambda s: -s["mac_fraction_mean"])
            color, marker, ls = STYLE.get(config, (None, "o", "-"))
            x = [s["mac_fraction_mean"] for s in ss]
            y = [100 * s["accuracy_mean"] for s in ss]
            if config == "random":
                ax.errorbar(x, y, yerr=[100 * s["accuracy_std"] for s in ss], color=color, marker=marker,
                            ls=ls, capsize=3, label="random (mean ± std)")
            else:
                ax.plot(x, y, color=color, marker=marker, ls=ls, label=config)
        ax.set_title(f"{model} (unpruned {100 * base['accuracy']:.1f} %)")
        ax.set_xlabel("achieved MAC fraction (after / before)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlim(1.02, min(0.4, min(s["mac_fraction_mean"] for s in summary) - 0.03))
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("digits (450 test images): accuracy after data-free pruning, no fine-tuning", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--targets", nargs="+", type=float, default=TARGETS)
    ap.add_argument("--seeds", type=int, default=5, help="random criterion: seeds 0..N-1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    start = time.perf_counter()
    _, _, x_test, y_test = load_digits_split(16)
    runner_notes = []

    protos, baselines = {}, {}
    for model in args.models:
        path = os.path.join(ROOT, "models", f"{model}.onnx")
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run `python -m models.default_model --all` first")
        protos[model] = dynamic_batch(onnx.load(path))
        correct = accuracy(protos[model], x_test, y_test)
        info_path = os.path.join(ROOT, "models", model.replace("_folded", "") + ".json")
        recorded = None
        if os.path.exists(info_path):
            info = json.load(open(info_path))
            recorded = info.get("folded_test_correct" if model.endswith("_folded") else "test_correct")
            if recorded is not None and recorded != correct:
                sys.exit(f"{model}: batched accuracy {correct} != per-image {recorded} in {info_path}")
        _, rep = onnxprune.prune(protos[model], criterion="l1", ratio=0.0)
        baselines[model] = {"correct": correct, "accuracy": correct / len(y_test), "recorded_correct": recorded,
                            "macs": rep.before["macs"], "params": rep.before["params"]}
        print(f"{model}: unpruned {correct}/{len(y_test)} = {100 * correct / len(y_test):.2f} %  "
              f"({rep.before['macs']:,} MACs, {rep.before['params']:,} params)")

    budget, missing, notes = check_api(protos[args.models[0]])
    runner_notes += notes
    default_ranking = default_bgsc_ranking(protos[args.models[0]], budget)
    ckw = coupled_keyword(protos[args.models[0]])
    if ckw is None:
        runner_notes.append("ablation coupled-only / intra-block-only skipped: prune() accepts neither "
                            "`prune_coupled` nor `coupled`")
    for n in runner_notes:
        print("NOTE:", n)

    runner = Runner(x_test, y_test, budget)
    for model in args.models:
        t0 = time.perf_counter()
        for target in args.targets:
            for label, kw in CRITERIA.items():
                if label not in missing:
                    runner.run(model, protos[model], label, target, **kw)
            for seed in range(args.seeds):
                runner.run(model, protos[model], "random", target, seed=seed, criterion="random")
            if ckw is not None and default_ranking is not None:
                for label, value in ABLATION.items():
                    try:
                        runner.run(model, protos[model], label, target, criterion="bgsc", **{ckw: value})
                    except TypeError as e:
                        runner_notes.append(f"ablation {label} failed: {e}")
        print(f"{model}: {len([r for r in runner.records if r['model'] == model])} pruned models "
              f"in {time.perf_counter() - t0:.1f}s")

    result = {
        "command": COMMAND, "models_command": "python -m models.default_model --all",
        "models": args.models, "targets": args.targets, "budget": budget,
        "random_seeds": list(range(args.seeds)), "bgsc_default_ranking": default_ranking,
        "coupled_keyword": ckw, "test_samples": len(y_test), "baselines": baselines,
        "notes": list(dict.fromkeys(runner_notes)),
        "environment": {"python": platform.python_version(), "onnx": onnx.__version__,
                        "onnxruntime": ort.__version__, "onnxprune": getattr(onnxprune, "__version__", "?")},
        "summary": summarize(runner.records, baselines, args.targets),
        "runs": runner.records,
    }
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "accuracy_digits.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    md = markdown(result)
    with open(os.path.join(args.out, "accuracy_digits.md"), "w") as f:
        f.write(md + "\n")
    png = os.path.join(args.out, "accuracy_digits.png")
    plotted = plot(result, png)
    print()
    print(md)
    print(f"wrote {os.path.join(args.out, 'accuracy_digits.json')}, accuracy_digits.md"
          + (", accuracy_digits.png" if plotted else "") + f" in {result['elapsed_s']}s")
    print(f"regenerate: {COMMAND}")


if __name__ == "__main__":
    main()
