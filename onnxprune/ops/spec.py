"""What onnxprune knows about one operator, in one record.

Each family module (elementwise.py, layers.py, ...) registers its operators with `op`:
  - `channels`: the channel rule — how channel identities flow through the node (see
    onnxprune/channels.py for what a rule may record);
  - `bound`: how a BGSC bound map goes through the node (saliency/bgsc.py builds the bound
    graph from these): a function `(builder, node)`, `STRUCTURAL` (the node itself moves
    or pools bounds without mixing channels), a `Lipschitz` factor, or `UNBOUNDED` (no
    bound exists: the channels touching the node are frozen when scoring with bgsc);
  - `macs`: multiply-accumulates of one node from static shapes (`no_macs` by default);
  - `layer`: for operators with a weight — which input is the weight, which of its axes
    read input channels and which write output channels, which input takes a bias (where
    constants of removed channels can be folded), the transposed bound r_b of BGSC, and
    `connections`: which output channel reads which input channel through a non-zero weight;
  - `factor`: for operators that multiply their input by a constant (a BatchNormalization's
    scale, x * c), that constant, broadcastable to the output: where it is zero, the output
    does not depend on the input (onnxprune/liveness.py reads it);
  - `fresh`: for operators with a channel-wise constant, `(node, input index) -> value` of
    the entries a new channel gets when its group is widened (passes/widen_groups.py): the
    value a fresh PyTorch module starts with (BN: scale 1, shift 0, mean 0, variance 1);
    None where a channel-wise constant has no neutral value (the group does not widen).
`tests/test_registry.py` walks the registry and fails when an entry lacks a piece.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

STRUCTURAL = "structural"
UNBOUNDED = "unbounded"


@dataclass(frozen=True)
class Lipschitz:
    """Bound of a 1-input activation: |f(x) - f(y)| <= factor * |x - y|."""
    factor: float

    def __call__(self, b, node) -> None:
        if self.factor != 1.0:
            b.note(f"{node.op_type}: Lipschitz factor {self.factor}")
        b.scale(node, node.input[0], self.factor)


@dataclass(frozen=True)
class Layer:
    """An operator with a weight. Axes are functions of the node (Gemm's transB decides)."""
    in_axis: Callable                 # node -> weight axis that reads input channels
    out_axis: Callable                # node -> weight axis that writes output channels
    transposed_bound: Callable        # (node, model, u_shape, index) -> r_b, channels first
    bias: int | None = 2              # input index of the bias; None: no bias to fold into
    weight: int = 1                   # input index of the weight
    bias_scale: Callable = lambda node: 1.0   # the bias enters as bias_scale * C (Gemm's beta)
    # (node, nonzero weight mask) -> bool [output channels, input channels]: which output
    # channel a non-zero weight connects to which input channel (groups included)
    connections: Callable | None = None


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    channels: Callable
    bound: object
    macs: Callable
    layer: Layer | None = None
    factor: Callable | None = None    # (node, model) -> the constant factor on the input, or None
    fresh: Callable | None = None     # (node, input index) -> a new channel's channel-wise entry


def no_macs(node, shapes) -> int:
    return 0


REGISTRY: dict[str, OpSpec] = {}


def op(*op_types, bound=None, bounds=None, macs=no_macs, layer=None, factor=None, fresh=None):
    """Register the decorated channel rule for `op_types`, with one `bound` for all of them
    or `bounds[op_type]` each."""
    def register(rule):
        for op_type in op_types:
            chosen = bounds[op_type] if bounds is not None else bound
            if chosen is None:
                raise ValueError(f"{op_type}: every operator states its BGSC bound")
            if op_type in REGISTRY:
                raise ValueError(f"{op_type} is registered twice")
            REGISTRY[op_type] = OpSpec(op_type, rule, chosen, macs, layer, factor, fresh)
        return rule
    return register


def output_elements(node, shapes) -> int:
    return int(np.prod(shapes[node.output[0]], dtype=np.int64))
