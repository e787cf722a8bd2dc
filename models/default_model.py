"""Train the default model: ``small_resnet`` on scikit-learn digits (16x16).

    python -m models.default_model

Writes models/digits_resnet.onnx (BatchNormalization unfused, input "input"
1x1x16x16, output "logits") and models/digits_resnet.json.  Runs on one CPU
thread with deterministic kernels, so the accuracy is reproducible.
"""

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .digits import load_digits_split
from .export import export_onnx
from .zoo import small_resnet

__all__ = ["load_digits_split", "train", "main"]

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_resnet.onnx"
JSON_PATH = HERE / "digits_resnet.json"
SIZE = 16


def train(epochs=30, batch=64, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, _, _ = load_digits_split(SIZE)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = small_resnet(num_classes=10).train()
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


def onnx_accuracy(path, x, y):
    """Accuracy of the exported file itself (static batch 1, so one run per image)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = [sess.run(None, {"input": xi[None]})[0].argmax() for xi in x]
    return float(np.mean(np.array(pred) == y))


def main():
    start = time.perf_counter()
    model = train()
    train_s = time.perf_counter() - start
    _, _, x_test, y_test = load_digits_split(SIZE)
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    shape = (1, 1, SIZE, SIZE)
    export_onnx(model, shape, ONNX_PATH, keep_bn=True)
    acc = onnx_accuracy(ONNX_PATH, x_test, y_test)
    info = {
        "test_accuracy": round(acc, 4),
        "torch_test_accuracy": round(torch_acc, 4),
        "test_samples": len(y_test),
        "input_shape": list(shape),
        "train_command": "python -m models.default_model",
        "torch_version": torch.__version__,
    }
    JSON_PATH.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(f"trained in {train_s:.1f}s")


if __name__ == "__main__":
    main()
