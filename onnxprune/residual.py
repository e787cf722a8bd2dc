"""Independent residual branches (`--residual independent`, indexation-addition,
docs/methods.md §2).

With the default `coupled`, a residual Add unifies its operands' channels: a stream channel
goes only when every branch writing it and every layer reading it lose it. With
`independent`, the analysis records each such sum as a `Join` (onnxprune/channels.py):
every operand keeps its own channel classes, and the sum's output channel k is a *derived*
class, removed exactly when every operand has removed its channel k (and it is not frozen).
Derived classes are never chosen by the allocator; they follow from what it chose:

  * `Derivation.follow` / `closure`: the derived classes a set of removals takes along
    (cost tracking, kept masks, the report);
  * `scattered`: per join, the operands that lack some of the output's kept channels and the
    index that places each of their channels in the output's width (the rewrite pass
    passes/scatter_residual.py turns it into Pad + Gather; the oracle masks those operands);
  * `propagate_scores`: a criterion that scores channels at the layers reading them gives
    derived classes those scores; each operand's channel inherits its share.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .channels import FEED_OUT

RESIDUAL = ("coupled", "independent")
DERIVED_REASON = "sum of independent residual branches: kept while any branch keeps the channel"


class Derivation:
    """Which classes each derived class waits for, and which derived classes each class
    feeds. Built from a Couplings (its joins, class map and frozen classes)."""

    def __init__(self, couplings):
        self.inputs: dict[int, set[int]] = {}
        for join in couplings.joins:
            out = couplings.class_of[join.ids]
            for _, cmap in join.operands:
                for d, c in zip(out.tolist(), couplings.class_of[cmap.ids].tolist()):
                    self.inputs.setdefault(d, set()).add(c)
        self.users: dict[int, list[int]] = {}
        for d, sources in self.inputs.items():
            for c in sources:
                self.users.setdefault(c, []).append(d)
        self.pinned = set(couplings.frozen)
        self.operands = set().union(*self.inputs.values()) if self.inputs else set()

    def follow(self, removed, added) -> list[int]:
        """Derived classes that removing `added` on top of `removed` removes too, upstream
        sums first."""
        if not self.users:
            return []
        added = list(added)
        extra = set(added)   # `removed` is not copied: the cost tracker calls this per class

        def gone(c):
            return c in extra or c in removed

        new, stack = [], list(added)
        while stack:
            for d in self.users.get(stack.pop(), ()):
                if not gone(d) and d not in self.pinned and all(gone(c) for c in self.inputs[d]):
                    extra.add(d)
                    new.append(d)
                    stack.append(d)
        return new

    def closure(self, removed) -> set[int]:
        removed = set(removed)
        return removed | set(self.follow(set(), removed))


@dataclass
class Scatter:
    """Operand `input` of sum `node` lacks some of the output's kept channels: `index[k]` is
    the operand channel (after slicing) that lands at kept output channel k, or the
    operand's width — a zero channel appended to it — where the operand has none. `keep`
    marks the operand's kept channels (before slicing)."""
    node: str
    input: int
    axis: int
    index: np.ndarray
    keep: np.ndarray


def scattered(couplings, kept) -> list[Scatter]:
    out = []
    for join in couplings.joins:
        keep_out = kept(join.ids)
        for i, cmap in join.operands:
            keep = kept(cmap.ids)
            if np.array_equal(keep, keep_out):
                continue  # the operand has exactly the output's channels: a plain Add
            if (keep & ~keep_out).any():
                raise AssertionError(f"{join.node}: operand {i} keeps a channel its sum removed")
            position = np.cumsum(keep) - 1
            index = np.where(keep, position, int(keep.sum()))[keep_out]
            out.append(Scatter(join.node, i, cmap.axis, index.astype(np.int64), keep))
    return out


def changed_readers(couplings, kept) -> set[str]:
    """Layers that read kept channels of a sum that lost a branch's contribution (here or in
    an earlier sum of the stream): their inputs differ from the original's although none
    was removed, so the recovery passes refit them too."""
    if not couplings.joins:
        return set()
    one_id = np.zeros(couplings.n_classes, dtype=np.int64)
    one_id[couplings.class_of] = np.arange(len(couplings.class_of))
    gone = ~kept(one_id)
    changed: set[int] = set()
    grew = True
    while grew:   # a stream's later sums inherit the change of its earlier ones
        grew = False
        for cls, sources in couplings.derivation.inputs.items():
            if cls not in changed and not gone[cls] and any(gone[c] or c in changed for c in sources):
                changed.add(cls)
                grew = True
    return {s.node for s in couplings.slices if s.role == FEED_OUT
            and changed.intersection(couplings.class_of[s.ids].tolist())}


def gather_note(couplings, kept) -> str | None:
    """One line for the report: how many residual sums read a branch through a gather."""
    if not couplings.joins:
        return None
    with_gather = {s.node for s in scattered(couplings, kept)}
    return (f"residual independent: {len(with_gather)} of {len(couplings.joins)} residual sum(s) "
            f"scatter a branch into the union of their branches' channels (Pad + Gather)")


def propagate_scores(model, couplings, values: np.ndarray) -> np.ndarray:
    """Scores of a criterion that measures what the layers reading a channel lose: an
    operand's channel gets, on top of its own, its share of every sum it feeds (downstream
    sums first, so a share of a stream includes what the stream's later readers lose).
    The share is the operand's predicted variance over the sum of its operands' (the
    BatchNormalization statistics, onnxprune/moments.py); equal shares without them."""
    if not couplings.joins:
        return values
    from .moments import predict
    estimates = predict(model)
    nodes = model.index().nodes
    total = np.asarray(values, dtype=np.float64).copy()
    for join in reversed(couplings.joins):
        node = nodes[join.node]
        out_classes = couplings.class_of[join.ids]
        weights = [_variance(estimates, node.input[i], len(join.ids)) for i, _ in join.operands]
        if any(w is None for w in weights):
            weights = [np.ones(len(join.ids))] * len(weights)
        norm = np.maximum(np.sum(weights, axis=0), 1e-30)
        for (_, cmap), w in zip(join.operands, weights):
            np.add.at(total, couplings.class_of[cmap.ids], (w / norm) * total[out_classes])
    return total


def _variance(estimates, tensor: str, width: int):
    if tensor not in estimates or len(estimates[tensor][1]) != width:
        return None
    return np.maximum(np.asarray(estimates[tensor][1], dtype=np.float64), 0.0)
