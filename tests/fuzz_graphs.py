"""Seeded random generator of valid CNN DAGs in ONNX, and the fuzz harness around it.

`generate(seed)` builds an opset-17, float32, static-shape CNN DAG (5-40 nodes, 2-16
channels, spatial 4-16) from a pool of building blocks:
  - Conv: ordinary, depthwise (multiplier 1 and 2), grouped (g = 2, 4); strides 1/2;
    pads 0/1/SAME_UPPER; kernels 1/3; with or without bias;
  - BatchNormalization (var in [0.5, 2]), InstanceNormalization, LayerNormalization over H, W;
  - activations: Relu, Clip 0..6, LeakyRelu, HardSwish, HardSigmoid, Sigmoid, Tanh,
    x*Sigmoid(x), PRelu; Softmax over W (pass-through) and over C (must freeze);
  - residual Add (and Sub, Max, Mul) of same-shape tensors, broadcast Add/Sub/Mul with a
    pooled [1,C,1,1] branch, constants of every broadcast shape ([1,C,H,W], [C,1,1], scalar...);
  - SE gates (GAP -> Conv -> act -> Conv -> Sigmoid -> Mul) and width-1 spatial gates;
  - Concat / Split / Slice on channels (negative axes and bounds, INT64_MAX ends, steps -1 and
    2 that must freeze), Split parts processed channel-wise and concatenated back, parts
    swapped or added, Concat(x, x), GhostNet modules, ShuffleNet channel shuffles;
  - MaxPool / AveragePool / ReduceMean over space, Resize (nearest x2, by scales or sizes),
    Pad (constant / reflect / edge), ConvTranspose (ordinary, depthwise, grouped),
    Transpose -> MatMul -> Transpose pointwise layers;
  - heads: Flatten or Reshape -> Gemm (after GAP, or of C x H x W), one or two layers, with
    alpha/beta now and then; 1-3 graph outputs (sometimes an inner tensor too);
  - now and then an operator the library does not know (LRN, LpNormalization, SpaceToDepth),
    and in some graphs deduplicated (shared) initializers.

Every model passes `onnx.checker` (full check) and runs in onnxruntime before it is returned;
an attempt that fails is regenerated from the next sub-seed and counted (`Generated.rejected`).

`run_case(proto, ratio, criterion, seed)` prunes one model and classifies the outcome:
"pass", "refusal" (OnnxPruneError with a message about the input) or "failure" (anything
else, including the library's own post-rewrite checks failing on a valid input). Besides
`report.oracle`, a second oracle checks the fold pass when it reports every fold exact.
`fuzz_seeds` runs seeds in a forked child so that a crash cannot take the harness down;
`minimise(proto, still_fails)` greedily shrinks a failing graph; `KNOWN_BUGS` lists the bugs
found, each with a matcher and a minimal reproduction.
"""
from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
TOLERANCE = 1e-4
FAILURE_DIR = "/tmp/fuzz_failures"
MAX_C = 16


