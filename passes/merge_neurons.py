"""Neuron merging (Kim et al., NeurIPS 2020; docs/methods.md §5): data-free compensation
for removed filters that are near copies of kept ones.

Take a producer layer (Conv with group 1, or Gemm) whose output reaches dense consumers
through nothing but an optional BatchNormalization right after it and channelwise
positively homogeneous operators (Relu, LeakyRelu, Clip(min=0) without a max, MaxPool,
AveragePool and their global forms, Flatten, Concat, Dropout, Identity). Its channel c
has the effective affine filter

    v_c = [a_c·w_c ; a_c·(b_c − μ_c) + β_c],   a_c = γ_c / sqrt(σ²_c + ε)

(a_c = 1, μ_c = β_c = 0 without BatchNormalization, as in a folded export), so its
pre-activation is z_c = v_c · [x ; 1]. If a removed channel r has v_r = s·v_k for a kept
channel k and s > 0, then act(z_r) = s·act(z_k) after every operator above, and the
consumer's weight for r folds into k's, exactly:

    W_next[:, k] += s · W_next[:, r]      (per kernel tap; per spatial position after Flatten)

Where no nonlinear operator follows (only linear ones), any real s works. For each removed
channel the kept channel of the same producer with the highest cosine similarity of the
effective filters (|cosine| where s may be negative) is chosen; it is merged when the
cosine is at least THRESHOLD, with s the projection ⟨v_r, v_k⟩ / ‖v_k‖². Needs no data and
no statistics, so it works on BN-folded exports too.

Producers whose channels join others (residual sums: a class with several producers),
pass through operators with per-channel parameters other than the BatchNormalization
right after the producer (a depthwise conv, a BN after a Concat), through anything not
listed, or reach a graph output, are skipped; the note counts them.

A removed channel's constant (its value with the filter zeroed) was folded into the
consumer's bias by fold_removed_constants; a merged channel is no longer constant, so
that part of the fold is taken back out (and out of `step.folds`, which compensate_means
reads). `step.merged` records, per consumer, the merged input positions, so the passes
after this one can leave them out of what they count as removed.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnxprune.channels import FEED_OUT
from onnxprune.graph import attr
from onnxprune.layer_data import set_weight, set_weight_matrix, weight_matrix
from onnxprune.passes.fold_removed_constants import add_to_bias

# Merge when the cosine similarity of the effective filters reaches this (measured on the
# digits models: benchmarks/accuracy_merge.py, benchmarks/RESULTS_accuracy.md).
THRESHOLD = 0.1

HOMOGENEOUS = {"Relu", "LeakyRelu", "MaxPool", "GlobalMaxPool"}      # f(s·x) = s·f(x), s > 0
LINEAR = {"AveragePool", "GlobalAveragePool", "Flatten", "Concat", "Dropout", "Identity"}
DENSE = ("Conv", "Gemm")


def run(model, step) -> None:
    original = step.original
    onodes = original.index().nodes
    couplings = step.couplings
    sizes = couplings.class_sizes()
    feed_out = {}
    for s in couplings.slices:
        if s.role == FEED_OUT:
            feed_out.setdefault(s.node, []).append(s)
    merged_total, below, skipped, eligible = 0, 0, {}, 0
    merges_by_consumer: dict[str, list] = {}
    for p in couplings.producers:
        kept = step.kept(p.ids)
        if kept.all() or not kept.any():
            continue
        node = onodes.get(p.node)
        reason = _producer_problem(node, original, p, sizes, couplings)
        walk = None
        if reason is None:
            walk, reason = _walk(original, node)
        if reason is None and any(c.name not in feed_out for c in walk["consumers"]):
            reason = "a consumer reads it without a sliced weight"
        if reason is not None:
            skipped.setdefault(reason, set()).update(couplings.class_of[p.ids[~kept]].tolist())
            continue
        eligible += 1
        v = _effective_filters(original, node, walk["bn"])
        pairs = _choose(v, kept, walk["positive"])
        below += int((~kept).sum()) - len(pairs)
        if not pairs:
            continue
        merged_total += len(pairs)
        const = _constants(v, walk)
        for consumer in walk["consumers"]:
            merges_by_consumer.setdefault(consumer.name, []).extend(
                (p.ids[r], p.ids[k], scale, const[r]) for r, k, scale in pairs)
    for name, merges in merges_by_consumer.items():
        _apply(model, step, onodes[name], feed_out[name], merges)
    model.touch()
    n_skipped = len(set().union(*skipped.values())) if skipped else 0
    skipped_text = "; ".join(f"{len(c)} {why}" for why, c in sorted(skipped.items(), key=lambda kv: -len(kv[1])))
    step.notes.append(
        f"merge_neurons: {merged_total} removed channel(s) merged into kept ones (cosine >= {THRESHOLD}), "
        f"{below} left (no kept channel similar enough), in {eligible} layer(s) that qualify; "
        f"{n_skipped} removed class(es) skipped" + (f" ({skipped_text})" if skipped else ""))


# -- which producers qualify ------------------------------------------------------------
def _producer_problem(node, original, p, sizes, couplings) -> str | None:
    if node is None or node.op_type not in DENSE:
        return "not a Conv/Gemm producer"
    if len(node.input) < 2 or node.input[1] not in original.inits:
        return "weight not constant"
    if node.op_type == "Conv" and attr(node, "group", 1) != 1:
        return "grouped producer"
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return "Gemm with transA"
    if p.output != node.output[0]:
        return "not the layer's output"
    if (sizes[couplings.class_of[p.ids]] != 1).any():
        return "channels shared with other producers (residual stream)"
    return None


def _walk(original, producer):
    """Follow the producer's output to its dense consumers through the allowed operators.
    Returns ({"bn", "positive", "consumers", "activations"}, None) or (None, reason)."""
    index = original.index()
    outputs = set(original.output_names)
    out = {"bn": None, "positive": False, "consumers": [], "activations": []}
    start = producer.output[0]
    users = index.consumers.get(start, [])
    if len(users) == 1 and users[0][0].op_type == "BatchNormalization" and users[0][1] == 0:
        bn = users[0][0]
        if any(t not in original.inits for t in bn.input[1:5]) or any(o for o in bn.output[1:]):
            return None, "BatchNormalization not in inference form"
        out["bn"] = bn
        start = bn.output[0]
    stack, seen = [start], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in outputs:
            return None, "reaches a graph output"
        for n, i in index.consumers.get(t, []):
            op = n.op_type
            if op in DENSE:
                if i != 0 or len(n.input) < 2 or n.input[1] not in original.inits:
                    return None, f"read by {op} other than as its data input"
                if op == "Conv" and attr(n, "group", 1) != 1:
                    return None, "read by a grouped (depthwise) Conv"
                if op == "Gemm" and attr(n, "transA", 0):
                    return None, "read by a Gemm with transA"
                if n.name not in {c.name for c in out["consumers"]}:
                    out["consumers"].append(n)
                continue
            if op == "Clip" and i == 0 and _is_relu_clip(original, n):
                out["positive"] = True
                out["activations"].append(n)
            elif op in HOMOGENEOUS and i == 0:
                out["positive"] = True
                if op in ("Relu", "LeakyRelu"):
                    out["activations"].append(n)
            elif op in LINEAR and (i == 0 or op == "Concat"):
                if op == "Dropout" and len(n.input) > 2 and n.input[2]:
                    return None, "Dropout with a training-mode input"
            else:
                return None, f"passes through {op}"
            if op in ("MaxPool",) and len(n.output) > 1 and n.output[1]:
                return None, "MaxPool with indices"
            stack.append(n.output[0])
    if not out["consumers"]:
        return None, "no dense consumer"
    return out, None


def _is_relu_clip(original, node) -> bool:
    lo = node.input[1] if len(node.input) > 1 else ""
    hi = node.input[2] if len(node.input) > 2 else ""
    if hi or attr(node, "max") is not None:
        return False
    if lo:
        v = original.inits.get(lo)
        return v is not None and v.size == 1 and float(v) == 0.0
    return attr(node, "min") == 0.0


# -- which channels merge -----------------------------------------------------------------
def _effective_filters(original, node, bn) -> np.ndarray:
    """(channels, inputs + 1): each channel's weights and bias as the activation sees them."""
    w = original.inits[node.input[1]].astype(np.float64)
    if node.op_type == "Conv":
        mat = w.reshape(w.shape[0], -1)
    else:
        mat = weight_matrix(node, w).T
    b = np.zeros(mat.shape[0])
    if len(node.input) > 2 and node.input[2]:
        b = np.broadcast_to(original.inits[node.input[2]].astype(np.float64).reshape(-1), (mat.shape[0],))
        if node.op_type == "Gemm":
            b = b * attr(node, "beta", 1.0)
    if bn is not None:
        gamma, beta, mean, var = (original.inits[t].astype(np.float64) for t in bn.input[1:5])
        a = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        mat, b = a[:, None] * mat, a * (b - mean) + beta
    return np.concatenate([mat, b[:, None]], axis=1)


