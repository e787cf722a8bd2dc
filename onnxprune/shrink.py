"""Shrink: turn a model whose pruned channels are only zeroed into a smaller one (issue 11,
docs/methods.md §2).

    load -> analyze -> liveness -> constants -> rewrite -> verify

Training-time pruners (network slimming, soft filter pruning, NNCF, ...) export their
pruned filters as zeros: the file is as big and as slow as before. Here the channels to
remove are chosen from the weights, not from scores: a channel class goes when, at every
tensor it appears in, it is dead (constant whatever the input) or unused (no output
depends on it) — onnxprune/liveness.py. The rewrite is prune's.

A dead channel still carries a constant (a bias; a BN shift through the activation,
ReLU(β); sigmoid(0) = 0.5). Its value is read from the input model itself, where it is
constant already, and folded into the consumers' biases by
passes/fold_removed_constants.py. Where that fold would not be exact (a zero-padded
convolution sees the constant only away from the border; a MatMul has no bias), the
classes that carry a non-zero constant there are kept, so the shrunk model computes what
the input computes; `approximate=True` removes them as well, folds the interior value,
and the report counts the approximate folds.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from . import passes
from .api import checked_in_memory, raise_if_input_fails, rewrite, run_pruned
from .arguments import (check_flag, check_input_shapes, check_patterns, check_residual, check_source,
                        check_tolerance, integer)
from .channels import FEED_OUT
from .couplings import analyze
from .errors import OnnxPruneError
from .liveness import liveness
from .load import load
from .ops import layer_of, spec_of
from .plan import plan_from_classes
from .progress import stage
from .report import Report, group_table, model_stats
from .runtime import model_session, random_inputs, run_named
from .verify import check, compare_models

fold_pass = passes.fold_removed_constants


def shrink(source: str | os.PathLike | onnx.ModelProto, *, tolerance: float = 0.0, approximate: bool = False,
           verify: bool = False, exclude: Sequence[str] = (),
           input_shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
           residual: str = "coupled") -> tuple[onnx.ModelProto, Report]:
    """Remove the structurally dead and unused channels of a model (a path or a ModelProto,
    never modified). Returns (smaller ModelProto, Report); `report.shrink` has the zeroed
    filters against the real remaining parameters and MACs.

      tolerance: weights (and BN scales, constant factors) with |w| <= tolerance count as zero,
        in the output too.
      approximate: also remove dead channels whose constant cannot be folded exactly (their
        interior value is folded); by default they stay, and the output equals the input's.
      verify: run the masking oracle and, where nothing was approximated, compare with the
        input itself (report.oracle_passed tells the result).
      residual: "independent" honours masks that differ across the branches of a residual Add
        (each branch loses its own dead channels; the sum keeps a channel any branch keeps,
        read through Pad + Gather); "coupled" (default) removes a stream channel only where
        every branch lost it.
      exclude, input_shapes, seed: as for `onnxprune.prune`."""
    slim, report = shrink_model(source, tolerance=tolerance, approximate=approximate, verify=verify, residual=residual,
                                exclude=exclude, input_shapes=input_shapes, seed=seed)
    proto = slim.to_proto()
    if checked_in_memory(slim):
        check(proto)
    return proto, report


def shrink_model(source, *, tolerance: float = 0.0, approximate: bool = False, verify: bool = False,
                 exclude: Sequence[str] = (), input_shapes=None, seed: int = 0, check_output: bool = True,
                 residual: str = "coupled"):
    """`shrink`, returning the smaller `Model` instead of a proto (`check_output=False`
    leaves the ONNX checker to `io.save_model`, as `prune_model` does)."""
    tolerance = check_tolerance(tolerance)
    residual = check_residual(residual)
    for name, flag in (("approximate", approximate), ("verify", verify), ("check_output", check_output)):
        check_flag(name, flag)
    seed = integer("--seed", seed, least=0)
    input_shapes, exclude = check_input_shapes(input_shapes), check_patterns(exclude)
    check_source(source)
    timings: dict = {}
    start = time.perf_counter()
    with stage("load", timings):
        original = load(source, input_shapes)
        model = _snapped(original, tolerance) if tolerance else original
    with stage("analyze", timings):
        couplings = analyze(model, exclude, residual)
        live = liveness(model, couplings, tolerance)
    with stage("fold", timings):
        removed, folds, approximated, kept_back = _choose(model, couplings, live, approximate, seed)
    with stage("rewrite", timings):
        slim = rewrite(model, couplings, removed, folds)
    exact = tolerance == 0 and not approximated
    with stage("verify", timings):
        if check_output and checked_in_memory(slim):
            check(slim.to_proto().SerializeToString())
        oracle = run_pruned(model, couplings, removed, slim, folds, verify, seed)
        to_input = compare_models(original, slim, seed=seed)
        if oracle is not None and exact:   # nothing approximated: the input itself is the reference
            oracle.max_rel_diff = max(oracle.max_rel_diff, to_input)
    timings["total"] = round(time.perf_counter() - start, 4)
    options = {"command": "shrink", "tolerance": tolerance, "approximate": approximate, "seed": seed,
               "residual": residual,
               "exclude": list(exclude), "input_shapes": {k: list(v) for k, v in model.input_shapes.items()}}
    groups = group_table(couplings, removed)
    zeroed = _zeroed_classes(model, couplings, live)
    for row, g in zip(groups, couplings.groups):
        row["zeroed"] = int(zeroed[g.classes].sum())
    notes = list(model.notes) + _fold_note(folds, approximated) + _notes(couplings, zeroed, removed, kept_back)
    report = Report(options, model_stats(model), model_stats(slim), groups, timings, oracle, notes,
                    plan_from_classes(couplings, removed, options))
    report.shrink = _summary(model, couplings, live, removed, kept_back, report, to_input, exact)
    return slim, report


def _snapped(model, tolerance: float):
    """The model with every layer weight and constant factor (BN scale, x * c) of
    |w| <= tolerance set to zero: the masked model that shrink then makes exact. Its dead
    channels are exactly constant, so their values can be read and checked as usual."""
    out = model.copy()
    names = set()
    for node in out.graph.node:
        layer, spec = layer_of(node), spec_of(node)
        if layer is not None and len(node.input) > layer.weight:
            names.add(node.input[layer.weight])
        factor = spec.factor(node, out) if spec is not None and spec.factor is not None else None
        if factor is not None:   # the factor is a view of one of the node's initializers
            names.update(t for t in node.input if t in out.inits and np.shares_memory(out.inits[t], factor))
    for name in names & set(out.inits):
        a = out.inits[name]
        if a.dtype.kind == "f":
            out.inits[name] = np.where(np.abs(a) <= tolerance, np.zeros((), a.dtype), a)
    return out


def _choose(model, couplings, live, approximate: bool, seed: int):
    """(classes to remove, their folds, whether a constant was approximated, classes kept
    back): the removable classes, less those whose 'dead' channels vary on random inputs
    (the weights said constant: a measurement wins) and, unless `approximate`, those
    carrying a non-zero constant into a consumer that cannot take it exactly."""
    removed = set(np.flatnonzero(live.removable(couplings)).tolist())
    removed -= set(couplings.derivation.inputs)   # sums of independent branches follow their branches
    kept_back = {"varying": set(), "inexact": set(), "last": set()}
    for g in couplings.groups:   # a layer cannot be left without output channels
        if g.width and removed.issuperset(g.classes.tolist()):
            kept_back["last"].add(int(g.classes[0]))
    removed -= kept_back["last"]
    runs = _input_runs(model, couplings, removed, seed)
    while True:
        values, varying = _constants(couplings, live, removed, runs)
        if varying:
            removed -= varying
            kept_back["varying"] |= varying
            continue
        folds, stats = fold_pass.plan_folds(model, couplings, removed, "approx", seed, values)
        inexact = _carried_where_inexact(model, couplings, removed, values, folds) \
            | _carried_into_kept_sums(model, couplings, removed, runs)
        if approximate or not inexact:
            return removed, folds, bool(inexact), kept_back
        removed -= inexact
        kept_back["inexact"] |= inexact


def _carried_into_kept_sums(model, couplings, removed, runs) -> set:
    """Branch classes (`--residual independent`) removed while their sum keeps the channel:
    the sum then loses what the branch carried, exact only where that is zero."""
    closure = couplings.closure(removed)
    nodes = model.index().nodes
    carried = set()
    for join in couplings.joins:
        kept_sum = ~np.isin(couplings.class_of[join.ids], list(closure))
        for i, cmap in join.operands:
            classes = couplings.class_of[cmap.ids]
            lost = np.isin(classes, list(closure)) & kept_sum   # a branch may itself be a removed sum
            if lost.any():
                nonzero = np.zeros(len(lost), dtype=bool)
                for a in runs[nodes[join.node].input[i]]:
                    nonzero |= np.moveaxis(np.asarray(a), cmap.axis, 0).reshape(len(lost), -1).any(axis=1)
                carried |= set(np.unique(classes[lost & nonzero]).tolist())
    return _chosen(couplings, carried) & removed


def _readers(model, couplings, removed):
    """{feed-out layer: its input} for the layers that read channels of `removed`."""
    kept = couplings.kept_fn(removed)
    nodes = model.index().nodes
    return {s.node: nodes[s.node].input[0] for s in couplings.slices
            if s.role == FEED_OUT and not kept(s.ids).all() and nodes[s.node].input[0] in couplings.tensors}


def _input_runs(model, couplings, removed, seed):
    """The inputs of the layers reading removable channels, in the input model, on two
    random inputs (drawn as the fold pass draws them)."""
    wanted = sorted(set(_readers(model, couplings, removed).values())
                    | {model.index().nodes[j.node].input[i] for j in couplings.joins for i, _ in j.operands})
    if not wanted:
        return {}
    try:
        sess = model_session(model, optimize="basic", outputs=wanted)
        rng = np.random.default_rng(seed + 1)
        runs = [run_named(sess, random_inputs(model, rng, sess)) for _ in range(2)]
    except OnnxPruneError:
        raise
    except Exception:
        raise_if_input_fails(model, seed)
        raise
    return {t: [run[t] for run in runs] for t in wanted}


def _constants(couplings, live, removed, runs):
    """{tensor: the constant values of its removed dead channels, others zero}, and the
    classes whose supposedly dead channels varied. Removed channels that are alive there
    are unused: every used reader has zero weights on them, so they contribute nothing."""
    kept = couplings.kept_fn(removed)
    values, varying = {}, set()
    for t, samples in runs.items():
        cmap = couplings.tensors[t]
        carried = ~kept(cmap.ids) & ~live.alive[t]
        masked = [fold_pass.only_channels(a, carried, cmap.axis) for a in samples]
        moved = carried & ~fold_pass.steady_channels(masked, cmap.axis)
        varying |= set(np.unique(couplings.class_of[cmap.ids[moved]]).tolist())
        values[t] = masked[0]
    return values, varying


def _carried_where_inexact(model, couplings, removed, values, folds):
    """Classes carrying a non-zero constant into a layer whose fold is not exact (or that
    has no bias to fold into)."""
    out = set()
    for name, x in _readers(model, couplings, removed).items():
        if name in folds and folds[name].exact:
            continue
        cmap = couplings.tensors[x]
        value = np.moveaxis(values[x], cmap.axis, 0).reshape(len(cmap.ids), -1)
        carries = (value != 0).any(axis=1)
        out |= _chosen(couplings, set(np.unique(couplings.class_of[cmap.ids[carries]]).tolist())) & removed
    return out


def _chosen(couplings, classes: set) -> set:
    """The classes themselves, and for a sum of independent branches the branch classes it
    follows from (all the way down nested sums): what keeping it back means."""
    inputs, out, todo = couplings.derivation.inputs, set(), list(classes)
    while todo:
        c = todo.pop()
        if c not in out:
            out.add(c)
            todo.extend(inputs.get(c, ()))
    return out


def _layer_producers(model, couplings):
    nodes = model.index().nodes
    return [p for p in couplings.producers if p.node in nodes and layer_of(nodes[p.node]) is not None]


def _zeroed_classes(model, couplings, live) -> np.ndarray:
    """Per class: every layer channel of it is zeroed (the mask the pruner applied)."""
    has = np.zeros(couplings.n_classes, dtype=bool)
    live_filter = np.zeros(couplings.n_classes, dtype=bool)
    for p in _layer_producers(model, couplings):
        has[couplings.class_of[p.ids]] = True
        live_filter[couplings.class_of[p.ids[~live.zeroed[p.ids]]]] = True
    return has & ~live_filter


def _fold_note(folds, approximated: bool) -> list[str]:
    exact = sum(1 for f in folds.values() if f.exact)
    text = f"shrink: constants of removed channels folded exactly into {exact} consumer(s)"
    if approximated:
        text += (f", approximately into {len(folds) - exact}; consumers without a bias dropped theirs "
                 f"(--approximate: the output differs from the input's)")
    return [text] if folds else []


def _notes(couplings, zeroed, removed, kept_back) -> list[str]:
    notes = []
    if kept_back["inexact"]:
        notes.append(f"shrink: {len(kept_back['inexact'])} dead channel class(es) kept: their constant cannot "
                     f"be folded exactly into a consumer (zero padding, no bias); --approximate removes them")
    if kept_back["last"]:
        notes.append(f"shrink: {len(kept_back['last'])} group(s) are dead or unused whole; each keeps one "
                     f"channel (a layer needs one; removing whole branches is not done)")
    if kept_back["varying"]:
        notes.append(f"shrink: {len(kept_back['varying'])} channel class(es) kept: their weights are zero but "
                     f"their values vary with the input")
    reasons: dict[str, int] = {}
    for c, reason in couplings.frozen.items():
        if zeroed[c] and c not in removed:
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        notes.append(f"shrink: {n} zeroed channel class(es) kept, frozen: {reason}")
    return notes


def _summary(model, couplings, live, removed, kept_back, report, to_input: float, exact: bool) -> dict:
    """The masked fraction against the real compression (Tessier et al.: they differ, and
    not linearly)."""
    ids = [p.ids for p in _layer_producers(model, couplings)]
    filters = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    zeroed = int(live.zeroed[filters].sum())
    weights = [model.inits[n.input[layer_of(n).weight]] for n in model.graph.node
               if layer_of(n) is not None and len(n.input) > layer_of(n).weight
               and n.input[layer_of(n).weight] in model.inits]
    total_weights = sum(w.size for w in weights)
    nonzero = sum(int(np.count_nonzero(np.abs(w) > report.options["tolerance"])) for w in weights)
    dead_somewhere = set()
    for t, cmap in couplings.tensors.items():
        dead_somewhere |= set(np.unique(couplings.class_of[cmap.ids[~live.alive[t]]]).tolist())
    b, a = report.before, report.after
    fraction = zeroed / max(len(filters), 1)
    return {"filters": int(len(filters)), "filters_zeroed": zeroed, "zeroed_fraction": fraction,
            "predicted_kept_fraction": 1.0 - fraction,
            "nonzero_weight_fraction": nonzero / max(total_weights, 1),
            "params_kept_fraction": a["params"] / max(b["params"], 1),
            "macs_kept_fraction": a["macs"] / max(b["macs"], 1),
            "classes_removed": len(removed), "classes_removed_dead": len(removed & dead_somewhere),
            "classes_removed_unused": len(removed - dead_somewhere),
            "classes_kept_inexact": len(kept_back["inexact"]), "classes_kept_varying": len(kept_back["varying"]),
            "classes_kept_last_in_group": len(kept_back["last"]),
            "max_rel_diff_to_input": to_input, "exact": exact}
