"""Analyze stage: channel identities, coupled channel classes and their groups (DFCs).

Every channel of every producer (Conv/Gemm/MatMul output, graph input, unknown op)
gets an integer identity. Each operator's rule (`rules.py`) says how identities flow
from its inputs to its outputs, which identities must be unified, which initializer
axes read or write them, and which attributes depend on the kept channels. A union-
find over identities then yields channel classes: channels removed together.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from .errors import OnnxPruneError
from .model import Model, subgraph_reads

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
class Producer:
    node: str
    output: str
    ids: np.ndarray


@dataclass
class Group:
    """Classes sharing feed-in and feed-out layers: one Data Flow Coupling."""
    index: int
    classes: np.ndarray
    feed_in: list[str]
    feed_out: list[str]
    channelwise: list[str]
    frozen: str | None = None   # reason, when the group cannot be pruned

    @property
    def width(self) -> int:
        return len(self.classes)


@dataclass
class Couplings:
    class_of: np.ndarray                 # identity -> class index
    n_classes: int
    tensors: dict[str, ChannelMap]
    slices: list[SliceUse]
    edits: list[Edit]
    producers: list[Producer]
    frozen: dict[int, str]               # class -> reason
    groups: list[Group] = field(default_factory=list)
    group_of: np.ndarray = None          # class -> group index

    def kept_fn(self, removed_classes) -> Callable[[np.ndarray], np.ndarray]:
        keep = np.ones(self.n_classes, dtype=bool)
        keep[np.asarray(sorted(removed_classes), dtype=np.int64)] = False
        return lambda ids: keep[self.class_of[np.asarray(ids, dtype=np.int64)]]

    def class_sizes(self) -> np.ndarray:
        """Channels per class, counted over producer outputs."""
        sizes = np.zeros(self.n_classes, dtype=np.int64)
        for p in self.producers:
            np.add.at(sizes, self.class_of[p.ids], 1)
        return sizes


class RuleError(Exception):
    """Raised by a rule that cannot handle this node: its channels get frozen."""


class Context:
    """What a rule sees: shapes, constants, channel maps, and the calls that record facts."""

    def __init__(self, model: Model):
        self.model = model
        self.maps: dict[str, ChannelMap] = {}
        self.next_id = 0
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.slices: list[SliceUse] = []
        self.edits: list[Edit] = []
        self.producers: list[Producer] = []
        self.segments: list[tuple[str, np.ndarray]] = []
        self.consumers = model.consumers()

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

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

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


def analyze(model: Model, exclude: tuple[str, ...] = ()) -> Couplings:
    from .rules import RULES

    ctx = Context(model)
    for name in model.input_names:
        shape = model.input_shapes.get(name, ())
        if len(shape) >= 2:
            axis = _input_channel_axis(ctx, name, len(shape))
            ctx.freeze(ctx.produce(_InputNode(name), name, shape[axis], axis), "graph input")
    for node in model.graph.node:
        for t in subgraph_reads(node):  # If/Loop/Scan bodies read outer tensors implicitly
            if ctx.map(t) is not None:
                ctx.freeze(ctx.map(t).ids, f"read inside the body of {node.op_type} {node.name}")
        if not any(ctx.map(t) is not None for t in node.input):
            continue  # constants and shape arithmetic carry no channels
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            ctx.freeze_node(node, f"unsupported operator {node.op_type}"
                            + (f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""))
            continue
        mark = (len(ctx.pairs), len(ctx.slices), len(ctx.edits), len(ctx.producers))
        try:
            rule(node, ctx)
        except RuleError as e:
            _rollback(ctx, mark)
            ctx.freeze_node(node, f"{node.op_type} {node.name}: {e}")
        except Exception as e:  # a bug in a rule must freeze, never corrupt the output
            _rollback(ctx, mark)
            ctx.freeze_node(node, f"{node.op_type} {node.name}: internal rule error "
                            f"{type(e).__name__}: {e} at {traceback.extract_tb(e.__traceback__)[-1].lineno}")
    for name in model.output_names:
        m = ctx.map(name)
        if m is not None:
            ctx.freeze(m.ids, "graph output")
    if exclude:
        _freeze_excluded(ctx, exclude)
    return _build(ctx)


def _input_channel_axis(ctx: Context, name: str, rank: int) -> int:
    """Axis 1 (NCHW) unless the input is read as features on its last axis (tokens)."""
    for node, index in ctx.consumers.get(name, []):
        if node.op_type in ("MatMul", "LayerNormalization") and index == 0:
            return rank - 1
    return 1


class _InputNode:
    def __init__(self, name):
        self.name = name


def _rollback(ctx: Context, mark) -> None:
    del ctx.pairs[mark[0]:], ctx.slices[mark[1]:], ctx.edits[mark[2]:], ctx.producers[mark[3]:]


def _freeze_excluded(ctx: Context, patterns) -> None:
    from fnmatch import fnmatchcase
    hit = {n.name for n in ctx.model.graph.node if any(fnmatchcase(n.name, p) for p in patterns)}
    for s in ctx.slices:
        if s.node in hit:
            ctx.freeze(s.ids, f"excluded by --exclude ({s.node})")
    for p in ctx.producers:
        if p.node in hit:
            ctx.freeze(p.ids, f"excluded by --exclude ({p.node})")


def _union_find(n: int, pairs) -> np.ndarray:
    """Connected components of the identity graph, vectorised: min-label propagation
    with pointer jumping. Returns a dense class index per identity."""
    labels = np.arange(n, dtype=np.int64)
    if pairs:
        a = np.concatenate([p[0] for p in pairs])
        b = np.concatenate([p[1] for p in pairs])
        while True:
            la, lb = labels[a], labels[b]
            low = np.minimum(la, lb)
            before = labels.copy()
            np.minimum.at(labels, la, low)
            np.minimum.at(labels, lb, low)
            while True:  # pointer jumping until every label points at a root
                nxt = labels[labels]
                if np.array_equal(nxt, labels):
                    break
                labels = nxt
            if np.array_equal(labels, before):
                break
    _, dense = np.unique(labels, return_inverse=True)
    return dense.astype(np.int64)


def _build(ctx: Context) -> Couplings:
    class_of = _union_find(ctx.next_id, ctx.pairs)
    n_classes = int(class_of.max()) + 1 if len(class_of) else 0
    frozen: dict[int, str] = {}
    for ids, reason in ctx.frozen:
        for c in np.unique(class_of[ids]).tolist():
            frozen.setdefault(c, reason)
    c = Couplings(class_of, n_classes, ctx.maps, ctx.slices, ctx.edits, ctx.producers, frozen)
    segments = [set() for _ in range(n_classes)]
    for k, (node, ids) in enumerate(ctx.segments):
        for cls in np.unique(class_of[ids]).tolist():
            segments[cls].add(k)
    c.groups, c.group_of = _groups(c, segments)
    return c


def _groups(c: Couplings, segments):
    """Group classes by (feed-in layers, feed-out layers, the Split/Slice parts they are in,
    frozen reason)."""
    members: dict[str, list[set]] = {FEED_IN: [set() for _ in range(c.n_classes)],
                                     FEED_OUT: [set() for _ in range(c.n_classes)],
                                     CHANNELWISE: [set() for _ in range(c.n_classes)]}
    seen = set()
    for s in c.slices:
        role = FEED_IN if s.role == BIAS else s.role
        key = (s.node, role, id(s.ids))
        if key in seen:
            continue
        seen.add(key)
        for cls in np.unique(c.class_of[s.ids]).tolist():
            members[role][cls].add(s.node)
    for p in c.producers:  # inputs and frozen unknown ops produce without weights
        for cls in np.unique(c.class_of[p.ids]).tolist():
            members[FEED_IN][cls].add(p.node)
    by_key: dict[tuple, list[int]] = {}
    for cls in range(c.n_classes):
        key = (tuple(sorted(members[FEED_IN][cls])), tuple(sorted(members[FEED_OUT][cls])),
               c.frozen.get(cls), tuple(sorted(segments[cls])))
        by_key.setdefault(key, []).append(cls)
    groups, group_of = [], np.zeros(c.n_classes, dtype=np.int64)
    for i, ((fin, fout, reason, _), classes) in enumerate(by_key.items()):
        cw = sorted(set().union(*(members[CHANNELWISE][k] for k in classes)))
        groups.append(Group(i, np.asarray(classes, dtype=np.int64), list(fin), list(fout), cw, reason))
        group_of[classes] = i
    return groups, group_of


def require(condition: bool, reason: str) -> None:
    """Rules call this for every assumption they make: a failed one freezes, never guesses."""
    if not condition:
        raise RuleError(reason)


__all__ = ["ChannelMap", "SliceUse", "Edit", "Producer", "Group", "Couplings", "Context",
           "RuleError", "analyze", "require", "FEED_IN", "FEED_OUT", "CHANNELWISE", "BIAS",
           "OnnxPruneError"]
