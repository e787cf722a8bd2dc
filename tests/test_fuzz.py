"""Default fuzz tier: a few hundred random CNN DAGs (tests/fuzz_graphs.py), each pruned at
ratios 0.3 and 0.5 with the oracle on. Every run must end in a valid, runnable model whose
oracle difference is <= 1e-4 (and, where every fold was exact, that matches the original
with the removed filters zeroed), or in an OnnxPruneError with a message.

Seeds are run in chunks so that a failure names its seeds; a failing model is saved under
/tmp/fuzz_failures/. Seeds that hit a known bug are listed in KNOWN_FAILURES with the bug's
name and skipped; each bug also has a minimal reproduction below: xfail(strict) while the bug
is open (an XPASS means it is fixed and its KNOWN_FAILURES entries should go), a regression
test once fuzz_graphs.KNOWN_BUGS records the fixing commit.

The long tier is benchmarks/fuzz_long.py (thousands of graphs, bigger ones).
"""
from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os

import onnx
import pytest

import fuzz_graphs as fg

N_GRAPHS = 300        # seeds 0 .. N_GRAPHS-1
CHUNK = 20
MAX_NODES = 20        # smaller than the long tier's 40: the tier must stay well under a minute

# seed -> known bug (a key of fuzz_graphs.KNOWN_BUGS). These seeds are skipped in the chunks.
# (Seed 1 hit gemm-beta-fold until commit 90d2d38 fixed it; with the fix the list is empty.)
KNOWN_FAILURES: dict[int, str] = {
}


def _chunk_seeds(first):
    return [s for s in range(first, first + CHUNK) if s not in KNOWN_FAILURES]


@pytest.fixture(scope="module")
def tier_results(request):
    """The selected chunks, computed once on every core (forked workers; each chunk is
    crash-safe). Chunks come back as {first seed: [(Generated, results), ...]}."""
    firsts = sorted({item.callspec.params["first"] for item in request.session.items
                     if getattr(item, "originalname", "") == "test_fuzz_chunk" and hasattr(item, "callspec")})
    jobs = max(1, min(os.cpu_count() or 1, len(firsts)))
    if jobs == 1 or not hasattr(os, "fork"):
        return {}
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = {f: pool.submit(fg.fuzz_seeds, _chunk_seeds(f), MAX_NODES) for f in firsts}
        out = {}
        for f, fut in futures.items():
            try:
                out[f] = fut.result()
            except Exception:  # noqa: BLE001 - a broken worker: that chunk reruns in the test
                pass
    return out


def _run_chunk(first, precomputed=None):
    failures = []
    rows = precomputed if precomputed is not None else fg.fuzz_seeds(_chunk_seeds(first), MAX_NODES)
    for gen, results in rows:
        seed = gen.seed
        for ratio, crit, o in results:
            if o.kind == "failure":
                paths = fg.save_failure(seed, ratio, crit, o, gen.proto)
                bug = fg.classify_failure(gen.proto, o)
                failures.append(f"seed {seed} ratio {ratio} {crit}: [{o.category}]"
                                f"{f' (looks like known bug {bug})' if bug else ''} {o.detail[:400]} "
                                f"-> {paths[0]}")
    return failures


@pytest.mark.parametrize("first", range(0, N_GRAPHS, CHUNK),
                         ids=[f"seeds{f}-{f + CHUNK - 1}" for f in range(0, N_GRAPHS, CHUNK)])
def test_fuzz_chunk(first, tier_results):
    failures = _run_chunk(first, tier_results.get(first))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("seed", [
    pytest.param(seed, id=f"seed{seed}-{bug}",
                 marks=pytest.mark.skip(reason=f"known bug {bug}: {fg.KNOWN_BUGS.get(bug, {}).get('title', '?')}"))
    for seed, bug in sorted(KNOWN_FAILURES.items())] or [
    pytest.param(None, id="none", marks=pytest.mark.skip(reason="no seed hits a known bug"))])
