"""What a channel rule sees and records (onnxprune/ops/ holds the rules, one per operator).

Every channel of every producer (Conv/Gemm/MatMul output, graph input, unknown op) gets an
integer identity. A rule reads its inputs' channel maps and records through the `Context`:
  - the channel map of each output (`ctx.out`, or `ctx.produce` for new channels),
  - identities that must be removed together (`ctx.unify`),
  - initializer axes that hold channels (`ctx.param`), so the rewrite can slice them,
  - attributes or shape constants that depend on the kept channels (`ctx.edit`),
  - with independent residual branches, sums whose output keeps a channel while any
    operand keeps it (`ctx.join`).
Any assumption a rule cannot verify is a `require(...)` that freezes the node's channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .graph import attr
from .model import Model

FEED_IN, FEED_OUT, CHANNELWISE, BIAS = "feed_in", "feed_out", "channelwise", "bias"


@dataclass
class ChannelMap:
    """Which channel identity sits at each position of one axis of a tensor.
    Identities may repeat: a flattened C×H×W feature vector repeats each channel H·W times."""
    axis: int
    ids: np.ndarray


@dataclass
class SliceUse:
    """Initializer input `input` of `node` has channels `ids` along `axis`."""
    node: str
    input: int
    axis: int
    ids: np.ndarray
    role: str


@dataclass
class Edit:
    """An attribute or shape constant of `node` that depends on the kept channels.
    `apply(node, model, kept)` updates it; `kept(ids)` is a boolean mask."""
    node: str
    apply: Callable


@dataclass
class Join:
    """`node` sums activations whose channels stay independent (`--residual independent`):
    output position k (identity `ids[k]`) is kept while any operand keeps its position k.
    `operands` are (input index, channel map) of the full-width activation inputs."""
    node: str
    ids: np.ndarray
    operands: list[tuple[int, ChannelMap]]


@dataclass
class Producer:
    node: str
    output: str
    ids: np.ndarray


class RuleError(Exception):
    """Raised by a rule that cannot handle this node: its channels get frozen."""


class Context:
    """What a rule sees: shapes, constants, channel maps, and the calls that record facts."""

    def __init__(self, model: Model, residual: str = "coupled"):
        self.model = model
        self.residual = residual            # "coupled": a residual Add unifies its operands
        self.joins: list[Join] = []
        self.maps: dict[str, ChannelMap] = {}
        self.next_id = 0
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.slices: list[SliceUse] = []
        self.edits: list[Edit] = []
        self.producers: list[Producer] = []
        self.segments: list[tuple[str, np.ndarray]] = []
        self.index = model.index()
        self.consumers = self.index.consumers

    # -- queries ------------------------------------------------------------------------
    def map(self, tensor: str) -> ChannelMap | None:
        return self.maps.get(tensor) if tensor else None

    def shape(self, tensor: str) -> tuple:
        try:
            return self.model.shapes[tensor]
        except KeyError:
            raise RuleError(f"no static shape for tensor {tensor}") from None

    def const(self, tensor: str) -> np.ndarray | None:
        return self.model.inits.get(tensor) if tensor else None

    # -- facts ---------------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        return ids

    def out(self, tensor: str, cmap: ChannelMap) -> None:
        if tensor:
            self.maps[tensor] = cmap

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise RuleError(f"cannot couple {len(a)} with {len(b)} channels")
        self.pairs.append((np.asarray(a), np.asarray(b)))

    def join(self, node, output: str, width: int, axis: int, operands) -> None:
        """`output` is a sum of `operands` that keep their own channels: it gets identities
        of its own, kept while any operand keeps the same position."""
        ids = self.fresh(width)
        self.joins.append(Join(node.name, ids, list(operands)))
        self.out(output, ChannelMap(axis, ids))

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self.frozen.append((np.asarray(ids), reason))

    def param(self, node, input_index: int, axis: int, ids: np.ndarray, role: str) -> None:
        name = node.input[input_index] if input_index < len(node.input) else ""
        if not name:
            return
        if name not in self.model.inits:
            raise RuleError(f"input {input_index} ({name}) is not a constant")
        if self.model.inits[name].shape[axis] != len(ids):
            raise RuleError(f"input {name} has {self.model.inits[name].shape[axis]} entries on "
                            f"axis {axis}, expected {len(ids)}")
        self.slices.append(SliceUse(node.name, input_index, axis, np.asarray(ids), role))

    def segment(self, node, ids: np.ndarray) -> None:
        """`ids` are a part of a tensor cut out by `node` (Split, Slice): the part must keep
        at least one channel, so its classes form groups of their own."""
        self.segments.append((node.name, np.asarray(ids)))

    def edit(self, node, apply: Callable) -> None:
        self.edits.append(Edit(node.name, apply))

    def produce(self, node, output: str, n: int, axis: int) -> np.ndarray:
        ids = self.fresh(n)
        self.producers.append(Producer(node.name, output, ids))
        self.out(output, ChannelMap(axis, ids))
        return ids

    def freeze_node(self, node, reason: str) -> None:
        """Unknown or unsupported use: freeze every channel touching the node; its outputs
        become new frozen channels (axis 1) so that later layers are still analysed."""
        for t in node.input:
            m = self.map(t)
            if m is not None:
                self.freeze(m.ids, reason)
        for o in node.output:
            shape = self.model.shapes.get(o)
            if o and shape is not None and len(shape) >= 2:
                ids = self.produce(node, o, shape[1], 1)
                self.freeze(ids, reason)


def require(condition: bool, reason: str) -> None:
    """Rules call this for every assumption they make: a failed one freezes, never guesses."""
    if not condition:
        raise RuleError(reason)


def input_map(node, ctx: Context, index: int = 0) -> ChannelMap:
    m = ctx.map(node.input[index])
    require(m is not None, f"input {index} carries no channels")
    return m


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def const_axes(node, ctx: Context, input_index: int):
    """`axes` as an attribute (older opsets) or a constant input (newer opsets); None if absent."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > input_index and node.input[input_index]:
        value = ctx.const(node.input[input_index])
        require(value is not None, "axes are computed at run time")
        axes = value.tolist()
    return None if axes is None else [int(a) for a in np.atleast_1d(axes)]
