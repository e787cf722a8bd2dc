"""Report: what was asked and what was obtained, as a table and as JSON."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .cost import cost

# Version of the JSON layout of `Report.to_dict` (`--report`): raised when a key changes
# meaning or goes away, so that tools reading reports can tell.
SCHEMA_VERSION = 1


def model_stats(model) -> dict:
    c = cost(model)
    size = model.graph.ByteSize() + sum(a.nbytes for a in model.inits.values())
    return {"params": c.params, "macs": c.macs, "bytes": int(size),
            "ops": dict(Counter(n.op_type for n in model.graph.node))}


def group_table(couplings, removed_classes) -> list[dict]:
    removed = np.zeros(couplings.n_classes, dtype=bool)
    removed[list(couplings.closure(removed_classes))] = True
    kept_indices: dict[int, dict[str, list[int]]] = {}
    for p in couplings.producers:
        cls = couplings.class_of[p.ids]
        for gi in np.unique(couplings.group_of[cls]).tolist():
            idx = np.flatnonzero((couplings.group_of[cls] == gi) & ~removed[cls])
            kept_indices.setdefault(gi, {})[p.node] = idx.tolist()
    rows = []
    for g in couplings.groups:
        rows.append({"group": g.index, "channels_before": g.width,
                     "channels_after": int(g.width - removed[g.classes].sum()),
                     "feed_in": g.feed_in, "feed_out": g.feed_out, "channelwise": g.channelwise,
                     "frozen": g.frozen, "kept": kept_indices.get(g.index, {})})
    return rows


@dataclass
class Report:
    options: dict
    before: dict
    after: dict
    groups: list[dict]
    timings: dict = field(default_factory=dict)
    oracle: object = None        # verify.OracleResult when --verify ran
    notes: list[str] = field(default_factory=list)
    plan: object = None          # the Plan that was applied
    tolerance: float = 1e-4      # oracle tolerance the caller asked for
    # with calibration data (docs/methods.md §5): fidelity to the original on held-out
    # samples, after recovery and, when recovery ran, before it; the data and the methods
    fidelity: object = None            # fidelity.Fidelity
    fidelity_unrecovered: object = None
    recovery: dict = field(default_factory=dict)
    # `onnxprune shrink` (onnxprune/shrink.py): zeroed filters against the real compression
    shrink: dict = field(default_factory=dict)

    def __post_init__(self):
        # what the oracle could not compare (a batch size the original does not run at) is a note too
        self.notes = list(self.notes) + list(getattr(self.oracle, "notes", []))

    @property
    def oracle_max_rel_diff(self) -> float | None:
        return None if self.oracle is None else self.oracle.max_rel_diff

    @property
    def oracle_passed(self) -> bool | None:
        return None if self.oracle is None else self.oracle.passed(self.tolerance)

    @property
    def frozen_groups(self) -> list[dict]:
        return [g for g in self.groups if g["frozen"]]

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "options": self.options, "before": self.before, "after": self.after,
                "timings_s": self.timings, "oracle_max_rel_diff": self.oracle_max_rel_diff,
                "oracle_noise": None if self.oracle is None else self.oracle.noise,
                "oracle_threshold": None if self.oracle is None else self.oracle.threshold(self.tolerance),
                "oracle_dtype": None if self.oracle is None else self.oracle.dtype,
                "oracle_batches": None if self.oracle is None else list(self.oracle.batches),
                "oracle_passed": self.oracle_passed,
                "notes": self.notes,
                "frozen": [{"group": g["group"], "channels": g["channels_before"], "reason": g["frozen"],
                            "feed_in": g["feed_in"]} for g in self.frozen_groups],
                "recovery": self.recovery or None,
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
                "fidelity_without_recovery": None if self.fidelity_unrecovered is None
                else self.fidelity_unrecovered.to_dict(),
                **({"shrink": self.shrink} if self.shrink else {}),
                "groups": self.groups}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        b, a = self.before, self.after
        rows = [("Model", "Original", "Pruned")]
        ops = sorted(set(b["ops"]) | set(a["ops"]))
        for op in ops:
            rows.append((op, str(b["ops"].get(op, 0)), str(a["ops"].get(op, 0))))
        rows += [("Parameters", f"{b['params']:,}", f"{a['params']:,} ({_pct(a['params'], b['params'])})"),
                 ("MACs", f"{b['macs']:,}", f"{a['macs']:,} ({_pct(a['macs'], b['macs'])})"),
                 ("Model size", _size(b["bytes"]), f"{_size(a['bytes'])} ({_pct(a['bytes'], b['bytes'])})")]
        for metric, key in (("macs", "target_macs"), ("params", "target_params")):
            if self.options.get(key) is not None:
                rows.append((f"Target {metric}", f"{self.options[key]:g}",
                             f"achieved {a[metric] / max(b[metric], 1):.4f}"))
        prunable = [g for g in self.groups if not g["frozen"]]
        rows += [("Groups", f"{len(self.groups)} ({len(self.frozen_groups)} frozen)", ""),
                 ("Prunable channels", str(sum(g["channels_before"] for g in prunable)),
                  str(sum(g["channels_after"] for g in prunable)))]
        rows += _shrink_rows(self.shrink)
        if self.oracle is not None:
            rows.append(("Oracle max rel. diff", f"noise {self.oracle.noise:.1e}",
                         f"{self.oracle.max_rel_diff:.2e} ({'pass' if self.oracle_passed else 'FAIL'})"))
        if self.fidelity_unrecovered is not None:
            rows.append(("Without recovery", "", ""))
            rows += [(f"  {m}", o, p) for m, o, p in self.fidelity_unrecovered.rows()[1:]]
        if self.fidelity is not None:
            if self.fidelity_unrecovered is not None:
                rows.append((f"With recovery ({', '.join(self.recovery.get('methods', []))})", "", ""))
            rows += [(f"  {m}" if self.fidelity_unrecovered is not None else m, o, p)
                     for m, o, p in self.fidelity.rows()[1:]]
        rows.append(("Pass time", "", f"{self.timings.get('total', 0):.2f} s"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        out = [line]
        for k, r in enumerate(rows):
            out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
            if k in (0, len(ops)):  # rule under the header and under the op counts
                out.append(line)
        out.append(line)
        return "\n".join(out)


@dataclass
class PlanInfo:
    """What `onnxprune.plan` decided, before any rewrite: the options, the original model's
    stats, per group the channels before and after, notes (target reached, groups kept
    whole by rounding) and stage timings."""
    options: dict
    before: dict
    groups: list[dict]
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "options": self.options, "before": self.before,
                "timings_s": self.timings, "notes": self.notes, "groups": self.groups}


def _shrink_rows(s: dict) -> list[tuple[str, str, str]]:
    """The masked fraction next to the real compression (what `shrink` obtained)."""
    if not s:
        return []
    return [("Zeroed filters", f"{s['filters_zeroed']} of {s['filters']}", f"{100 * s['zeroed_fraction']:.1f}%"),
            ("Params kept", f"predicted {s['predicted_kept_fraction']:.3f}", f"real {s['params_kept_fraction']:.3f}"),
            ("MACs kept", f"predicted {s['predicted_kept_fraction']:.3f}", f"real {s['macs_kept_fraction']:.3f}"),
            ("Classes removed", "", f"{s['classes_removed']} (dead {s['classes_removed_dead']}, "
                                    f"unused {s['classes_removed_unused']})"),
            ("Kept: constant not foldable", "", str(s["classes_kept_inexact"])),
            ("Max rel. diff to input", "", f"{s['max_rel_diff_to_input']:.2e}")]


def _pct(new, old) -> str:
    return f"{100.0 * new / old:.1f}%" if old else "-"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