def _choose(v, kept, positive: bool) -> list[tuple[int, int, float]]:
    """(removed, kept, s) for every removed channel whose best kept match passes THRESHOLD."""
    norms = np.linalg.norm(v, axis=1)
    k_idx, r_idx = np.flatnonzero(kept), np.flatnonzero(~kept)
    vk = v[k_idx]
    ok = norms[k_idx] > 0
    out = []
    for r in r_idx:
        if norms[r] == 0:
            continue   # a zero filter is a constant: the fold already handles it
        dots = vk @ v[r]
        cos = np.where(ok, dots / np.maximum(norms[k_idx] * norms[r], 1e-300), 0.0)
        score = cos if positive else np.abs(cos)
        j = int(np.argmax(score))
        if score[j] >= THRESHOLD:
            k = int(k_idx[j])
            out.append((int(r), k, float(dots[j] / norms[k] ** 2)))
    return out


def _constants(v, walk) -> np.ndarray:
    """Each channel's value with its filter zeroed (what the fold pass folded): its
    effective bias through the activations; pools keep a constant."""
    c = v[:, -1].copy()
    for n in walk["activations"]:
        if n.op_type == "LeakyRelu":
            c = np.where(c >= 0, c, attr(n, "alpha", 0.01) * c)
        else:
            c = np.maximum(c, 0.0)
    return c


