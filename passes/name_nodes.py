"""Give unnamed or duplicate-named nodes a unique name: the analysis, plans and reports key
on node names."""
from __future__ import annotations


def run(model, step) -> None:
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            base = n.name or f"{n.op_type}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            n.name = name
        seen.add(n.name)
