"""Why onnxprune does without networkx: its two graph algorithms, timed against networkx's
on the same inputs.

    python benchmarks/union_find_vs_networkx.py [--models resnet152] [--repeat 5]

1. Channel classes: connected components of the identity graph that the channel rules
   build (couplings._union_find, vectorised numpy) vs networkx.connected_components.
2. Dead nodes: what no graph output depends on, by one reverse scan of the topologically
   sorted node list (passes/remove_dead_nodes.dead_nodes) vs networkx ancestors of the
   outputs in a DiGraph of the nodes.
Both must give the same answer; the script checks it. Needs networkx (`pip install
networkx`; it is not a dependency of onnxprune). Records
benchmarks/results/union_find_vs_networkx.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def components_networkx(n, pairs):
    import networkx as nx
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for a, b in pairs:
        g.add_edges_from(zip(a.tolist(), b.tolist()))
    labels = np.empty(n, dtype=np.int64)
    for k, comp in enumerate(nx.connected_components(g)):
        labels[list(comp)] = k
    return labels


def dead_networkx(model):
    import networkx as nx
    g = nx.DiGraph()
    producer = {}
    for n in model.graph.node:
        g.add_node(n.name)
        for o in n.output:
            producer[o] = n.name
    for n in model.graph.node:
        for t in n.input:
            if t in producer:
                g.add_edge(producer[t], n.name)
    live = set()
    for o in model.output_names:
        if o in producer:
            live |= nx.ancestors(g, producer[o]) | {producer[o]}
    return {n.name for n in model.graph.node} - live


def same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet152"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from models import build
    from onnxprune.couplings import _union_find, trace
    from onnxprune.load import load
    from onnxprune.passes.remove_dead_nodes import dead_nodes

    rows = []
    for name in args.models:
        model = load(build(name, (1, 3, 224, 224)))
        ctx = trace(model)
        n, pairs = ctx.next_id, ctx.pairs
        t_np, ours = best(lambda: _union_find(n, pairs), args.repeat)
        t_nx, theirs = best(lambda: components_networkx(n, pairs), args.repeat)
        assert same_partition(ours, theirs)
        t_dead, dead_ours = best(lambda: dead_nodes(model), args.repeat)
        t_dead_nx, dead_theirs = best(lambda: dead_networkx(model), args.repeat)
        assert dead_ours == dead_theirs
        row = {"model": name, "nodes": len(model.graph.node), "identities": n,
               "pairs": int(sum(len(a) for a, _ in pairs)),
               "union_find_numpy_s": round(t_np, 5), "connected_components_networkx_s": round(t_nx, 5),
               "dead_nodes_scan_s": round(t_dead, 5), "dead_nodes_networkx_s": round(t_dead_nx, 5)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = os.path.join(ROOT, "benchmarks", "results", "union_find_vs_networkx.json")
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"),
                   "command": "python benchmarks/union_find_vs_networkx.py " + " ".join(sys.argv[1:]),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
