"""Plan: the contract between deciding and doing. Serialisable as JSON and keyed by
producer node names and channel indices, so one plan can be inspected, edited, or
applied to another export of the same network."""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError
from .residual import DERIVED_REASON


@dataclass
class Plan:
    removed: dict[str, list[int]]          # producer node -> removed output channel indices
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "removed": self.removed, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        """Parse a plan; anything but an object {"removed": {node: [int, ...]}} is refused
        with one line (a plan read as 1 or "3" would remove channels nobody asked for)."""
        try:
            data = json.loads(text.decode("utf-8-sig") if isinstance(text, bytes) else text)
        except UnicodeDecodeError:
            raise OnnxPruneError("not a valid plan file (not UTF-8 text)") from None
        except RecursionError:
            raise OnnxPruneError("not a valid plan file (JSON nested too deeply)") from None
        except (ValueError, TypeError) as e:
            raise OnnxPruneError(f"not a valid plan file ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or "removed" not in data:
            raise OnnxPruneError('not a valid plan file (expected an object with a "removed" entry)')
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise OnnxPruneError(f'not a valid plan file ("meta" must be an object, got {_json_type(meta)})')
        return cls(checked_removed(data["removed"]), meta)


def checked_removed(removed, what: str = "plan file") -> dict[str, list[int]]:
    """`removed` as {node name: sorted channel indices}, or one line saying what is wrong."""
    if not isinstance(removed, dict):
        raise OnnxPruneError(f'not a valid {what} ("removed" must be an object {{producer node: '
                             f"[channel indices]}}, got {_json_type(removed)})")
    out = {}
    for node, indices in removed.items():
        where = f"removed[{json.dumps(node)}]" if isinstance(node, str) else f"removed key {node!r}"
        if not isinstance(node, str):
            raise OnnxPruneError(f"not a valid {what} ({where}: producer names are strings)")
        if not isinstance(indices, (list, tuple)):
            raise OnnxPruneError(f"not a valid {what} ({where} must be a list of channel indices, "
                                 f"got {_json_type(indices)})")
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if bad:  # json's true and 1.5 would silently become channel 1
            raise OnnxPruneError(f"not a valid {what} ({where} holds {bad[0]!r}; channel indices are integers)")
        out[node] = sorted(int(i) for i in indices)
    return out


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


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
            if c in couplings.derivation.inputs:
                raise OnnxPruneError(f"plan removes a channel of '{node}' that is a {DERIVED_REASON}; "
                                     "remove it from the branches")
            classes.add(c)
    return classes
