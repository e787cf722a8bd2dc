"""A model whose initializers exceed 2 GB: build it, prune it, measure peak memory.

    python benchmarks/large_model.py [--layers 15] [--width 2048] [--ratio 0.3] [--dir /tmp/onnxprune_large]
    python benchmarks/large_model.py --kind vit [--layers 32] [--width 1280] [--torchvision]

`--kind conv` (the default) builds a stack of `layers` 3x3 convolutions of `width` channels
(random weights, 4x4 spatial, residual Adds every two layers) saved with external data.
`--kind vit` exports vit_h_14 as torchvision builds it (models/zoo_transformers.py's
TorchvisionViT: class token, nn.MultiheadAttention; `layers` blocks of `width` channels,
16 heads, MLP 4x, 224x224 images, patch 14; random weights) with torch's legacy exporter,
saved with external data. Either way it then runs
`onnxprune big.onnx out.onnx --ratio R --verify` under /usr/bin/time -v and records the
wall time and the maximum resident set size next to the model's size in
benchmarks/results/large_model[_vit].json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(path: str, layers: int, width: int) -> int:
    """Write the model layer by layer into one external-data file; returns its byte size."""
    rng = np.random.default_rng(0)
    data_name = os.path.basename(path) + ".data"
    nodes, inits = [], []
    x = "x"
    with open(os.path.join(os.path.dirname(path), data_name), "wb") as f:
        def external(name, array):
            t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape,
                                 data_location=TensorProto.EXTERNAL)
            offset = f.tell()
            f.write(array.astype("<f4").tobytes())
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                t.external_data.add(key=k, value=v)
            inits.append(t)
        skip = x
        for i in range(layers):
            w = (rng.standard_normal((width, width, 3, 3), dtype=np.float32) / np.sqrt(9 * width))
            external(f"w{i}", w)
            external(f"b{i}", rng.standard_normal(width, dtype=np.float32) * 0.1)
            y = f"conv{i}"
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], name=f"Conv{i}", pads=[1] * 4))
            if i % 2 == 1 and i > 1:
                nodes.append(helper.make_node("Add", [y, skip], [f"add{i}"], name=f"Add{i}"))
                y = skip = f"add{i}"
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"], name=f"Relu{i}"))
            x = f"relu{i}"
        size = f.tell()
    head = rng.standard_normal((10, width), dtype=np.float32)
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="GAP"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="Flatten"),
              helper.make_node("Gemm", ["flat", "head"], ["y"], name="Head", transB=1)]
    inits.append(onnx.numpy_helper.from_array(head, "head"))
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return size


def build_vit(path: str, layers: int, width: int, torchvision: bool = False) -> int:
    """Export a torchvision-style ViT at ViT-H/14 size (or, with `torchvision`, torchvision's
    own vit_h_14) into one external-data file."""
    import torch
    sys.path.insert(0, ROOT)
    from models.zoo_transformers import TorchvisionViT
    torch.manual_seed(0)
    if torchvision:
        import torchvision as tv
        model = tv.models.vit_h_14(weights=None).eval()
    else:
        model = TorchvisionViT(num_classes=1000, image=224, patch=14, dim=width, depth=layers, heads=16,
                               mlp_dim=4 * width).eval()
    raw = path + ".export"
    os.makedirs(raw, exist_ok=True)
    # not under no_grad nor with frozen parameters: nn.MultiheadAttention would take its fused
    # fast path, which the exporter cannot write (aten::_native_multi_head_attention)
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), os.path.join(raw, "vit.onnx"),
                      opset_version=17, dynamo=False)
    del model
    proto = onnx.load(os.path.join(raw, "vit.onnx"))      # torch writes one file per tensor
    data_name = os.path.basename(path) + ".data"
    if os.path.exists(os.path.join(os.path.dirname(path), data_name)):   # onnx.save appends to it
        os.remove(os.path.join(os.path.dirname(path), data_name))
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
    subprocess.run(["rm", "-rf", raw], check=True)
    return os.path.getsize(os.path.join(os.path.dirname(path), data_name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("conv", "vit"), default="conv")
    ap.add_argument("--torchvision", action="store_true",
                    help="--kind vit: torchvision's own vit_h_14 (needs torchvision, not a dependency)")
    ap.add_argument("--layers", type=int, default=None, help="default: 15 (conv), 32 (vit)")
    ap.add_argument("--width", type=int, default=None, help="default: 2048 (conv), 1280 (vit)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--dir", default="/tmp/onnxprune_large")
    ap.add_argument("--criterion", default="l1")
    args = ap.parse_args()
    vit = args.kind == "vit"
    args.layers = args.layers or (32 if vit else 15)
    args.width = args.width or (1280 if vit else 2048)
    os.makedirs(args.dir, exist_ok=True)
    src, dst = os.path.join(args.dir, "big.onnx"), os.path.join(args.dir, "big_pruned.onnx")
    t = time.time()
    size = build_vit(src, args.layers, args.width, args.torchvision) if vit else build(src, args.layers, args.width)
    print(f"built {src}: {size / 2**30:.2f} GiB of weights in {time.time() - t:.0f} s", flush=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "onnxprune", src, dst, "--ratio", str(args.ratio),
           "--criterion", args.criterion, "--verify"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    print(run.stdout[-3000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", run.stderr).group(1)
    out_size = os.path.getsize(dst + ".data") if os.path.exists(dst + ".data") else None
    kind = args.kind + (" (torchvision vit_h_14)" if args.torchvision else "")
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "kind": kind, "layers": args.layers, "width": args.width,
           "ratio": args.ratio, "criterion": args.criterion, "model_bytes": size, "pruned_bytes": out_size,
           "peak_rss_bytes": peak_kb * 1024, "peak_over_model": round(peak_kb * 1024 / size, 3),
           "wall": wall, "exit": run.returncode, "stderr_tail": run.stderr.splitlines()[:3]}
    print(json.dumps(row, indent=1))
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results",
                           ("large_model_vit_h_14.json" if args.torchvision else "large_model_vit.json")
                           if vit else "large_model.json"), "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
