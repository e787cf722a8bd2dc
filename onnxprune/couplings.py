"""Analyze stage: coupled channel classes and their groups (DFCs).

Each operator's channel rule (onnxprune/ops/) says how channel identities flow through
it; a union-find over identities then yields channel classes (channels removed
together), and classes with the same feed-in and feed-out layers form a group — a Data
Flow Coupling of the DFPC paper.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable

import numpy as np

from .channels import (BIAS, CHANNELWISE, FEED_IN, FEED_OUT, ChannelMap, Context, Edit, Producer,
                       RuleError, SliceUse)
from .graph import is_default_domain, subgraph_reads
from .ops import REGISTRY
from .model import Model
from .residual import DERIVED_REASON, RESIDUAL, Derivation


@dataclass
class Group:
    """Classes sharing feed-in and feed-out layers: one Data Flow Coupling."""
    index: int
    classes: np.ndarray
    feed_in: list[str]
    feed_out: list[str]
    channelwise: list[str]
    frozen: str | None = None   # reason, when the group cannot be pruned
    residual: bool = False      # its classes are branches of independent residual sums

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
    segments: list = field(default_factory=list)  # class -> Split/Slice parts it is in
    joins: list = field(default_factory=list)     # independent residual sums (onnxprune/residual.py)

    @cached_property
    def derivation(self) -> Derivation:
        return Derivation(self)

    def closure(self, removed_classes) -> set[int]:
        """The chosen classes and the derived classes (sums of independent residual
        branches) that they remove."""
        return self.derivation.closure(removed_classes)

    def kept_fn(self, removed_classes) -> Callable[[np.ndarray], np.ndarray]:
        keep = np.ones(self.n_classes, dtype=bool)
        keep[np.asarray(sorted(self.closure(removed_classes)), dtype=np.int64)] = False
        return lambda ids: keep[self.class_of[np.asarray(ids, dtype=np.int64)]]

    def with_frozen(self, frozen: dict[int, str]) -> "Couplings":
        """The same couplings with more classes frozen (a criterion that cannot score them,
        e.g. bgsc next to an operator without a bound); groups are formed again."""
        if all(c in self.frozen for c in frozen):
            return self
        merged = {**frozen, **self.frozen}
        out = replace(self, frozen=merged)   # a new Derivation: frozen sums are never removed
        out.groups, out.group_of = _groups(out, self.segments)
        return out

    def class_sizes(self) -> np.ndarray:
        """Channels per class, counted over producer outputs."""
        sizes = np.zeros(self.n_classes, dtype=np.int64)
        for p in self.producers:
            np.add.at(sizes, self.class_of[p.ids], 1)
        return sizes


def analyze(model: Model, exclude: tuple[str, ...] = (), residual: str = "coupled") -> Couplings:
    """`residual`: "coupled" (a residual Add unifies its operands' channels) or
    "independent" (each operand keeps its own; onnxprune/residual.py)."""
    if residual not in RESIDUAL:
        raise ValueError(f"residual must be one of {RESIDUAL}, got {residual!r}")
    return _build(trace(model, exclude, residual))


def trace(model: Model, exclude: tuple[str, ...] = (), residual: str = "coupled") -> Context:
    """Run every node's channel rule: the identities, the pairs to unify, the frozen ones."""
    ctx = Context(model, residual)
    outputs = set(model.output_names)
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
        spec = REGISTRY.get(node.op_type) if is_default_domain(node) else None
        if spec is None:
            ctx.freeze_node(node, f"unsupported operator {node.op_type}"
                            + (f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""))
            continue
        mark = (len(ctx.pairs), len(ctx.slices), len(ctx.edits), len(ctx.producers), len(ctx.joins))
        try:
            spec.channels(node, ctx)
            _freeze_unmapped_graph_outputs(ctx, node, outputs)
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
    return ctx


def _freeze_unmapped_graph_outputs(ctx: Context, node, outputs: set) -> None:
    """A graph output the rule gave no channel map (BatchNormalization's running statistics,
    MaxPool's indices, the value of a Shape) may still hold the channel count in its shape
    or its value, and graph outputs keep their shapes: the node's channels stay."""
    for o in node.output:
        if o in outputs and ctx.map(o) is None:
            for t in node.input:
                m = ctx.map(t)
                if m is not None:
                    ctx.freeze(m.ids, f"{node.op_type} {node.name}: its output {o} is a graph output")


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
    del ctx.joins[mark[4]:]


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
    c = Couplings(class_of, n_classes, ctx.maps, ctx.slices, ctx.edits, ctx.producers, frozen, joins=ctx.joins)
    segments = [set() for _ in range(n_classes)]
    for k, (node, ids) in enumerate(ctx.segments):
        for cls in np.unique(class_of[ids]).tolist():
            segments[cls].add(k)
    c.segments = segments
    c.groups, c.group_of = _groups(c, segments)
    return c


def _groups(c: Couplings, segments):
    """Group classes by (feed-in layers, feed-out layers, the Split/Slice parts they are in,
    frozen reason, branch of an independent residual sum). Sums of independent branches
    are never chosen: they follow their branches."""
    derivation = Derivation(c)
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
        reason = c.frozen.get(cls) or (DERIVED_REASON if cls in derivation.inputs else None)
        key = (tuple(sorted(members[FEED_IN][cls])), tuple(sorted(members[FEED_OUT][cls])),
               reason, tuple(sorted(segments[cls])), cls in derivation.operands)
        by_key.setdefault(key, []).append(cls)
    groups, group_of = [], np.zeros(c.n_classes, dtype=np.int64)
    for i, ((fin, fout, reason, _, branch), classes) in enumerate(by_key.items()):
        cw = sorted(set().union(*(members[CHANNELWISE][k] for k in classes)))
        groups.append(Group(i, np.asarray(classes, dtype=np.int64), list(fin), list(fout), cw, reason, branch))
        group_of[classes] = i
    return groups, group_of