def test_known_failure_seed(seed):
    """The skip list, visible in the test report (each seed names its bug)."""


def test_known_failures_name_known_bugs():
    assert set(KNOWN_FAILURES.values()) <= set(fg.KNOWN_BUGS)
    assert all(0 <= s < N_GRAPHS for s in KNOWN_FAILURES)


# -- minimal reproductions of the known bugs --------------------------------------------------
def _repro_param(bug):
    if fg.KNOWN_BUGS[bug].get("fixed"):
        return pytest.param(bug, id=f"{bug}-fixed")   # a regression test
    return pytest.param(bug, marks=pytest.mark.xfail(
        strict=True, reason="known bug (see fuzz_graphs.KNOWN_BUGS); an XPASS means it is fixed: "
                            "set its 'fixed' commit and remove its KNOWN_FAILURES entries"))


@pytest.mark.parametrize("bug", [_repro_param(b) for b in sorted(fg.KNOWN_BUGS)])
def test_known_bug_reproduction(bug):
    outcome = fg.check_repro(bug)
    assert outcome.ok, f"{fg.KNOWN_BUGS[bug]['title']}\n{outcome.category}: {outcome.detail[:500]}"


def test_known_bug_reproductions_are_recognised():
    """Each reproduction is a valid model that fails the way its bug's matcher describes."""
    for key, bug in fg.KNOWN_BUGS.items():
        proto, _, _ = bug["repro"]()
        outcome = fg.check_repro(key)
        if outcome.ok:
            continue  # fixed: test_known_bug_reproduction reports it
        assert fg.classify_failure(proto, outcome) == key, (key, outcome.category, outcome.detail[:300])


# -- the generator itself ---------------------------------------------------------------------
def test_generator_is_deterministic():
    for seed in (0, 7, 123):
        a, b = fg.generate(seed), fg.generate(seed)
        assert a.proto.SerializeToString() == b.proto.SerializeToString()


def test_generated_graphs_are_valid_and_in_bounds():
    regenerated = 0
    for seed in range(40):
        gen = fg.generate(seed)
        regenerated += gen.rejected
        fg.check_valid(gen.proto)   # checker (full) and onnxruntime
        proto = gen.proto
        assert proto.opset_import[0].version == 17
        assert 5 <= len(proto.graph.node) <= 40
        assert 1 <= len(proto.graph.output) <= 3
        for vi in list(proto.graph.input):
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert 2 <= dims[1] <= 16 and 4 <= dims[2] <= 16 and 4 <= dims[3] <= 16
        assert all(t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
                   for t in proto.graph.initializer)
    assert regenerated <= 4, f"{regenerated} attempts regenerated in 40 seeds"


REQUIRED_COVERAGE = [
    "Conv:ordinary", "Conv:depthwise", "Conv:depthwise2", "Conv:grouped", "BatchNormalization",
    "act:Relu", "act:Clip", "act:LeakyRelu", "act:HardSwish", "act:HardSigmoid", "act:Sigmoid",
    "act:Tanh", "act:Swish", "binary:Add", "SE", "spatial_gate", "Concat", "Split", "Slice",
    "MaxPool", "AveragePool", "Resize", "Pad", "ConvTranspose", "head", "unknown",
    # beyond the classic mix
    "split_merge", "ghost", "broadcast_binary", "const_operand", "norm", "matmul_pointwise",
    "shuffle", "reshape_head", "shared_initializers",
]


def test_default_tier_covers_the_operator_mix():
    ops = collections.Counter()
    outputs = collections.Counter()
    for seed in range(N_GRAPHS):
        gen = fg.generate(seed, MAX_NODES)
        ops.update(o if o.startswith(("Conv:", "act:", "binary:")) else o.split(":")[0] for o in gen.ops)
        outputs[len(gen.proto.graph.output)] += 1
    missing = [k for k in REQUIRED_COVERAGE if not ops[k]]
    assert not missing, f"the default tier never generates {missing}"
    assert {1, 2, 3} <= set(outputs)