# -- a tiny builder that tracks shapes ---------------------------------------------------
class Builder:
    def __init__(self, rng):
        self.rng = rng
        self.nodes, self.inits, self.inputs = [], [], []
        self.shapes: dict[str, tuple] = {}
        self.count = 0
        self.shared = 0
        self.consumed: set[str] = set()

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, shape):
        n = self.name("in")
        self.inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)))
        self.shapes[n] = tuple(shape)
        return n

    share = 0.0   # probability that a new constant reuses an existing one (set per graph)

    def const(self, array, prefix="c"):
        """An initializer. Now and then (probability `share`) an existing initializer is reused
        instead, as exporters and optimisers do when they deduplicate constants: float ones of
        the same shape and kind, shape constants of the same value."""
        array = np.asarray(array)
        if self.share and self.rng.random() < self.share:
            for t in self.inits[::-1]:
                if t.name.rstrip("0123456789") != prefix or tuple(t.dims) != array.shape \
                        or t.data_type != helper.np_dtype_to_tensor_dtype(array.dtype):
                    continue
                if array.dtype.kind != "f" and not np.array_equal(numpy_helper.to_array(t), array):
                    continue
                self.shared += 1
                return t.name
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, n))
        return n

    def weight(self, shape, scale=None, prefix="w"):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), prefix)

    def op(self, op_type, inputs, out_shapes, **attrs):
        outs = [self.name(op_type.lower() + "_") for _ in out_shapes]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        for o, s in zip(outs, out_shapes):
            self.shapes[o] = tuple(s)
        self.consumed.update(i for i in inputs if i)
        return outs[0] if len(outs) == 1 else outs

    def model(self, outputs):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shapes[o])) for o in outputs]
        g = helper.make_graph(self.nodes, "fuzz", self.inputs, outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxprune-fuzz")
        m.ir_version = 8
        return m


def _conv_out(h, k, s, pad):
    if pad == "same":
        return -(-h // s)
    return (h + 2 * pad - k) // s + 1


# -- the generator -----------------------------------------------------------------------
@dataclass
class Gen:
    rng: np.random.Generator
    b: Builder
    pool: list = field(default_factory=list)       # 4-D tensors usable as inputs
    heads: list = field(default_factory=list)      # 2-D tensors (Gemm outputs)
    ops: list = field(default_factory=list)        # block names used (coverage)

    # helpers
    def shape(self, t):
        return self.b.shapes[t]

    def pick(self, cond=lambda s: True):
        """A tensor of the pool, biased towards recent ones."""
        cands = [t for t in self.pool if cond(self.shape(t))]
        if not cands:
            return None
        w = np.arange(1, len(cands) + 1, dtype=float) ** 2
        return cands[self.rng.choice(len(cands), p=w / w.sum())]

    def add(self, t, op=None):
        """Offer tensor t to later generators; `op` is recorded for the coverage report."""
        if op is not None:
            self.ops.append(op)
        self.pool.append(t)
        return t

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chan(self, lo=2, hi=MAX_C, mult=1):
        lo_k, hi_k = max(1, -(-lo // mult)), hi // mult
        return int(self.rng.integers(lo_k, hi_k + 1)) * mult

    # blocks: each returns True when it added something
    def conv(self, x=None, kind=None, c_out=None, stride=None, k=None, pad=None, add=True):
        r = self.rng
        x = x or self.pick()
        n, c, h, w = self.shape(x)
        kind = kind or r.choice(["ordinary"] * 5 + ["depthwise", "depthwise2", "grouped"])
        k = k if k is not None else int(r.choice([1, 3]))
        stride = stride if stride is not None else int(r.choice([1, 1, 1, 2]))
        if pad is None:
            pad = self.choice([0, 1, "same"] if k == 3 else [0, 0, 1, "same"])
        group = 1
        if kind == "depthwise":
            group, c_out = c, c
        elif kind == "depthwise2":
            if 2 * c > MAX_C:
                return None
            group, c_out = c, 2 * c
        elif kind == "grouped":
            gs = [g for g in (2, 4) if c % g == 0]
            if not gs:
                return None
            group = int(r.choice(gs))
            if c_out is None:
                c_out = self.chan(mult=group)
            elif c_out % group:
                return None
        else:
            c_out = c_out or self.chan()
        ho, wo = _conv_out(h, k, stride, pad), _conv_out(w, k, stride, pad)
        if ho < 1 or wo < 1:
            return None
        ins = [x, self.b.weight((c_out, c // group, k, k))]
        if r.random() < 0.6:
            ins.append(self.b.weight((c_out,), scale=0.2, prefix="b"))
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], group=group)
        if pad == "same":
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            attrs["pads"] = [pad] * 4
        y = self.b.op("Conv", ins, [(n, c_out, ho, wo)], **attrs)
        self.ops.append(f"Conv:{kind}")
        return self.add(y) if add else y

    def bn(self, x=None, add=True):
        r, b = self.rng, self.b
        x = x or self.pick()
        c = self.shape(x)[1]
        y = b.op("BatchNormalization", [
            x, b.const(r.uniform(0.5, 1.5, c).astype(np.float32), "g"),
            b.const(r.uniform(-0.3, 0.3, c).astype(np.float32), "beta"),
            b.const(r.uniform(-0.5, 0.5, c).astype(np.float32), "mean"),
            b.const(r.uniform(0.5, 2.0, c).astype(np.float32), "var")], [self.shape(x)],
            epsilon=1e-5)
        self.ops.append("BatchNormalization")
        return self.add(y) if add else y

    def act(self, x=None, kind=None, add=True):
        r, b = self.rng, self.b
        x = x or self.pick()
        s = self.shape(x)
        kind = kind or r.choice(["Relu", "Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid",
                                 "Sigmoid", "Tanh", "Swish"])
        if kind == "Clip":
            y = b.op("Clip", [x, b.const(np.float32(0.0), "lo"), b.const(np.float32(6.0), "hi")], [s])
        elif kind == "LeakyRelu":
            y = b.op("LeakyRelu", [x], [s], alpha=float(r.choice([0.01, 0.1, 0.2])))
        elif kind == "HardSigmoid":
            y = b.op("HardSigmoid", [x], [s], alpha=1 / 6, beta=0.5)
        elif kind == "Swish":
            y = b.op("Mul", [x, b.op("Sigmoid", [x], [s])], [s])
        else:
            y = b.op(kind, [x], [s])
        self.ops.append(f"act:{kind}")
        return self.add(y) if add else y

    def conv_bn_act(self):
        y = self.conv(add=False)
        if y is None:
            return None
        if self.rng.random() < 0.7:
            y = self.bn(y, add=False)
        if self.rng.random() < 0.8:
            y = self.act(y, add=False)
        return self.add(y)

    def binary(self):
        """Add (mostly), Sub, Max or Mul of two same-shape activations: a residual."""
        r = self.rng
        op = r.choice(["Add"] * 6 + ["Sub", "Max", "Mul"])
        a = self.pick(lambda s: s[1] >= 2)
        if a is None:
            return None
        s = self.shape(a)
        partners = [t for t in self.pool if t != a and self.shape(t) == s]
        if partners and r.random() < 0.6:
            other = partners[r.integers(len(partners))]
        else:  # build a branch of the same shape
            other = self.conv(a, kind=r.choice(["ordinary"] * 3 + ["depthwise", "grouped"]),
                              c_out=s[1], stride=1, k=int(r.choice([1, 3])), pad="same", add=False)
            if other is None:
                other = self.conv(a, kind="ordinary", c_out=s[1], stride=1, pad="same", add=False)
            if r.random() < 0.6:
                other = self.bn(other, add=False)
            if r.random() < 0.5:
                other = self.act(other, add=False)
                if r.random() < 0.5:
                    other = self.conv(other, kind="ordinary", c_out=s[1], stride=1, k=1, pad=0, add=False)
        ins = [a, other] if r.random() < 0.5 else [other, a]
        y = self.b.op(op, ins, [s])
        self.ops.append(f"binary:{op}")
        if r.random() < 0.4:
            y = self.act(y, kind="Relu", add=False)
        return self.add(y)

    def channel_const(self):
        """Mul or Add of a per-channel constant [1, C, 1, 1] (or [C, 1, 1])."""
        r, b = self.rng, self.b
        x = self.pick()
        s = self.shape(x)
        shape = (1, s[1], 1, 1) if r.random() < 0.5 else (s[1], 1, 1)
        op = r.choice(["Mul", "Add"])
        value = r.uniform(0.5, 1.5, shape) if op == "Mul" else r.uniform(-0.5, 0.5, shape)
        c = b.const(value.astype(np.float32), "pc")
        y = b.op(op, [x, c] if r.random() < 0.7 else [c, x], [s])
        return self.add(y, f"channel_const:{op}")

    def se(self):
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        red = int(r.integers(2, max(2, c // 2) + 1))
        g = b.op("GlobalAveragePool", [x], [(n, c, 1, 1)])
        g = self.conv(g, kind="ordinary", c_out=red, k=1, stride=1, pad=0, add=False)
        g = self.act(g, kind=r.choice(["Relu", "Relu", "HardSwish", "Swish"]), add=False)
        g = self.conv(g, kind="ordinary", c_out=c, k=1, stride=1, pad=0, add=False)
        g = self.act(g, kind=r.choice(["Sigmoid", "Sigmoid", "HardSigmoid"]), add=False)
        y = b.op("Mul", [x, g] if r.random() < 0.7 else [g, x], [(n, c, h, w)])
        return self.add(y, "SE")

    def spatial_gate(self):
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        g = self.conv(x, kind="ordinary", c_out=1, k=int(r.choice([1, 3])), stride=1, pad="same", add=False)
        g = self.act(g, kind="Sigmoid", add=False)
        y = b.op("Mul", [x, g] if r.random() < 0.7 else [g, x], [(n, c, h, w)])
        return self.add(y, "spatial_gate")

    def concat(self):
        r = self.rng
        a = self.pick()
        n, c, h, w = self.shape(a)
        partners = [t for t in self.pool if t != a and self.shape(t)[2:] == (h, w)
                    and self.shape(t)[1] + c <= MAX_C]
        if partners and r.random() < 0.7:
            other = partners[r.integers(len(partners))]
        else:
            if c >= MAX_C - 1:
                return None
            other = self.conv(a, kind="ordinary", c_out=int(r.integers(2, MAX_C - c + 1)), stride=1,
                              pad="same", add=False)
            if other is None:
                return None
        ins = [a, other] if r.random() < 0.5 else [other, a]
        if r.random() < 0.2 and c + self.shape(other)[1] + 2 <= MAX_C:
            third = self.conv(a, kind="ordinary", c_out=2, stride=1, pad="same", k=1, add=False)
            ins.append(third)
        total = sum(self.shape(t)[1] for t in ins)
        y = self.b.op("Concat", ins, [(n, total, h, w)], axis=int(r.choice([1, -3])))
        return self.add(y, f"Concat:{len(ins)}")

    def split(self):
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[1] >= 4)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        parts = int(r.choice([2, 2, 3])) if c >= 6 else 2
        cuts = sorted(r.choice(np.arange(1, c), size=parts - 1, replace=False))
        sizes = np.diff([0, *cuts, c]).astype(np.int64)
        outs = b.op("Split", [x, b.const(sizes, "split")], [(n, int(s), h, w) for s in sizes],
                    axis=int(r.choice([1, -3])))
        for o, s in zip(outs, sizes):
            if s >= 2 or r.random() < 0.3:
                self.add(o)
        self.ops.append(f"Split:{parts}")
        return True

    def slice(self):
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[1] >= 3)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        start = int(r.integers(0, c - 1))
        stop = int(r.integers(start + 2, c + 1)) if start + 2 <= c else c
        if stop - start < 2:
            return None
        end_value = stop
        if stop == c and r.random() < 0.5:
            end_value = int(r.choice([np.iinfo(np.int64).max, 1000]))
        elif r.random() < 0.3:
            end_value = stop - c if stop < c else stop  # negative end
        start_value = start - c if (start > 0 and r.random() < 0.3) else start
        ins = [x, b.const(np.array([start_value], np.int64), "st"),
               b.const(np.array([end_value], np.int64), "en"),
               b.const(np.array([int(r.choice([1, -3]))], np.int64), "ax")]
        if r.random() < 0.3:
            ins.append(b.const(np.array([1], np.int64), "sp"))
        y = b.op("Slice", ins, [(n, stop - start, h, w)])
        return self.add(y, "Slice")

    def pool_op(self):
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] >= 2 and s[3] >= 2)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        op = r.choice(["MaxPool", "AveragePool"])
        if r.random() < 0.5:
            attrs, out = dict(kernel_shape=[2, 2], strides=[2, 2]), (n, c, h // 2, w // 2)
        else:
            attrs, out = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), (n, c, h, w)
            if op == "AveragePool":
                attrs["count_include_pad"] = int(r.integers(0, 2))
        y = b.op(op, [x], [out], **attrs)
        return self.add(y, str(op))

    def reduce_mean(self):
        x = self.pick(lambda s: s[2] * s[3] > 1)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        y = self.b.op("ReduceMean", [x], [(n, c, 1, 1)], axes=[2, 3], keepdims=1)
        return self.add(y, "ReduceMean")

    def resize(self):
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] <= 8 and s[3] <= 8)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        out = (n, c, 2 * h, 2 * w)
        if r.random() < 0.7:
            ins = [x, "", b.const(np.array([1, 1, 2, 2], np.float32), "sc")]
            kind = "scales"
        else:
            ins = [x, "", "", b.const(np.array(out, np.int64), "sz")]
            kind = "sizes"
        y = b.op("Resize", ins, [out], mode="nearest")
        return self.add(y, f"Resize:{kind}")

    def pad(self):
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] >= 2 and s[3] >= 2)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        mode = r.choice(["constant", "constant", "reflect", "edge"])
        p = [int(v) for v in r.integers(0, 2, 4)]
        pads = np.array([0, 0, p[0], p[1], 0, 0, p[2], p[3]], np.int64)
        ins = [x, b.const(pads, "pads")]
        if mode == "constant" and r.random() < 0.5:
            ins.append(b.const(np.float32(r.uniform(-1, 1)), "pv"))
        y = b.op("Pad", ins, [(n, c, h + p[0] + p[2], w + p[1] + p[3])], mode=mode)
        return self.add(y, f"Pad:{mode}")

    def conv_transpose(self):
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] <= 8 and s[3] <= 8)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        depthwise = r.random() < 0.3
        k, s = (2, 2) if r.random() < 0.6 else (3, 1)
        pads = [0] * 4 if k == 2 else [1] * 4
        if depthwise:
            mult = 1 if 2 * c > MAX_C else int(r.choice([1, 2]))
            group, c_out = c, c * mult
        else:
            group, c_out = 1, self.chan()
        ins = [x, b.weight((c, c_out // group, k, k), scale=1 / np.sqrt(c * k * k / group))]
        if r.random() < 0.6:
            ins.append(b.weight((c_out,), scale=0.2, prefix="b"))
        ho = (h - 1) * s - 2 * pads[0] + k
        wo = (w - 1) * s - 2 * pads[1] + k
        y = b.op("ConvTranspose", ins, [(n, c_out, ho, wo)], kernel_shape=[k, k], strides=[s, s],
                 pads=pads, group=group)
        return self.add(y, "ConvTranspose:" + ("depthwise" if depthwise else "ordinary"))

    def unknown(self):
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        kind = r.choice(["LRN", "LRN", "LpNormalization", "SpaceToDepth"])
        if kind == "LRN":
            y = b.op("LRN", [x], [(n, c, h, w)], size=3, alpha=1e-4, beta=0.75, bias=1.0)
        elif kind == "LpNormalization":
            y = b.op("LpNormalization", [x], [(n, c, h, w)], axis=1, p=2)
        else:
            if h % 2 or w % 2 or 4 * c > MAX_C:
                return None
            y = b.op("SpaceToDepth", [x], [(n, 4 * c, h // 2, w // 2)], blocksize=2)
        return self.add(y, f"unknown:{kind}")

    # -- extras beyond the classic CNN zoo: channel bookkeeping edge cases ---------------
    def split_merge(self):
        """Split a tensor and merge the parts again: Add of two halves (couples positions of
        one tensor), Concat in swapped order (a channel rotation), Concat(x, x), or each part
        through its own channel-wise op (depthwise Conv/ConvTranspose, BN, activation, pool)
        and then Concat: the parts stay one group, so a part can lose all its channels."""
        r, b = self.rng, self.b
        kind = self.choice(["add_halves", "swap", "dup", "process", "process"])
        if kind == "dup":
            x = self.pick(lambda s: 2 * s[1] <= MAX_C)
            if x is None:
                return None
            n, c, h, w = self.shape(x)
            y = b.op("Concat", [x, x], [(n, 2 * c, h, w)], axis=1)
        else:
            x = self.pick(lambda s: s[1] >= 4 and (s[1] % 2 == 0 or kind != "add_halves"))
            if x is None:
                return None
            n, c, h, w = self.shape(x)
            if kind == "add_halves":
                sizes = [c // 2, c - c // 2]
            elif kind == "process" and c >= 6 and r.random() < 0.4:
                cuts = sorted(r.choice(np.arange(1, c), size=2, replace=False))
                sizes = np.diff([0, *cuts, c]).tolist()
            else:
                first = int(r.integers(1, min(c - 1, 3) + 1)) if r.random() < 0.6 else int(r.integers(1, c))
                sizes = [first, c - first]
            parts = b.op("Split", [x, b.const(np.array(sizes, np.int64), "split")],
                         [(n, int(z), h, w) for z in sizes], axis=1)
            if kind == "add_halves":
                y = b.op(self.choice(["Add", "Mul", "Max"]), parts, [(n, sizes[0], h, w)])
            elif kind == "swap":
                y = b.op("Concat", parts[::-1], [(n, c, h, w)], axis=1)
            else:
                outs = [self.channelwise(p) for p in parts]
                if r.random() < 0.3:
                    outs = outs[::-1]
                y = b.op("Concat", outs, [(n, sum(self.shape(o)[1] for o in outs), h, w)], axis=1)
        return self.add(y, f"split_merge:{kind}")

    def channelwise(self, x):
        """A shape-preserving channel-wise op (or none) on x."""
        r, b = self.rng, self.b
        n, c, h, w = self.shape(x)
        kind = self.choice(["none", "dwconv", "dwconv", "dwconvT", "bn", "act", "pool", "resize_sizes"])
        if kind == "dwconv":
            y = self.conv(x, kind="depthwise", k=int(r.choice([1, 3])), stride=1, pad="same", add=False)
        elif kind == "dwconvT":
            y = b.op("ConvTranspose", [x, b.weight((c, 1, 3, 3))], [(n, c, h, w)], kernel_shape=[3, 3],
                     pads=[1, 1, 1, 1], group=c)
            self.ops.append("ConvTranspose:depthwise")
        elif kind == "bn":
            y = self.bn(x, add=False)
        elif kind == "act":
            y = self.act(x, add=False)
        elif kind == "pool":
            y = b.op("MaxPool", [x], [(n, c, h, w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            self.ops.append("MaxPool")
        elif kind == "resize_sizes" and h * w > 1:
            y = b.op("Resize", [x, "", "", b.const(np.array([n, c, 2 * h, 2 * w], np.int64), "sz")],
                     [(n, c, 2 * h, 2 * w)], mode="nearest")
            y = b.op("AveragePool", [y], [(n, c, h, w)], kernel_shape=[2, 2], strides=[2, 2])
            self.ops.append("Resize:sizes")
        else:
            y = x
        return y

    def ghost(self):
        """GhostNet module: y = conv(x); Concat(y, depthwise(y)) (y's channels appear twice)."""
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        c1 = self.chan(hi=MAX_C // 2)
        y = self.conv(x, kind="ordinary", c_out=c1, k=1, stride=1, pad=0, add=False)
        if r.random() < 0.5:
            y = self.act(self.bn(y, add=False), kind="Relu", add=False)
        z = self.conv(y, kind=self.choice(["depthwise", "depthwise2"]) if 4 * c1 <= MAX_C else "depthwise",
                      k=3, stride=1, pad=1, add=False)
        out = b.op("Concat", [y, z], [(n, c1 + self.shape(z)[1], h, w)], axis=1)
        if self.shape(out)[1] > MAX_C or r.random() < 0.5:  # GhostNet slices back to the width
            keep = min(self.shape(out)[1], max(2, 2 * c1 - 1 if r.random() < 0.5 else 2 * c1))
            out = b.op("Slice", [out, b.const(np.array([0], np.int64), "st"),
                                 b.const(np.array([keep], np.int64), "en"),
                                 b.const(np.array([1], np.int64), "ax")], [(n, keep, h, w)])
        return self.add(out, "ghost")

    def broadcast_binary(self):
        """x[1,C,H,W] op y[1,C,1,1] where y is computed (a pooled branch): unify by broadcast."""
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] * s[3] > 1)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        src = self.pick(lambda s: s[1] == c and s != (n, c, h, w)) if r.random() < 0.5 else None
        g = b.op(self.choice(["GlobalAveragePool", "GlobalMaxPool"]), [src or x], [(n, c, 1, 1)])
        if r.random() < 0.5:
            g = self.conv(g, kind="ordinary", c_out=c, k=1, stride=1, pad=0, add=False)
        op = self.choice(["Add", "Sub", "Mul"])
        y = b.op(op, [x, g] if r.random() < 0.5 else [g, x], [(n, c, h, w)])
        return self.add(y, f"broadcast_binary:{op}")

    def const_operand(self):
        """Elementwise op with constants of various shapes: full [1,C,H,W], [C,H,W], [C,1,1],
        [1,1,H,W], scalar; and PRelu with a per-channel slope."""
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        shape = self.choice([(1, c, h, w), (c, h, w), (c, 1, 1), (1, 1, h, w), (), (1,), (1, c, 1, 1)])
        kind = self.choice(["Add", "Mul", "Sub", "Div", "Max", "PRelu"])
        if kind == "PRelu":
            shape = self.choice([(c, 1, 1), (1, c, 1, 1), (1,)])
            value = r.uniform(0.05, 0.3, shape)
        elif kind == "Div":
            value = r.uniform(0.5, 2.0, shape)
        else:
            value = r.uniform(-1, 1, shape)
        k = b.const(np.asarray(value, np.float32), "k")
        ins = [x, k] if kind in ("PRelu", "Div") or r.random() < 0.6 else [k, x]
        y = b.op(kind, ins, [(n, c, h, w)])
        return self.add(y, f"const_operand:{kind}{list(shape)}")

    def norm(self):
        """InstanceNormalization, LayerNormalization over H, W, or a Softmax (over channels:
        frozen; over width: pass-through)."""
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        kind = self.choice(["InstanceNormalization", "LayerNormalization", "Softmax1", "Softmax3"])
        if kind == "InstanceNormalization":
            y = b.op(kind, [x, b.const(r.uniform(0.5, 1.5, c).astype(np.float32), "g"),
                            b.const(r.uniform(-0.3, 0.3, c).astype(np.float32), "beta")], [(n, c, h, w)])
        elif kind == "LayerNormalization":
            y = b.op(kind, [x, b.const(r.uniform(0.5, 1.5, (h, w)).astype(np.float32), "g"),
                            b.const(r.uniform(-0.3, 0.3, (h, w)).astype(np.float32), "beta")],
                     [(n, c, h, w)], axis=2)
        else:
            y = b.op("Softmax", [x], [(n, c, h, w)], axis=1 if kind == "Softmax1" else 3)
        return self.add(y, f"norm:{kind}")

    def matmul_pointwise(self):
        """Transpose to NHWC, MatMul with a [C, C'] weight (+ bias Add), Transpose back."""
        r, b = self.rng, self.b
        x = self.pick()
        n, c, h, w = self.shape(x)
        c2 = self.chan()
        t = b.op("Transpose", [x], [(n, h, w, c)], perm=[0, 2, 3, 1])
        y = b.op("MatMul", [t, b.weight((c, c2), scale=1 / np.sqrt(c))], [(n, h, w, c2)])
        if r.random() < 0.5:
            y = b.op("Add", [y, b.weight((c2,), scale=0.2, prefix="b")], [(n, h, w, c2)])
        y = b.op("Transpose", [y], [(n, c2, h, w)], perm=[0, 3, 1, 2])
        return self.add(y, "matmul_pointwise")

    def shuffle(self):
        """ShuffleNet channel shuffle: Reshape [1,g,C/g,H,W] -> Transpose -> Reshape back."""
        b = self.b
        x = self.pick(lambda s: s[1] % 2 == 0 and s[1] >= 4)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        g = 2
        y = b.op("Reshape", [x, b.const(np.array([n, g, c // g, h, w], np.int64), "shp")],
                 [(n, g, c // g, h, w)])
        y = b.op("Transpose", [y], [(n, c // g, g, h, w)], perm=[0, 2, 1, 3, 4])
        y = b.op("Reshape", [y, b.const(np.array([n, c, h, w], np.int64), "shp")], [(n, c, h, w)])
        return self.add(y, "shuffle")

    def reshape_head(self):
        """Reshape (not Flatten) of C x H x W into features, with a literal or -1 target."""
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] * s[3] <= 16) or self.pick()
        n, c, h, w = self.shape(x)
        if h * w > 16:
            x = b.op("AveragePool", [x], [(n, c, h // 2, w // 2)], kernel_shape=[2, 2], strides=[2, 2])
            h, w = h // 2, w // 2
        feats = c * h * w
        target = self.choice([[n, feats], [n, -1], [-1, feats], [0, -1]])
        f = b.op("Reshape", [x, b.const(np.array(target, np.int64), "shp")], [(n, feats)])
        out = self.chan()
        y = b.op("Gemm", [f, b.weight((out, feats), scale=1 / np.sqrt(feats))], [(n, out)], transB=1)
        self.ops.append(f"reshape_head:{target}")
        self.heads.append(y)
        return True

    def odd_slice(self):
        """Slice of channels with a step other than 1 (reverse or stride 2): must freeze."""
        b = self.b
        x = self.pick(lambda s: s[1] >= 4)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        step = self.choice([-1, 2])
        if step == -1:
            starts, ends, out = [c - 1], [-c - 1], c
        else:
            starts, ends, out = [0], [c], (c + 1) // 2
        if out < 2:
            return None
        y = b.op("Slice", [x, b.const(np.array(starts, np.int64), "st"), b.const(np.array(ends, np.int64), "en"),
                           b.const(np.array([1], np.int64), "ax"), b.const(np.array([step], np.int64), "sp")],
                 [(n, out, h, w)])
        return self.add(y, f"odd_slice:{step}")

    def grouped_conv_transpose(self):
        """ConvTranspose with 1 < group < C (not depthwise): must freeze."""
        b = self.b
        x = self.pick(lambda s: s[1] % 2 == 0 and s[1] >= 4 and s[2] <= 8 and s[3] <= 8)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        c_out = self.chan(mult=2)
        y = b.op("ConvTranspose", [x, b.weight((c, c_out // 2, 2, 2))], [(n, c_out, 2 * h, 2 * w)],
                 kernel_shape=[2, 2], strides=[2, 2], group=2)
        return self.add(y, "ConvTranspose:grouped")

    def tokens(self):
        """A transformer block on a feature map: Reshape (N, C, H*W) -> Transpose to tokens
        (N, T, C) [-> a constant token concatenated in front]; attention with q/k/v MatMuls,
        heads split by Reshape + Transpose (N, h, T, d), Q.K^T, Softmax, .V, heads merged,
        an output MatMul [+ a residual Add]; an MLP [+ a residual Add]; then back to (N, C, H, W)
        (dropping the token). Heads and MLP neurons are prunable; the rest follows the maps."""
        r, b = self.rng, self.b
        x = self.pick(lambda s: s[2] * s[3] <= 64)
        if x is None:
            return None
        n, c, h, w = self.shape(x)
        t = h * w
        y = b.op("Reshape", [x, b.const(np.array([n, c, t], np.int64), "shp")], [(n, c, t)])
        y = b.op("Transpose", [y], [(n, t, c)], perm=[0, 2, 1])
        token = r.random() < 0.4
        if token:
            y = b.op("Concat", [b.weight((n, 1, c), scale=0.5, prefix="tok"), y], [(n, t + 1, c)], axis=1)
        tt = t + token
        heads, d = int(r.integers(1, 4)), int(r.integers(1, 4))

        def proj(z, c_in, c_out):
            out = b.op("MatMul", [z, b.weight((c_in, c_out), scale=1 / np.sqrt(c_in))], [(n, tt, c_out)])
            if r.random() < 0.5:
                out = b.op("Add", [out, b.weight((c_out,), scale=0.2, prefix="b")], [(n, tt, c_out)])
            return out

        def split(z, last_two_swapped=False):
            z = b.op("Reshape", [z, b.const(np.array([n, tt, heads, d], np.int64), "shp")], [(n, tt, heads, d)])
            perm, shape = ([0, 2, 3, 1], (n, heads, d, tt)) if last_two_swapped else ([0, 2, 1, 3], (n, heads, tt, d))
            return b.op("Transpose", [z], [shape], perm=perm)

        q, k, v = (proj(y, c, heads * d) for _ in range(3))
        scores = b.op("MatMul", [split(q), split(k, True)], [(n, heads, tt, tt)])
        scores = b.op("Softmax", [scores], [(n, heads, tt, tt)], axis=-1)
        ctx = b.op("MatMul", [scores, split(v)], [(n, heads, tt, d)])
        ctx = b.op("Transpose", [ctx], [(n, tt, heads, d)], perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, b.const(np.array([n, tt, heads * d], np.int64), "shp")], [(n, tt, heads * d)])
        residual = r.random() < 0.5
        z = proj(ctx, heads * d, c if residual else self.chan())
        if residual:
            z = b.op("Add", [y, z], [(n, tt, c)])
        c_z = b.shapes[z][2]
        hidden = self.chan()
        m = b.op(self.choice(["Relu", "Tanh", "Sigmoid"]), [proj(z, c_z, hidden)], [(n, tt, hidden)])
        residual = r.random() < 0.5
        m = proj(m, hidden, c_z if residual else self.chan())
        if residual:
            m = b.op("Add", [z, m], [(n, tt, c_z)])
        c_m = b.shapes[m][2]
        if token:
            m = b.op("Slice", [m, b.const(np.array([1], np.int64), "st"), b.const(np.array([tt], np.int64), "en"),
                               b.const(np.array([1], np.int64), "ax")], [(n, t, c_m)])
        m = b.op("Transpose", [m], [(n, c_m, t)], perm=[0, 2, 1])
        m = b.op("Reshape", [m, b.const(np.array([n, c_m, h, w], np.int64), "shp")], [(n, c_m, h, w)])
        return self.add(m, f"tokens:{heads}x{d}" + (":token" if token else ""))

    def head(self):
        """GAP (or ReduceMean) -> Flatten -> Gemm [-> act -> Gemm], or Flatten(C x H x W) -> Gemm."""
        r, b = self.rng, self.b
        x = (self.pick(lambda s: s[2] * s[3] <= 16) if r.random() < 0.5 else None) or self.pick()
        n, c, h, w = self.shape(x)
        if h * w > 1 and (h * w > 16 or r.random() < 0.5):
            g = b.op("GlobalAveragePool", [x], [(n, c, 1, 1)])
            feats, kind = c, "gap"
        else:
            g, feats, kind = x, c * h * w, "flat"
        f = b.op("Flatten", [g], [(n, feats)], axis=1)
        out = self.chan()
        trans_b = int(r.integers(0, 2))
        ins = [f, b.weight((out, feats) if trans_b else (feats, out), scale=1 / np.sqrt(feats))]
        if r.random() < 0.7:
            ins.append(b.weight((out,), scale=0.2, prefix="b"))
        extra = {}
        if r.random() < 0.2:
            extra = {self.choice(["alpha", "beta"]): float(self.choice([0.5, 2.0]))}
        y = b.op("Gemm", ins, [(n, out)], transB=trans_b, **extra)
        if r.random() < 0.4:  # a two-layer head: the hidden Gemm channels are prunable
            y = self.act(y, kind=r.choice(["Relu", "Tanh"]), add=False)
            out2 = self.chan()
            y = b.op("Gemm", [y, b.weight((out2, out), scale=1 / np.sqrt(out)),
                              b.weight((out2,), scale=0.2, prefix="b")], [(n, out2)], transB=1)
            kind += "2"
        self.ops.append(f"head:{kind}")
        self.heads.append(y)
        return True


BLOCKS = [  # (name, weight)
    ("conv_bn_act", 10), ("conv", 3), ("bn", 2), ("act", 3), ("binary", 6), ("channel_const", 1.5),
    ("se", 2), ("spatial_gate", 1.5), ("concat", 3), ("split", 2), ("slice", 2), ("pool_op", 2),
    ("reduce_mean", 0.7), ("resize", 1.5), ("pad", 1.5), ("conv_transpose", 1.5), ("head", 1.5),
    # extras
    ("split_merge", 1.5), ("ghost", 0.8), ("broadcast_binary", 1.0), ("const_operand", 1.0), ("norm", 0.6),
    ("matmul_pointwise", 0.6), ("shuffle", 0.3), ("reshape_head", 0.5), ("odd_slice", 0.2),
    ("grouped_conv_transpose", 0.2), ("tokens", 0.8),
]


def _build(rng, max_nodes=40):
    b = Builder(rng)
    g = Gen(rng, b)
    target = int(rng.integers(5, max_nodes + 1))
    c0 = int(rng.integers(2, MAX_C + 1)) if rng.random() < 0.5 else int(rng.choice([2, 3, 4]))
    h0 = int(rng.integers(4, 17))
    w0 = h0 if rng.random() < 0.7 else int(rng.integers(4, 17))
    if rng.random() < 0.2:  # deduplicated constants: some initializers used by several nodes
        b.share = float(rng.choice([0.2, 0.5]))
    x = g.add(b.input((1, c0, h0, w0)))
    if rng.random() < 0.1:  # a second graph input of the same shape, added in
        x2 = b.input((1, c0, h0, w0))
        g.add(b.op("Add", [x, x2], [(1, c0, h0, w0)]))
        g.ops.append("two_inputs")
    g.conv_bn_act() or g.conv(kind="ordinary", k=1, pad=0, stride=1)
    unknown_left = 1 if rng.random() < 0.12 else 0
    names = [n for n, _ in BLOCKS]
    weights = np.array([w for _, w in BLOCKS])
    # some graphs lean towards a few block kinds so that rarer interactions compound
    if rng.random() < 0.4:
        weights = weights * rng.uniform(0.1, 3.0, len(weights))
    weights = weights / weights.sum()
    stall = 0
    while len(b.nodes) < target and stall < 50:
        if unknown_left and rng.random() < 0.15:
            unknown_left -= g.unknown() is not None
            continue
        before = len(b.nodes)
        snap = (len(b.inits), b.count, len(g.pool), len(g.heads), set(b.consumed), len(g.ops))
        name = names[rng.choice(len(names), p=weights)]
        getattr(g, name)()
        if len(b.nodes) > max_nodes:  # roll back the block that overshot, and stop
            del b.nodes[before:], b.inits[snap[0]:], g.pool[snap[2]:], g.heads[snap[3]:], g.ops[snap[5]:]
            b.count, b.consumed = snap[1], snap[4]
            break
        stall = stall + 1 if len(b.nodes) == before else 0
    # outputs: 1-3 among the leaves (unconsumed tensors) and heads
    leaves = [t for t in g.pool if t not in b.consumed and t not in {i.name for i in b.inputs}]
    cands = list(dict.fromkeys(g.heads + leaves[::-1]))
    if not cands:
        cands = [g.pool[-1]]
    k = min(len(cands), int(rng.choice([1, 1, 2, 3])))
    first = cands.pop(len(g.heads) if leaves and g.heads and rng.random() < 0.5 else 0)
    rest = [cands[i] for i in rng.permutation(len(cands))[: k - 1]]
    outputs = [first] + rest
    uses = {}
    for n in b.nodes:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    if any(uses.get(t.name, 0) > 1 for t in b.inits):
        g.ops.append("shared_initializers")
    inner = [t for t in g.pool if t not in outputs and t not in {i.name for i in b.inputs}]
    if inner and rng.random() < 0.2 and len(outputs) < 3:  # an output also consumed inside
        outputs.append(inner[int(rng.integers(len(inner)))])
    return b.model(outputs), g.ops


def check_valid(proto, rng=None):
    """Raise if the model fails the full ONNX check or does not run in onnxruntime."""
    import onnxruntime as ort
    onnx.checker.check_model(proto, full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = rng or np.random.default_rng(0)
    feeds = {i.name: rng.uniform(-1, 1, [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in proto.graph.input}
    outs = sess.run(None, feeds)
    for o, v in zip(proto.graph.output, outs):
        want = [d.dim_value for d in o.type.tensor_type.shape.dim]
        if list(v.shape) != want:
            raise ValueError(f"output {o.name} has shape {list(v.shape)}, declared {want}")
        if not np.isfinite(v).all():
            raise ValueError(f"output {o.name} is not finite")
    return outs


@dataclass
class Generated:
    seed: int
    proto: onnx.ModelProto
    ops: list
    rejected: int           # attempts that failed the checker or onnxruntime and were redone
    rejections: list
    output_shapes: list


def generate(seed: int, max_nodes: int = 40, max_attempts: int = 20) -> Generated:
    """A valid random CNN DAG for `seed` (deterministic)."""
    rejections = []
    for attempt in range(max_attempts):
        rng = np.random.default_rng([seed, attempt])
        try:
            proto, ops = _build(rng, max_nodes)
            outs = check_valid(proto)
            return Generated(seed, proto, ops, attempt, rejections, [a.shape for a in outs])
        except Exception as e:  # noqa: BLE001 - any invalid attempt is regenerated
            rejections.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    raise RuntimeError(f"seed {seed}: no valid graph in {max_attempts} attempts: {rejections[-3:]}")


# -- the harness -------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str                 # "pass", "refusal" or "failure"
    detail: str = ""          # refusal message, or failure description
    category: str = ""        # failure category (checker, ort, oracle, interface, exception:...)
    max_rel_diff: float | None = None
    params: tuple | None = None

    @property
    def ok(self):
        return self.kind != "failure"


def normalise_message(msg: str) -> str:
    """Group refusal messages: names and numbers replaced by placeholders."""
    msg = msg.splitlines()[0] if msg else msg
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\b[A-Za-z_]+\d+\w*\b", "<name>", msg)
    msg = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "<n>", msg)
    return msg


# round_to=1: the library's default rounds kept widths to multiples of 8 or 16 (fast kernels),
# which on these 2-16 channel graphs would leave most groups untouched; the fuzzer wants every
# group to lose channels.
PRUNE_OPTIONS = {"round_to": 1, "recover": "none"}  # the fuzzer checks the exact rewrite

# The same message is a fair refusal for an input, but for a valid input that onnxprune loads and
# analyses it can only come from the rewrite's shape inference on the pruned model.
AFTER_LOAD_SHAPE_REFUSAL = "cannot determine tensor shapes"


def _input_loads(proto) -> bool:
    from onnxprune.api import analyze_model
    try:
        analyze_model(proto)
        return True
    except Exception:  # noqa: BLE001
        return False


FOLD_NOTE = re.compile(r"folded exactly into (\d+) consumer\(s\), approximately into (\d+), dropped at (\d+)")
FOLD_TOLERANCE = 1e-4


def _session(proto):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def exact_fold_reference_diff(proto, slim, report, seed, samples=2):
    """A second oracle, independent of the library's fold code. When the report says every
    constant of a removed channel was folded *exactly* (none approximated, none dropped),
    the pruned model must compute what the original computes with the removed channels'
    filters zeroed (each removed channel then carries its constant, as in the original).
    Returns the max relative difference, or None when the check does not apply."""
    notes = [FOLD_NOTE.search(n) for n in report.notes]
    notes = [m for m in notes if m]
    if not notes or int(notes[0].group(2)) or int(notes[0].group(3)):
        return None
    kept: dict[str, set] = {}
    for g in report.groups:
        for node, idx in g["kept"].items():
            kept.setdefault(node, set()).update(idx)
    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    inits = {t.name: t for t in ref.graph.initializer}
    for node in ref.graph.node:
        if node.name not in kept or node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        t = inits.get(node.input[1])
        if t is None:
            return None
        w = numpy_helper.to_array(t).copy()
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        else:
            axis = 1
            if node.op_type == "ConvTranspose" and next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
                continue
        removed = sorted(set(range(w.shape[axis])) - kept[node.name])
        if not removed:
            continue
        np.moveaxis(w, axis, 0)[removed] = 0
        private = f"{t.name}__fuzzref_{node.name}"   # the weight may be shared with other nodes
        ref.graph.initializer.append(numpy_helper.from_array(w, private))
        node.input[1] = private
    a_sess, b_sess = _session(ref), _session(slim)
    rng = np.random.default_rng(seed + 7)
    worst = 0.0
    for _ in range(samples):
        feeds = {i.name: rng.uniform(-1, 1, [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                 for i in proto.graph.input}
        for a, b in zip(a_sess.run(None, feeds), b_sess.run(None, feeds)):
            if a.shape != b.shape:
                return float("inf")
            scale = max(float(np.abs(a).max()), 1e-3)
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max() / scale))
    return worst


def run_case(proto, ratio: float, criterion: str, seed: int, tolerance: float = TOLERANCE,
             output_shapes=None, exact_fold_check: bool = True, options=None) -> Outcome:
    """Prune `proto` with the oracle on and classify the outcome. `output_shapes`: the original
    model's output shapes, if already known (saves an onnxruntime session).
    `exact_fold_check`: also run the second oracle (`exact_fold_reference_diff`).
    `options`: more of prune's options (e.g. residual="independent")."""
    import onnxprune
    from onnxprune.errors import InternalError
    try:
        slim, report = onnxprune.prune(proto, ratio, criterion=criterion, seed=seed, verify=True,
                                       **{**PRUNE_OPTIONS, **(options or {})})
    except onnxprune.OnnxPruneError as e:
        msg = str(e)
        if not msg.strip():
            return Outcome("failure", "OnnxPruneError with an empty message", "exception:empty-message")
        if msg.startswith(AFTER_LOAD_SHAPE_REFUSAL) and _input_loads(proto):
            return Outcome("failure", f"the input loads and analyses, so this is about the pruned model: {msg}",
                           "self-check:shapes")
        return Outcome("refusal", msg)
    except InternalError as e:   # a self-check of the pruned model: a library bug
        return Outcome("failure", str(e), "self-check:checker")
    except Exception as e:  # noqa: BLE001
        tb = traceback.format_exc(limit=-3)
        return Outcome("failure", f"{type(e).__name__}: {e}\n{tb}", f"exception:{type(e).__name__}")
    params = (report.before.get("params"), report.after.get("params"))
    try:
        onnx.checker.check_model(slim, full_check=True)
    except Exception as e:  # noqa: BLE001
        return Outcome("failure", f"pruned model fails the checker: {e}", "checker", params=params)
    try:
        slim_outs = check_valid(slim)
    except Exception as e:  # noqa: BLE001
        return Outcome("failure", f"pruned model does not run: {type(e).__name__}: {e}", "ort", params=params)
    # the interface must not change
    if [i.name for i in slim.graph.input] != [i.name for i in proto.graph.input] or \
            [o.name for o in slim.graph.output] != [o.name for o in proto.graph.output]:
        return Outcome("failure", "graph inputs or outputs renamed", "interface", params=params)
    if output_shapes is None:
        output_shapes = [a.shape for a in check_valid(proto)]
    shapes = [tuple(s) for s in output_shapes], [a.shape for a in slim_outs]
    if shapes[0] != shapes[1]:
        return Outcome("failure", f"output shapes changed {shapes[0]} -> {shapes[1]}", "interface",
                       params=params)
    if report.oracle is None:
        return Outcome("failure", "verify=True but no oracle result", "oracle", params=params)
    diff = float(report.oracle.max_rel_diff)
    if not diff <= tolerance:
        return Outcome("failure", f"oracle mismatch: max_rel_diff={diff:.3g} (noise "
                       f"{report.oracle.noise:.3g}, oracle_passed={report.oracle_passed})", "oracle",
                       max_rel_diff=diff, params=params)
    if exact_fold_check:
        ref = exact_fold_reference_diff(proto, slim, report, seed)
        if ref is not None and not ref <= FOLD_TOLERANCE:
            return Outcome("failure", f"pruned model differs from the original with the removed filters "
                           f"zeroed by {ref:.3g}, although every fold was reported exact ({report.notes}); "
                           f"the library oracle said {diff:.3g}", "fold",
                           max_rel_diff=diff, params=params)
    # Not a failure, but worth counting: the pruned model has more parameters than the original
    # (seen when a shared weight is sliced differently for each user and gets duplicated).
    note = "params grew" if params[1] > params[0] else ""
    return Outcome("pass", note, max_rel_diff=diff, params=params)


CASE_TIMEOUT_S = 120


def isolated(fn, *args, timeout_s: int = CASE_TIMEOUT_S):
    """Run fn(*args) in a forked child, so that a crash (a signal inside onnxruntime) or a hang
    cannot take the fuzzer down. Returns ("ok", value), ("error", text) or ("crash", signal)."""
    if not hasattr(os, "fork"):
        return "ok", fn(*args)
    import pickle
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            import faulthandler
            faulthandler.disable()  # a crash is reported by the parent, without a dump
            signal.alarm(timeout_s)
            try:
                data = pickle.dumps(("ok", fn(*args)))
            except BaseException as e:  # noqa: BLE001
                data = pickle.dumps(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return "crash", "SIGALRM (timeout)" if sig == "SIGALRM" else sig
    if not data:
        return "crash", f"exit status {os.WEXITSTATUS(status)}"
    return pickle.loads(data)


def run_case_isolated(proto, ratio, criterion, seed, **kwargs) -> Outcome:
    """`run_case` in a child process: a crash becomes a failure of category crash:SIGNAL."""
    import onnxprune  # noqa: F401 - imported once here, not in every child
    status, value = isolated(lambda: run_case(proto, ratio, criterion, seed, **kwargs))
    if status == "ok":
        return value
    if status == "error":
        return Outcome("failure", f"harness error: {value}", "harness")
    return Outcome("failure", f"the process died ({value}) inside onnxprune.prune", f"crash:{value.split()[0]}")


def criterion_for(seed: int, ratio_index: int) -> str:
    # bgsc joined in session 2, after it crashed on graphs with nothing to prune or bound
    return ("l1", "random", "bgsc")[(seed + ratio_index) % 3]


RATIOS = (0.3, 0.5)


def fuzz_seed(seed: int, max_nodes: int = 40, ratios=RATIOS, isolate: bool = True, options=None):
    """Generate one graph and prune it at every ratio: (Generated, [(ratio, criterion, Outcome)]).
    With `isolate`, each prune runs in a forked child (crash-safe). `options`: more of prune's
    options (residual="independent" skips the second reference: a removed branch channel's
    constant is dropped where its sum keeps the channel, by definition, not folded)."""
    gen = generate(seed, max_nodes)
    results = []
    case = run_case_isolated if isolate else run_case
    extra = {"options": options, "exact_fold_check": options.get("residual") != "independent"} if options else {}
    for k, ratio in enumerate(ratios):
        crit = criterion_for(seed, k)
        results.append((ratio, crit, case(gen.proto, ratio, crit, seed, output_shapes=gen.output_shapes, **extra)))
    return gen, results


def fuzz_seeds(seeds, max_nodes: int = 40, ratios=RATIOS, options=None):
    """`fuzz_seed` for several seeds in one forked child (cheaper than a child per prune).
    If that child crashes, hangs or errs, every prune of these seeds is redone in its own
    child, so the crash is pinned on its seed and ratio."""
    import onnxprune  # noqa: F401 - imported once here, not in every child
    seeds = list(seeds)
    status, value = isolated(lambda: [fuzz_seed(s, max_nodes, ratios, isolate=False, options=options) for s in seeds],
                             timeout_s=CASE_TIMEOUT_S * max(len(seeds), 1))
    if status == "ok":
        return value
    return [fuzz_seed(s, max_nodes, ratios, isolate=True, options=options) for s in seeds]


# -- minimisation ------------------------------------------------------------------------
def _prune_dead(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    graph_inputs = {i.name for i in g.input}
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed and o not in graph_inputs for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(inputs)
    return model


def _with_shapes(model):
    """Re-declare output types from shape inference (a candidate may expose a new tensor)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    outs = []
    for o in model.graph.output:
        t = types.get(o.name)
        if t is None or not t.type.tensor_type.HasField("shape"):
            raise ValueError("no shape")
        outs.append(t)
    del model.graph.output[:]
    model.graph.output.extend(outs)
    del model.graph.value_info[:]
    return model


def _candidates(model: onnx.ModelProto):
    """Smaller variants of `model`, most aggressive first."""
    g = model.graph
    outputs = [o.name for o in g.output]
    # 1. keep one output
    if len(outputs) > 1:
        for k in range(len(outputs)):
            m = onnx.ModelProto()
            m.CopyFrom(model)
            keep = m.graph.output[k]
            del m.graph.output[:]
            m.graph.output.append(keep)
            yield m
    # 2. truncate: an intermediate tensor becomes the only output
    for n in list(g.node)[::-1]:
        for o in n.output[:1]:
            if o in outputs:
                continue
            m = onnx.ModelProto()
            m.CopyFrom(model)
            del m.graph.output[:]
            m.graph.output.append(helper.make_empty_tensor_value_info(o))
            yield m
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {t.name for t in g.initializer}
    # 3. bypass a node whose output has the shape of its first input
    for idx, n in enumerate(g.node):
        if not n.input or n.input[0] in inits or len(n.output) != 1:
            continue
        if shapes.get(n.input[0]) != shapes.get(n.output[0]) or n.output[0] in outputs:
            continue
        for src in [i for i in n.input if i and i not in inits and shapes.get(i) == shapes.get(n.output[0])]:
            m = onnx.ModelProto()
            m.CopyFrom(model)
            for other in m.graph.node:
                for j, t in enumerate(other.input):
                    if t == n.output[0]:
                        other.input[j] = src
            del m.graph.node[idx]
            yield m
    # 4. cut upstream: a node input becomes a graph input
    names = {i.name for i in g.input}
    for n in g.node:
        for t in n.input:
            if not t or t in inits or t in names or t not in shapes:
                continue
            m = onnx.ModelProto()
            m.CopyFrom(model)
            m.graph.input.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, shapes[t]))
            yield m


def minimise(proto: onnx.ModelProto, still_fails, max_steps: int = 200,
             deadline_s: float = 300) -> onnx.ModelProto:
    """Greedy shrinking: accept the first smaller candidate that is valid and `still_fails`."""
    import time
    stop = time.monotonic() + deadline_s
    best = onnx.ModelProto()
    best.CopyFrom(proto)
    for _ in range(max_steps):
        improved = False
        for cand in _candidates(best):
            if time.monotonic() > stop:
                return best
            try:
                cand = _with_shapes(_prune_dead(cand))
                if len(cand.graph.node) >= len(best.graph.node) and \
                        len(cand.graph.output) >= len(best.graph.output):
                    continue
                check_valid(cand)
            except Exception:  # noqa: BLE001
                continue
            if still_fails(cand):
                best, improved = cand, True
                break
        if not improved:
            break
    return best


def same_failure(ratio, criterion, seed, outcome: Outcome):
    """A predicate for `minimise`: the candidate fails in the same category."""
    def fails(cand):
        o = run_case_isolated(cand, ratio, criterion, seed)
        return o.kind == "failure" and o.category == outcome.category
    return fails


def to_python(model: onnx.ModelProto) -> str:
    """Python source that rebuilds `model` with onnx.helper (exact initializer values)."""
    def literal(v):
        if isinstance(v, bytes):
            return repr(v.decode())
        if isinstance(v, float):
            return repr(float(np.float32(v)))
        if isinstance(v, list):
            return "[" + ", ".join(literal(x) for x in v) + "]"
        return repr(v)

    def tensor_literal(a):
        if a.dtype == np.float32:
            values = ", ".join(f"{float(x):.9g}" for x in a.ravel())
            return f"np.array([{values}], dtype=np.float32).reshape({list(a.shape)})"
        return f"np.array({a.ravel().tolist()!r}, dtype=np.{a.dtype}).reshape({list(a.shape)})"

    def vi(v):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        return f"helper.make_tensor_value_info({v.name!r}, TensorProto.FLOAT, {dims if dims else None})"

    out = ["import numpy as np", "import onnx", "from onnx import TensorProto, helper, numpy_helper", "",
           "nodes = ["]
    for n in model.graph.node:
        attrs = "".join(f", {a.name}={literal(helper.get_attribute_value(a))}" for a in n.attribute)
        out.append(f"    helper.make_node({n.op_type!r}, {list(n.input)!r}, {list(n.output)!r}, "
                   f"name={n.name!r}{attrs}),")
    out.append("]")
    out.append("inits = [")
    for t in model.graph.initializer:
        out.append(f"    numpy_helper.from_array({tensor_literal(numpy_helper.to_array(t))}, {t.name!r}),")
    out.append("]")
    out.append(f"inputs = [{', '.join(vi(v) for v in model.graph.input)}]")
    out.append(f"outputs = [{', '.join(vi(v) for v in model.graph.output)}]")
    out.append("graph = helper.make_graph(nodes, 'repro', inputs, outputs, inits)")
    out.append(f"model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', {OPSET})])")
    out.append(f"model.ir_version = {model.ir_version}")
    out.append("onnx.checker.check_model(model, full_check=True)")
    return "\n".join(out) + "\n"


def save_failure(seed, ratio, criterion, outcome: Outcome, proto, minimised=None, directory=FAILURE_DIR):
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, f"seed{seed}_r{ratio}_{criterion}")
    onnx.save(proto, stem + ".onnx")
    paths = [stem + ".onnx"]
    if minimised is not None:
        onnx.save(minimised, stem + "_min.onnx")
        with open(stem + "_min.py", "w") as f:
            f.write(f"# seed={seed} ratio={ratio} criterion={criterion}: {outcome.category}\n")
            f.write(to_python(minimised))
            f.write(f"\nimport onnxprune\nslim, report = onnxprune.prune(model, {ratio}, criterion={criterion!r}, "
                    f"seed={seed}, verify=True)\nprint(report.oracle, report.notes)\n")
        paths += [stem + "_min.onnx", stem + "_min.py"]
    with open(stem + ".txt", "w") as f:
        f.write(f"seed={seed} ratio={ratio} criterion={criterion}\n{outcome.category}\n{outcome.detail}\n")
        if minimised is not None:
            f.write(f"\nminimised to {len(minimised.graph.node)} nodes:\n{onnx.printer.to_text(minimised.graph)}\n")
    return paths


# -- known bugs ------------------------------------------------------------------------------
# Each entry: a title, `match(proto, outcome)` recognising a fuzz failure it explains,
# `repro()` -> (ModelProto, ratio, prune kwargs): the smallest graph we found that shows it,
# and `fixed`: the commit that fixed it (then the reproduction is a regression test), or None.
# `check_repro(key)` returns the Outcome (a failure while the bug is present).
def _consumers(proto):
    users = {}
    for n in proto.graph.node:
        for t in n.input:
            users.setdefault(t, []).append(n)
    return users


def _gemm_beta_not_one(proto):
    return any(n.op_type == "Gemm" and next((a.f for a in n.attribute if a.name == "beta"), 1.0) != 1.0
               for n in proto.graph.node)


def _zero_pad_into_maxpool(proto):
    users = _consumers(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type != "Pad":
            continue
        mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
        value = 0.0
        if len(n.input) > 2 and n.input[2] in inits:
            value = float(numpy_helper.to_array(inits[n.input[2]]).ravel()[0])
        if mode == b"constant" and value == 0.0 and any(u.op_type == "MaxPool" for u in users.get(n.output[0], [])):
            return True
    return False


def _w(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def repro_gemm_beta():
    """Conv(3->8) -> GlobalAveragePool -> Flatten -> Gemm(beta=0.5, no C)."""
    rng = np.random.default_rng(0)
    b = Builder(rng)
    x = b.input((1, 3, 4, 4))
    h = b.op("Conv", [x, b.const(_w(rng, 8, 3, 3, 3)), b.const(_w(rng, 8))], [(1, 8, 4, 4)],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    f = b.op("Flatten", [b.op("GlobalAveragePool", [h], [(1, 8, 1, 1)])], [(1, 8)])
    y = b.op("Gemm", [f, b.const(_w(rng, 4, 8))], [(1, 4)], transB=1, beta=0.5)
    return b.model([y]), 0.5, {"criterion": "l1"}


def repro_empty_split_segment():
    """Conv(3->8) -> Split [2, 6] -> depthwise Conv on each part -> Concat -> Conv(8->4).
    The first conv's filters 0 and 1 are tiny, so L1 removes both channels of the first part."""
    rng = np.random.default_rng(0)
    b = Builder(rng)
    x = b.input((1, 3, 6, 6))
    w = _w(rng, 8, 3, 1, 1)
    w[:2] *= 0.01
    h = b.op("Conv", [x, b.const(w), b.const(_w(rng, 8))], [(1, 8, 6, 6)], kernel_shape=[1, 1])
    p0, p1 = b.op("Split", [h, b.const(np.array([2, 6], np.int64))], [(1, 2, 6, 6), (1, 6, 6, 6)], axis=1)
    d0 = b.op("Conv", [p0, b.const(_w(rng, 2, 1, 1, 1))], [(1, 2, 6, 6)], kernel_shape=[1, 1], group=2)
    d1 = b.op("Conv", [p1, b.const(_w(rng, 6, 1, 1, 1))], [(1, 6, 6, 6)], kernel_shape=[1, 1], group=6)
    c = b.op("Concat", [d0, d1], [(1, 8, 6, 6)], axis=1)
    y = b.op("Conv", [c, b.const(_w(rng, 4, 8, 1, 1))], [(1, 4, 6, 6)], kernel_shape=[1, 1])
    return b.model([y]), 0.5, {"criterion": "l1"}


def repro_empty_segment_conv_transpose():
    """As repro_empty_split_segment, with a depthwise ConvTranspose (group 2) on the emptied part,
    which gets group=0."""
    rng = np.random.default_rng(0)
    b = Builder(rng)
    x = b.input((1, 3, 6, 6))
    w = _w(rng, 8, 3, 1, 1)
    w[:2] *= 0.01
    h = b.op("Conv", [x, b.const(w), b.const(_w(rng, 8))], [(1, 8, 6, 6)], kernel_shape=[1, 1])
    p0, p1 = b.op("Split", [h, b.const(np.array([2, 6], np.int64))], [(1, 2, 6, 6), (1, 6, 6, 6)], axis=1)
    t = b.op("ConvTranspose", [p0, b.const(_w(rng, 2, 1, 3, 3))], [(1, 2, 6, 6)], kernel_shape=[3, 3],
             pads=[1, 1, 1, 1], group=2)
    c = b.op("Concat", [t, p1], [(1, 8, 6, 6)], axis=1)
    y = b.op("Conv", [c, b.const(_w(rng, 4, 8, 1, 1))], [(1, 4, 6, 6)], kernel_shape=[1, 1])
    return b.model([y]), 0.5, {"criterion": "l1"}


def repro_ort_pad_maxpool():
    """in -> Pad(constant 0 on W) -> MaxPool(3x3, pads 1) -> out, and Pad -> Conv (dead branch).
    onnxprune drops the dead Conv; onnxruntime then fuses the Pad into the MaxPool (padding with
    -inf instead of 0), so the pruned model computes something else than the original."""
    rng = np.random.default_rng(0)
    b = Builder(rng)
    x = b.input((1, 2, 3, 3))
    p = b.op("Pad", [x, b.const(np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int64))], [(1, 2, 3, 5)], mode="constant")
    y = b.op("MaxPool", [p], [(1, 2, 3, 5)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    b.op("Conv", [p, b.const(_w(rng, 4, 2, 1, 1))], [(1, 4, 3, 5)], kernel_shape=[1, 1])  # dead
    return b.model([y]), 0.5, {"criterion": "l1"}


KNOWN_BUGS: dict = {
    "gemm-beta-fold": {
        "fixed": "90d2d38",
        "title": "fold_removed_constants adds a removed channel's constant to a Gemm's C input, "
                 "which Gemm scales by beta: wrong output when beta != 1; the masking oracle applies "
                 "the same fold, so report.oracle.max_rel_diff stays 0",
        "match": lambda proto, o: o.category == "fold" and _gemm_beta_not_one(proto),
        "repro": repro_gemm_beta,
    },
    "empty-segment-convtranspose": {
        "fixed": "90d2d38",
        "title": "same root cause as empty-split-segment, with a depthwise ConvTranspose on the "
                 "emptied part: it gets group=0; prune() refuses with 'cannot determine tensor "
                 "shapes ... group count is <= 0' (before commit 0c3f210 onnxruntime divided by "
                 "zero there and the Python process died with SIGFPE, verify=False included)",
        "match": lambda proto, o: (o.category.startswith("self-check") and "group count is <= 0" in o.detail)
        or o.category == "crash:SIGFPE",
        "repro": repro_empty_segment_conv_transpose,
    },
    "empty-split-segment": {
        "fixed": "90d2d38",
        "title": "the budget keeps channels per group, but a Split (or Slice) part of a group can "
                 "lose all its channels: the part becomes a 0-channel tensor, a depthwise Conv on "
                 "it gets group=0 and a 0-channel weight (the ONNX checker accepts it, onnxruntime "
                 "does not), a pooling of it fails in onnxruntime; prune() raises 'onnxruntime "
                 "cannot load the pruned model' or 'cannot determine tensor shapes'",
        "match": lambda proto, o: o.category.startswith("self-check") and (
            any(k in o.detail for k in ("invalid channel count", "Only N can be zero", "group: 0"))
            or re.search(r"running (AveragePool|MaxPool|Resize|Conv) node", o.detail) is not None),
        "repro": repro_empty_split_segment,
    },
    "ort-pad-maxpool-fusion": {
        "fixed": "90d2d38",
        "title": "(onnxruntime 1.31 bug, exposed by onnxprune) onnxruntime fuses a zero Pad into a "
                 "following MaxPool as if MaxPool padded with 0; the original is safe while the Pad "
                 "has a second (dead) consumer, which onnxprune's dead-node pass removes, so the "
                 "pruned model's onnxruntime output differs (oracle mismatch)",
        "match": lambda proto, o: o.category == "oracle" and _zero_pad_into_maxpool(proto),
        "repro": repro_ort_pad_maxpool,
    },
}


def classify_failure(proto, outcome) -> str | None:
    """The known bug that explains a failure, or None."""
    for key, bug in KNOWN_BUGS.items():
        if bug["match"](proto, outcome):
            return key
    return None


def check_repro(key) -> Outcome:
    proto, ratio, kwargs = KNOWN_BUGS[key]["repro"]()
    check_valid(proto)
    return run_case_isolated(proto, ratio, kwargs.get("criterion", "l1"), kwargs.get("seed", 0))
