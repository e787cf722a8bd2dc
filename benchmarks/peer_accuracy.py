"""Test accuracy at equal MACs, without data and without fine-tuning: onnxprune against
Torch-Pruning's group-L1 magnitude pruner (the best peer we can run).

    pip install torch-pruning        # benchmark extra only
    python benchmarks/peer_accuracy.py [--models resnet mobilenet resnet_s1 ...] [--targets 0.8 0.7]
        [--cache /tmp/onnxprune_peer_cache] [--no-folded]

For each trained digits model (models/default_model.py MODELS; "<name>_s1" is the seed-1
instance of models/digits_seeds.py):
  1. build the torch module of MODELS and load every parameter and BN statistic from the ONNX
     file's initializers (the exports keep the state_dict names), so that Torch-Pruning and
     onnxprune start from the same network; its test predictions are checked against the ONNX
     file's (450-image test split). Retraining (models/default_model.train, state_dicts cached
     under --cache, never in the repository; --retrain trains the missing ones) is only compared:
     on this machine it does not reproduce the files' weights;
  2. Torch-Pruning 1.6 MetaPruner, GroupMagnitudeImportance(p=1) (group L1, mean reduction, mean
     normalizer), example input 1x1x16x16, the final Linear ignored, round_to None, one step,
     global_pruning False (TP's default) and True; pruning_ratio found by bisection as the
     smallest ratio whose MACs (tp.utils.count_ops_and_params) are <= target x original. The
     pruned torch module (BN kept, running statistics sliced, no fine-tuning) is evaluated on the
     test split, and exported to ONNX to count its MACs with onnxprune's own counter too;
  3. onnxprune.prune(<model>.onnx, target_macs=T), scored afterwards on the test split, with T = the smallest
     achieved MAC fraction of the two TP variants under either counter (so onnxprune never
     gets more MACs than TP): library defaults (criterion auto = bn-variance without data),
     calibration="synthetic" (1/f-noise images: no data), criterion="l1", recover="none", and
     the defaults with round_to=1 (TP rounds nothing); on the BN-kept and the BN-folded export.
No real calibration data anywhere. Writes benchmarks/results/peer_accuracy.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnxprune  # noqa: E402
from models.default_model import MODELS, onnx_predictions, train  # noqa: E402
from models.digits import load_digits_split  # noqa: E402
from models.export import export_onnx  # noqa: E402
from onnxprune.cost import cost  # noqa: E402
from onnxprune.fidelity import evaluate  # noqa: E402
from onnxprune.load import load  # noqa: E402

SHAPE = (1, 1, 16, 16)
DEFAULT_MODELS = ["resnet", "mobilenet", "vgg", "densenet", "resnet_s1", "mobilenet_s1", "vgg_s1", "densenet_s1"]
ONNXPRUNE_RUNS = {"default": {}, "synthetic": {"calibration": "synthetic"},   # 1/f images, no data
                  "l1 none": {"criterion": "l1", "recover": "none"},
                  "default round_to 1": {"round_to": 1}}  # TP's round_to is None: channel counts as free


def split_key(key: str) -> tuple[str, int]:
    name, _, seed = key.partition("_s")
    return name, int(seed) if seed else 0


def retrained_model(key: str, cache: str, train_missing: bool):
    """The module retrained with models/default_model.train (cached under ``cache``), or None
    when it is not cached and ``train_missing`` is false."""
    name, seed = split_key(key)
    factory, hparams = MODELS[name]
    path = os.path.join(cache, f"{name}_s{seed}.pt")
    if os.path.exists(path):
        model = factory(num_classes=10)
        model.load_state_dict(torch.load(path))
        return model.eval()
    if not train_missing:
        return None
    trained = train(factory=factory, seed=seed, **hparams)
    os.makedirs(cache, exist_ok=True)
    torch.save(trained.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    return trained.eval()


def model_from_onnx(key: str, path: str) -> torch.nn.Module:
    """The torch module of MODELS with every parameter and BN statistic taken from the ONNX
    file's initializers (the exports keep the state_dict names, unshare=True): the same network."""
    factory, _ = MODELS[split_key(key)[0]]
    model = factory(num_classes=10).eval()
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    state = model.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"{path}: no initializer for {missing[:5]}")
    model.load_state_dict({k: torch.from_numpy(inits[k].copy()) if k in inits else v for k, v in state.items()})
    return model