def test_transformer_blocks_prune_exactly(monkeypatch):
    """The `tokens` block (token layout, heads split and merged by Reshape + Transpose, Q.K^T
    and .V, token MLPs, a constant class token, residual Adds) takes 22 or more nodes, more
    than the default tier's 20: here 40 graphs lean on it, at the long tier's size."""
    monkeypatch.setattr(fg, "BLOCKS", [("conv_bn_act", 3), ("tokens", 4), ("binary", 1), ("act", 1)])
    rows = fg.fuzz_seeds(range(1000, 1040), 45)
    used = [gen for gen, _ in rows if any(o.startswith("tokens") for o in gen.ops)]
    assert len(used) >= 24
    assert any(":token" in o for gen in used for o in gen.ops)
    failures = [f"seed {gen.seed} ratio {ratio} {crit}: [{o.category}] {o.detail[:300]}"
                for gen, results in rows for ratio, crit, o in results if o.kind == "failure"]
    assert not failures, "\n".join(failures)


def test_conv_attribute_mix():
    """Strides 1/2, pads 0/1/SAME, kernels 1/3, with and without bias all occur."""
    seen = collections.Counter()
    for seed in range(60):
        for n in fg.generate(seed, MAX_NODES).proto.graph.node:
            if n.op_type != "Conv":
                continue
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            seen[f"k{a['kernel_shape'][0]}"] += 1
            seen[f"s{a['strides'][0]}"] += 1
            seen["same" if a.get("auto_pad") == b"SAME_UPPER" else f"p{a['pads'][0]}"] += 1
            seen["bias" if len(n.input) > 2 else "nobias"] += 1
    for key in ("k1", "k3", "s1", "s2", "p0", "p1", "same", "bias", "nobias"):
        assert seen[key], (key, seen)


def test_minimiser_shrinks_a_failing_graph():
    """The minimiser keeps only what a predicate needs (here: a Split feeding a Conv)."""
    gen = next(g for g in (fg.generate(s) for s in range(100))
               if sum(n.op_type == "Split" for n in g.proto.graph.node) and len(g.proto.graph.node) > 15)

    def has_split(m):
        return any(n.op_type == "Split" for n in m.graph.node)
    small = fg.minimise(gen.proto, has_split, deadline_s=60)
    assert has_split(small) and len(small.graph.node) < len(gen.proto.graph.node)
    fg.check_valid(small)


# -- target budgets, rounding and the density allocator ---------------------------------------
# run_case prunes by ratio with round_to=1; these options take other code paths (the cost
# tracker, per-group rounding steps, the density heap), where bgsc bugs hid until session 2.
BUDGET_OPTIONS = [
    {"criterion": "bgsc", "target_macs": 0.5, "round_to": 4},
    {"criterion": "bgsc", "target_params": 0.5, "round_to": 2, "allocator": "density"},
    {"criterion": "l1", "target_macs": 0.6, "round_to": 1, "allocator": "density"},
]


@pytest.mark.parametrize("first", [1000, 1030])
def test_fuzz_target_budgets(first):
    import onnxprune
    failures = []
    for seed in range(first, first + 30):
        proto = fg.generate(seed, MAX_NODES).proto
        for options in BUDGET_OPTIONS:
            try:
                slim, report = onnxprune.prune(proto, verify=True, **options)
            except onnxprune.OnnxPruneError:
                continue    # a refusal of the input; our own self-checks raise InternalError
            except Exception as e:  # noqa: BLE001
                failures.append(f"seed {seed} {options}: {type(e).__name__}: {e}")
                continue
            onnx.checker.check_model(slim, full_check=True)
            if report.oracle.max_rel_diff > fg.TOLERANCE:
                failures.append(f"seed {seed} {options}: oracle {report.oracle.max_rel_diff:.2e}")
    assert not failures, "\n".join(failures)
