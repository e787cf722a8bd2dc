"""Train the digits models on scikit-learn digits (16x16) and export them to ONNX.

    python -m models.default_model                  # small_resnet only (the default model)
    python -m models.default_model --all            # every digits model (resnet, mobilenet, vgg, densenet)
    python -m models.default_model --model mobilenet

Each model is exported twice, input "input" 1x1x16x16, output "logits":

    models/digits_<name>.onnx         BatchNormalization unfused (TrainingMode.PRESERVE,
                                      no constant folding)
    models/digits_<name>_folded.onnx  default eval export, BN folded into the convs
    models/digits_<name>.json         test accuracy of both files (onnxruntime) and of torch

<name> is "resnet" (``zoo.small_resnet``, about 25 s to train) or "mobilenet"
(``models.digits_mobilenet``, MobileNetV2-style, about 1 min of CPU time).  Training runs on
one CPU thread with deterministic kernels and fixed seeds, on the fixed split of
``models.digits.load_digits_split(16)``, so the files are reproducible
(digits_resnet.onnx byte for byte).  Exports give every parameter its own initializer
(``unshare=True``): the two BN biases before each residual Add train to identical
values, which the exporter would otherwise de-duplicate into Identity nodes.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .digits import load_digits_split
from .digits_extra import digits_densenet, digits_vgg
from .digits_mobilenet import digits_mobilenet
from .export import export_onnx
from .zoo import small_resnet

__all__ = ["load_digits_split", "train", "main", "MODELS", "build_and_export"]

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_resnet.onnx"
JSON_PATH = HERE / "digits_resnet.json"
SIZE = 16

# name -> (factory, training hyper-parameters)
MODELS = {
    "resnet": (small_resnet, {"epochs": 30, "lr": 3e-3}),
    "mobilenet": (digits_mobilenet, {"epochs": 20, "lr": 1e-2, "batch": 128}),
    "vgg": (digits_vgg, {"epochs": 20, "lr": 3e-3}),
    "densenet": (digits_densenet, {"epochs": 20, "lr": 3e-3}),
}


def train(epochs=30, batch=64, lr=3e-3, seed=0, factory=small_resnet):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, _, _ = load_digits_split(SIZE)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = factory(num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def onnx_predictions(path, x):
    """Predicted classes of the exported file itself (static batch 1, so one run per image)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.array([sess.run(None, {"input": xi[None]})[0].argmax() for xi in x])


def onnx_accuracy(path, x, y):
    return float(np.mean(onnx_predictions(path, x) == y))


def build_and_export(name, seed=0):
    """Train model ``name`` (a key of MODELS) with ``seed``, export both ONNX files, write the
    json. Seed 0 writes digits_<name>*; another seed digits_<name>_s<seed>* (models/digits_seeds.py)."""
    factory, hparams = MODELS[name]
    start = time.perf_counter()
    model = train(factory=factory, seed=seed, **hparams)
    train_s = time.perf_counter() - start
    _, _, x_test, y_test = load_digits_split(SIZE)
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    shape = (1, 1, SIZE, SIZE)
    stem = f"digits_{name}" if seed == 0 else f"digits_{name}_s{seed}"
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
        "train": {"epochs": hparams["epochs"], "lr": hparams["lr"], "batch": hparams.get("batch", 64), "seed": seed,
                  "optimizer": "AdamW(weight_decay=1e-4) + OneCycleLR", "threads": 1},
        "train_command": ("python -m models.default_model" + (" --all" if name != "resnet" else "")) if seed == 0
        else f"python -m models.digits_seeds --seed {seed} --model {name}",
        "torch_version": torch.__version__,
    }
    (HERE / f"{stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(f"{stem}: trained in {train_s:.1f}s")
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m models.default_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--all", action="store_true", help="train and export every digits model")
    group.add_argument("--model", choices=sorted(MODELS), default="resnet")
    args = parser.parse_args(argv)
    for name in (list(MODELS) if args.all else [args.model]):
        build_and_export(name)


if __name__ == "__main__":
    main()