def torch_predictions(model, x) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).argmax(1).numpy()


def tp_prune(model, ratio: float, global_pruning: bool):
    import torch_pruning as tp
    pruned = copy.deepcopy(model).eval()
    example = torch.zeros(*SHAPE)
    head = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, iterative_steps=1, ignored_layers=head,
                                  round_to=None, global_pruning=global_pruning)
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(pruned, example)
    return pruned, macs, params


def tp_at_target(model, base_macs: float, target: float, global_pruning: bool, iters: int = 14):
    """Smallest pruning_ratio (bisection) whose MACs are <= target x base_macs."""
    lo, hi = 0.0, 0.99
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        try:
            pruned, macs, params = tp_prune(model, mid, global_pruning)
        except Exception as exc:  # a layer emptied by the global ranking: treat as too much pruning
            print(f"    TP ratio {mid:.4f} global={global_pruning} failed: {exc!r}", flush=True)
            hi = mid
            continue
        if macs <= target * base_macs:
            hi, best = mid, (mid, pruned, macs, params)
        else:
            lo = mid
    if best is None:
        mid = hi
        pruned, macs, params = tp_prune(model, mid, global_pruning)
        best = (mid, pruned, macs, params)
    return best


def channel_widths(module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None,
                    help="keys: name or name_s1 (default: %s, those whose ONNX files exist)" % " ".join(DEFAULT_MODELS))
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.7])
    ap.add_argument("--cache", default="/tmp/onnxprune_peer_cache")
    ap.add_argument("--no-folded", action="store_true", help="skip the BN-folded exports")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--retrain", action="store_true",
                    help="retrain the modules missing from --cache to compare them with the ONNX files "
                         "(without it, only cached ones are compared)")
    args = ap.parse_args(argv)
    out = os.path.join(ROOT, "benchmarks", "results", "peer_accuracy")
    if args.render:
        with open(out + ".json") as f:
            data = json.load(f)
        with open(out + ".md", "w") as f:
            f.write(markdown(data, data["models"], data["rows"]))
        return 0
    try:
        import torch_pruning as tp
    except ImportError:
        print("torch-pruning is not installed (pip install torch-pruning): nothing measured")
        return 0
    torch.set_num_threads(1)
    keys = args.models or [k for k in DEFAULT_MODELS
                           if os.path.exists(os.path.join(ROOT, "models", f"digits_{k}.onnx"))]
    _, _, x_test, y_test = load_digits_split(16)
    rows, models_info = [], []
    with tempfile.TemporaryDirectory() as tmp:
        test = os.path.join(tmp, "test.npz")
        np.savez(test, input=x_test, labels=y_test)
        for key in keys:
            t0 = time.perf_counter()
            files = {"bn": os.path.join(ROOT, "models", f"digits_{key}.onnx")}
            if not args.no_folded:
                files["folded"] = os.path.join(ROOT, "models", f"digits_{key}_folded.onnx")
            model = model_from_onnx(key, files["bn"])
            pred_torch = torch_predictions(model, x_test)
            pred_onnx = onnx_predictions(files["bn"], x_test)
            retrained = retrained_model(key, args.cache, args.retrain)
            pred_retrained = None if retrained is None else torch_predictions(retrained, x_test)
            base_tp, base_params = tp.utils.count_ops_and_params(model, torch.zeros(*SHAPE))
            base_op = {kind: cost(load(path)).macs for kind, path in files.items()}
            base_op_torch = cost(load(export_onnx(model, SHAPE))).macs
            info = {"model": key, "torch_accuracy": float(np.mean(pred_torch == y_test)),
                    "onnx_accuracy": float(np.mean(pred_onnx == y_test)),
                    "predictions_differing_torch_vs_onnx": int(np.sum(pred_torch != pred_onnx)),
                    "retrained_accuracy": None if retrained is None else float(np.mean(pred_retrained == y_test)),
                    "predictions_differing_retrained_vs_onnx":
                        None if retrained is None else int(np.sum(pred_retrained != pred_onnx)),
                    "macs_tp_counter": int(base_tp), "macs_onnxprune_counter": base_op,
                    "macs_onnxprune_counter_on_torch_export": int(base_op_torch), "params": int(base_params)}
            models_info.append(info)
            print(json.dumps(info), flush=True)
            for target in args.targets:
                tp_runs = {}
                for label, glob in (("TP local", False), ("TP global", True)):
                    ratio, pruned, macs, params = tp_at_target(model, base_tp, target, glob)
                    frac_op = cost(load(export_onnx(copy.deepcopy(pruned), SHAPE))).macs / base_op_torch
                    acc = float(np.mean(torch_predictions(pruned, x_test) == y_test))
                    tp_runs[label] = {"ratio": round(ratio, 5), "accuracy": acc, "mac_fraction_tp": macs / base_tp,
                                      "mac_fraction_onnxprune_counter": frac_op, "params_fraction": params / base_params,
                                      "conv_widths": channel_widths(pruned)}
                    print(f"  {key} T={target} {label}: ratio {ratio:.4f} acc {acc:.4f} MACs {macs / base_tp:.4f} "
                          f"(onnxprune counter {frac_op:.4f})", flush=True)
                t_equal = min(min(r["mac_fraction_tp"], r["mac_fraction_onnxprune_counter"]) for r in tp_runs.values())
                for kind, path in files.items():
                    row = {"model": key, "file": os.path.basename(path), "bn": kind, "target": target,
                           "onnxprune_target_macs": t_equal, "unpruned_onnx": None, "unpruned_torch": info["torch_accuracy"],
                           "tp": tp_runs, "onnxprune": {}}
                    for label, kwargs in ONNXPRUNE_RUNS.items():
                        try:
                            # the test images never reach the prune (a user without data has none to give
                            # its guard or its synthetic calibration); the result is scored afterwards
                            slim, rep = onnxprune.prune(path, target_macs=t_equal, **kwargs)
                            scored = evaluate(path, slim, test, labels_key="labels")
                        except Exception as exc:
                            row["onnxprune"][label] = {"error": repr(exc)}
                            print(f"  {key} {kind} T={target} onnxprune {label}: {exc!r}", flush=True)
                            continue
                        fid = scored.outputs[0]
                        row["unpruned_onnx"] = fid.accuracy_original
                        frac = rep.after["macs"] / rep.before["macs"]
                        row["onnxprune"][label] = {
                            "accuracy": fid.accuracy_pruned, "mac_fraction": frac, "within_tp_macs": frac <= t_equal + 1e-9,
                            "options": {k: v for k, v in rep.options.items() if k != "input_shapes"},
                            "recover": (rep.recovery or {}).get("methods"), "kwargs": kwargs}
                        print(f"  {key} {kind} T={target} onnxprune {label}: acc {fid.accuracy_pruned:.4f} "
                              f"MACs {frac:.4f} (<= {t_equal:.4f}) criterion {rep.options['criterion']} "
                              f"recover {(rep.recovery or {}).get('methods')}", flush=True)
                    rows.append(row)
            print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
    command = "python benchmarks/peer_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from importlib.metadata import version  # 1.6.1's wheel says __version__ 1.6.0
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command.strip(), "torch_pruning": tp.__version__,
            "torch_pruning_dist": version("torch-pruning"),
            "torch": torch.__version__, "onnxprune_commit": git_commit(), "onnxprune_runs": ONNXPRUNE_RUNS}
    with open(out + ".json", "w") as f:
        json.dump({**meta, "models": models_info, "rows": rows}, f, indent=1)
    md = markdown(meta, models_info, rows)
    with open(out + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


def git_commit() -> str | None:
    import subprocess
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cell(r: dict) -> str:
    if "error" in r:
        return "error"
    frac = r.get("mac_fraction", r.get("mac_fraction_onnxprune_counter"))
    over = "" if r.get("within_tp_macs", True) else " †"
    return f"{100 * r['accuracy']:.1f} ({frac:.3f}){over}"


def verdict(row: dict, label: str = "default") -> str:
    d = row["onnxprune"].get(label, {})
    if "accuracy" not in d:
        return "—"
    if not d["within_tp_macs"]:
        return "no (more MACs)"
    return "yes" if d["accuracy"] >= max(v["accuracy"] for v in row["tp"].values()) else "no"


def markdown(meta, models_info, rows) -> str:
    lines = [f"# onnxprune vs Torch-Pruning {meta['torch_pruning']} at equal MACs, no data, no fine-tuning", "",
             f"`{meta['command']}`, {meta['date']}, torch {meta['torch']}, onnxprune at commit "
             f"{meta.get('onnxprune_commit')}. Accuracy % on the 450 test images "
             "(achieved MAC fraction, onnxprune's counter for every cell; TP's bisection used TP's counter). "
             "onnxprune's target is the smaller TP fraction (either counter).", "",
             "| model | file | target | unpruned onnx / torch | TP local | TP global | onnxprune default | "
             "onnxprune --calib synthetic | onnxprune l1 no recovery | onnxprune default, round_to 1 | default ≥ best TP |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        op = r["onnxprune"]
        lines.append(f"| {r['model']} | {r['bn']} | {r['target']} | {100 * (r['unpruned_onnx'] or 0):.1f} / "
                     f"{100 * r['unpruned_torch']:.1f} | {cell(r['tp']['TP local'])} | {cell(r['tp']['TP global'])} | "
                     + " | ".join(cell(op[k]) if k in op else "—" for k in ONNXPRUNE_RUNS) + f" | {verdict(r)} |")
    lines += ["", "† onnxprune did not reach TP's MAC fraction (achieved more MACs): not an equal-MACs cell.", "",
              "Per model and file: does onnxprune (default / --calib synthetic / default with round_to 1) reach the best "
              "TP variant at every target, at no more MACs?", ""]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["bn"]), []).append(
            [verdict(r, k) == "yes" for k in ("default", "synthetic", "default round_to 1")])
    for (model, bn), oks in groups.items():
        parts = [f"{'yes' if all(o[i] for o in oks) else 'no'} ({sum(o[i] for o in oks)}/{len(oks)})" for i in range(3)]
        lines.append(f"* {model} ({bn}): default {parts[0]}; --calib synthetic {parts[1]}; default round_to 1 {parts[2]}")
    lines += ["", "Unpruned: torch module with the ONNX weights vs the ONNX file (onnxruntime), a retrained module "
              "(models/default_model.train, same seed) vs the file, and the two MAC counters.", "",
              "| model | torch acc | onnx acc | predictions differing | retrained acc | retrained: predictions differing "
              "from the file | MACs TP counter | MACs onnxprune counter (BN / folded) |",
              "|---|---|---|---|---|---|---|---|"]
    for m in models_info:
        re_acc = "—" if m["retrained_accuracy"] is None else f"{100 * m['retrained_accuracy']:.2f}"
        re_diff = "—" if m["predictions_differing_retrained_vs_onnx"] is None else m["predictions_differing_retrained_vs_onnx"]
        lines.append(f"| {m['model']} | {100 * m['torch_accuracy']:.2f} | {100 * m['onnx_accuracy']:.2f} | "
                     f"{m['predictions_differing_torch_vs_onnx']} | {re_acc} | {re_diff} | {m['macs_tp_counter']} | "
                     + " / ".join(str(v) for v in m["macs_onnxprune_counter"].values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
