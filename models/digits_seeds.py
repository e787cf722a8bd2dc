"""Further trained instances of the digits models, with another training seed.

    python -m models.digits_seeds                   # seed 1: resnet and mobilenet
    python -m models.digits_seeds --seed 2 --model resnet

Same architecture, hyper-parameters, data split, single thread and deterministic kernels as
``models.default_model`` (whose ``train`` and exports this reuses unchanged); only the seed
given to ``train`` (weight initialisation and batch order) differs. Writes

    models/digits_<name>_s<seed>.onnx          BN unfused
    models/digits_<name>_s<seed>_folded.onnx   BN folded
    models/digits_<name>_s<seed>.json          test accuracy of both files and of torch

Seed 0 is ``python -m models.default_model`` itself (files without the ``_s`` suffix).
Used by benchmarks/accuracy_recovery.py, to see whether a conclusion holds on a second
trained instance of each architecture.
"""

import argparse
import json
import time

import numpy as np
import torch

from .default_model import HERE, MODELS, SIZE, load_digits_split, onnx_predictions, train
from .export import export_onnx

__all__ = ["build_and_export_seed", "main"]


def build_and_export_seed(name, seed):
    """Train model ``name`` (a key of default_model.MODELS) with ``seed``; export both ONNX
    files and the json. Returns the json's dict."""
    if seed == 0:
        raise ValueError("seed 0 is `python -m models.default_model` (files without a suffix)")
    factory, hparams = MODELS[name]
    start = time.perf_counter()
    model = train(factory=factory, seed=seed, **hparams)
    train_s = time.perf_counter() - start
    _, _, x_test, y_test = load_digits_split(SIZE)
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    shape = (1, 1, SIZE, SIZE)
    stem = f"digits_{name}_s{seed}"
    unfused, folded = HERE / f"{stem}.onnx", HERE / f"{stem}_folded.onnx"
    export_onnx(model, shape, unfused, keep_bn=True, unshare=True)
    export_onnx(model, shape, folded, keep_bn=False, unshare=True)
    pred, pred_folded = onnx_predictions(unfused, x_test), onnx_predictions(folded, x_test)
    info = {
        "model": factory.__name__,
        "test_accuracy": round(float(np.mean(pred == y_test)), 4),
        "folded_test_accuracy": round(float(np.mean(pred_folded == y_test)), 4),
        "torch_test_accuracy": round(float(np.mean(torch_pred == y_test)), 4),
        "test_correct": int(np.sum(pred == y_test)),
        "folded_test_correct": int(np.sum(pred_folded == y_test)),
        "test_samples": len(y_test),
        "predictions_differing_folded_vs_unfused": int(np.sum(pred != pred_folded)),
        "files": {"bn_unfused": unfused.name, "bn_folded": folded.name},
        "params": sum(p.numel() for p in model.parameters()),
        "input_shape": list(shape),
        "train": {"epochs": hparams["epochs"], "lr": hparams["lr"], "batch": hparams.get("batch", 64),
                  "seed": seed, "optimizer": "AdamW(weight_decay=1e-4) + OneCycleLR", "threads": 1},
        "train_s": round(train_s, 1),
        "train_command": f"python -m models.digits_seeds --seed {seed} --model {name}",
        "torch_version": torch.__version__,
    }
    (HERE / f"{stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(f"{stem}: trained in {train_s:.1f}s")
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m models.digits_seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="training seed, >= 1 (default 1)")
    parser.add_argument("--model", choices=sorted(MODELS), action="append",
                        help="repeatable; default: every digits model")
    args = parser.parse_args(argv)
    for name in args.model or list(MODELS):
        build_and_export_seed(name, args.seed)


if __name__ == "__main__":
    main()