# -- the consumer edit --------------------------------------------------------------------
def _apply(model, step, onode, slices, merges) -> None:
    """W[:, k] += s·W[:, r] on the pruned consumer, per occurrence of the channel in the
    weight's input axis (kernel taps; spatial positions after Flatten), matched in order."""
    node = model.index().nodes[onode.name]
    (use,) = [s for s in slices if s.input == 1]
    ids = use.ids
    keep_pos = step.kept(ids)
    slim_row = np.cumsum(keep_pos) - 1
    w_orig = step.original.inits[onode.input[1]].astype(np.float64)
    m_orig = weight_matrix(onode, w_orig)          # (inputs read, outputs), original indexing
    out_ids = {p.node: p.ids for p in step.couplings.producers}
    kept_out = step.kept(out_ids[onode.name]) if onode.name in out_ids else np.ones(m_orig.shape[1], bool)
    w = model.inits[node.input[1]].astype(np.float64)
    m = weight_matrix(node, w)
    folded = np.zeros(m_orig.shape[1])
    record = step.merged.setdefault(onode.name, {})
    for id_r, id_k, scale, const in merges:
        pos_r, pos_k = np.flatnonzero(ids == id_r), np.flatnonzero(ids == id_k)
        assert len(pos_r) == len(pos_k) and keep_pos[pos_k].all() and not keep_pos[pos_r].any()
        rows_r = _rows(onode, w_orig, len(ids), pos_r)
        rows_k = _rows(onode, w_orig, len(ids), pos_k)
        slim_k = _rows(onode, w_orig, len(ids), pos_k, slim_row)
        m[slim_k] += scale * m_orig[rows_r][:, kept_out]
        folded += const * m_orig[rows_r].sum(axis=0)
        for a, b in zip(rows_r, rows_k):
            record[int(a)] = (int(b), scale)
    set_weight(model, node, set_weight_matrix(node, w, 0, m))
    fold = step.folds.get(onode.name)
    if fold is not None:   # the merged channels' constants are no longer in the consumer's input
        step.folds[onode.name] = replace(fold, delta=fold.delta - folded)
        add_to_bias(model, node, -folded[kept_out], "merged")


def _rows(node, w, n_positions, positions, row_of=None) -> np.ndarray:
    """Weight-matrix rows of the given input positions (all kernel taps of a Conv channel);
    with `row_of`, in the pruned weight's numbering."""
    pos = positions if row_of is None else row_of[positions]
    if node.op_type != "Conv":
        return pos
    taps = int(np.prod(w.shape[2:]))
    return (pos[:, None] * taps + np.arange(taps)[None, :]).reshape(-1)
