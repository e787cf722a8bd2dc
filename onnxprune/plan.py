"""Plan: the contract between deciding and doing. Serialisable as JSON and keyed by
producer node names and channel indices, so one plan can be inspected, edited, or
applied to another export of the same network."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError


@dataclass
class Plan:
    removed: dict[str, list[int]]          # producer node -> removed output channel indices
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "removed": self.removed, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
            removed = {str(k): sorted(int(i) for i in v) for k, v in data["removed"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise OnnxPruneError(f"not a valid plan file ({type(e).__name__}: {e})") from None
        return cls(removed, data.get("meta", {}))


def plan_from_classes(couplings, removed_classes, meta=None) -> Plan:
    removed = np.zeros(couplings.n_classes, dtype=bool)
    removed[list(removed_classes)] = True
    out = {}
    for p in couplings.producers:
        idx = np.flatnonzero(removed[couplings.class_of[p.ids]])
        if len(idx):
            out[p.node] = idx.tolist()
    return Plan(out, dict(meta or {}))


def classes_from_plan(couplings, plan: Plan) -> set[int]:
    """The classes a plan removes. Naming one channel of a class removes the whole class
    (its coupled channels cannot stay); frozen channels and unknown producers are errors."""
    producers = {p.node: p for p in couplings.producers}
    classes = set()
    for node, indices in plan.removed.items():
        p = producers.get(node)
        if p is None:
            raise OnnxPruneError(f"plan names '{node}', which is not a channel producer of this model")
        bad = [i for i in indices if not 0 <= i < len(p.ids)]
        if bad:
            raise OnnxPruneError(f"plan removes channels {bad[:5]} of '{node}', which has {len(p.ids)}")
        for c in np.unique(couplings.class_of[p.ids[indices]]).tolist():
            if c in couplings.frozen:
                raise OnnxPruneError(f"plan removes a frozen channel of '{node}': {couplings.frozen[c]}")
            classes.add(c)
    return classes
