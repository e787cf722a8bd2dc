"""End-to-end fit (docs/methods.md §5.3, "End-to-end fit"): after the layer-wise refit, the
weights and biases of every layer and the scale and shift of every BatchNormalization are fitted together,
by gradient descent, so that the pruned model's outputs match the original's on the
calibration inputs. No labels: the loss is each output's squared error relative to the
original output's variance, summed over outputs.

Layer-wise least squares makes each layer match its original output given the already
repaired layers before it, but cannot trade one layer's error against another's; on the
digits ResNets at 60 % of the MACs that leaves the logits 15-18 % off. Fitting the whole
network to the final outputs lowered that error in 19 of 20 cells and met the accuracy bar
in 3 of the 5 cells least squares missed (benchmarks/RESULTS_accuracy.md, session 11).

Guards, so the fit never hands back something worse or something guessed:
  - the graph runs in PyTorch (onnxprune/torch_graph.py; torch is optional); a graph with
    an operator that executor lacks is not fitted, and the note names the operators;
  - before fitting, the torch graph must reproduce onnxruntime's outputs of the model;
  - `recover="auto"` keeps the fit only where it brings the held-out outputs (samples neither
    the refit nor the fit saw) closer to the original's (onnxprune/recover.py). Samples held
    back from the calibration set would not do: the least-squares refit has already fitted
    them, so they favour the unfitted weights (scratch, session 12);
  - the fit costs about 3 × the model's MACs per sample × BATCH × STEPS; over FIT_MACS
    (big models) it does not run, and the note says so.
"""
from __future__ import annotations

import numpy as np

from onnxprune import torch_graph
from onnxprune.cost import cost
from onnxprune.runtime import fixed_batch, model_session, run_chunked

STEPS = 300               # Adam steps (benchmarks/distill_probe.py: 300 at lr 1e-3, batch 64)
LEARNING_RATE = 1e-3
BATCH = 64
MIN_BATCH = 16            # below this the budget affords too little fitting to be worth it
FIT_MACS = 5e11           # ~3 x MACs per sample x BATCH x STEPS allowed (the digits models: 1e11)
MIN_SAMPLES = 64          # fewer calibration samples: no fit (it would learn them by heart)
MAX_INPUT_BYTES = 1 << 30  # calibration inputs and original outputs held in memory for the fit
SELF_CHECK_TOLERANCE = 1e-3  # relative: torch vs onnxruntime on the unfitted model


def run(model, step) -> None:
    if step.calibration is None:
        return
    reason = cannot_fit(model, step.calibration_size)
    inputs = targets = None
    if reason is None:
        inputs, targets, reason = _collect(model, step)
    if reason is None:
        reason = _self_check(model, inputs)
    if reason is not None:
        step.notes.append(f"fit_outputs: not run ({reason})")
        return
    try:
        before, after = _fit(model, inputs, targets)
    except (RuntimeError, FloatingPointError) as e:   # torch's own failures (memory, a kernel): a
        # recovery that cannot run must not fail a prune that works without it
        step.notes.append(f"fit_outputs: not run (torch failed: {str(e).strip().splitlines()[0][:160]})")
        return
    if not np.isfinite(after):
        step.notes.append("fit_outputs: the fit diverged; the weights are left as they were")
        return
    step.notes.append(f"fit_outputs: every layer fitted end to end to the original's outputs ({STEPS} Adam "
                      f"steps on {step.calibration_size} calibration samples); their relative RMS error "
                      f"{before:.3f} -> {after:.3f}")


def fit_batch(model) -> int:
    """The mini-batch the budget affords for `model` (0: less than MIN_BATCH). Its MACs are
    those of one sample where the file fixes a batch of 1, as exporters mostly do (as
    plan_choice.trial_samples reads them)."""
    batch = min(BATCH, int(FIT_MACS // (3 * max(cost(model).macs, 1) * STEPS)))
    return batch if batch >= MIN_BATCH else 0


def cannot_fit(model, samples: int) -> str | None:
    """Why the fit will not run on `model` with `samples` calibration samples; None if it can."""
    if not torch_graph.available():
        return "torch is not installed: pip install 'onnxprune[fit]'"
    missing = torch_graph.unsupported_ops(model)
    if missing:
        return f"the torch executor lacks {', '.join(missing)}"
    if fit_batch(model) == 0:
        return (f"{STEPS} steps would cost about {3 * cost(model).macs * MIN_BATCH * STEPS:.1e} "
                f"multiply-accumulates, over the budget of {FIT_MACS:.0e}")
    if samples < MIN_SAMPLES:
        return f"{samples} calibration samples, fewer than {MIN_SAMPLES}"
    return None


def _collect(model, step):
    """(inputs {name: array}, the original's float outputs [array], None) or a reason."""
    sess = model_session(step.original)
    k = fixed_batch(sess)
    names = [o.name for o in sess.get_outputs()]
    wanted = [i for i, name in enumerate(names) if name in model.output_names]
    inputs, targets, nbytes = {}, [[] for _ in wanted], 0
    for feeds in step.calibration():
        outs = run_chunked(sess, feeds, k)
        for name, a in feeds.items():
            inputs.setdefault(name, []).append(a)
        for slot, i in enumerate(wanted):
            targets[slot].append(outs[i])
        nbytes += sum(a.nbytes for a in feeds.values()) + sum(outs[i].nbytes for i in wanted)
        if nbytes > MAX_INPUT_BYTES:
            return None, None, f"the calibration inputs and outputs exceed {MAX_INPUT_BYTES >> 20} MB"
    targets = [np.concatenate(t) for t in targets]
    if any(t.dtype.kind != "f" for t in targets) or [names[i] for i in wanted] != model.output_names:
        return None, None, "an output is not a float tensor of both models"
    return {name: np.concatenate(parts) for name, parts in inputs.items()}, targets, None


def _self_check(model, inputs) -> str | None:
    """None when the torch graph gives onnxruntime's outputs on the first samples."""
    import torch
    head = {name: a[:8] for name, a in inputs.items()}
    sess = model_session(model)
    expected = run_chunked(sess, head, fixed_batch(sess))
    try:
        with torch.no_grad():
            got = torch_graph.module(model, [])(**{n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in head.items()})
    except Exception as e:   # an operator form the executor does not take (NotImplementedError, shapes)
        return f"torch could not run the graph: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}"
    for e, g in zip(expected, got):
        e, g = np.asarray(e, np.float64), g.numpy().astype(np.float64)
        if e.shape != g.shape or np.abs(e - g).max() > SELF_CHECK_TOLERANCE * max(np.abs(e).max(), 1e-6):
            return "the torch graph does not reproduce onnxruntime's outputs"
    return None


def _fit(model, inputs: dict, targets: list) -> tuple[float, float]:
    """Fits `model`'s trainable initializers in place, on every calibration sample. Returns
    the relative RMS error on them before and after (NaN, and nothing written, where the fit
    diverged)."""
    import torch
    x = {name: torch.from_numpy(np.ascontiguousarray(a, np.float32) if a.dtype.kind == "f" else a)
         for name, a in inputs.items()}
    y = [torch.from_numpy(np.ascontiguousarray(t, np.float32)) for t in targets]
    scale = [max(float(t.var()), 1e-12) for t in y]
    graph = torch_graph.module(model, torch_graph.trainable(model))
    opt = torch.optim.Adam(graph.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(0)   # the mini-batch order: the same fit every run
    n = len(y[0])
    batch = min(fit_batch(model), n)

    def loss(idx):
        outs = graph(**{name: a[idx] for name, a in x.items()})
        return sum(((o - t[idx]) ** 2).mean() / s for o, t, s in zip(outs, y, scale)) / len(y)

    def error() -> float:
        with torch.no_grad():
            return float(np.sqrt(sum(float(loss(torch.arange(i, min(i + 256, n))) * min(256, n - i))
                                     for i in range(0, n, 256)) / n))

    before = error()
    for _ in range(STEPS):
        rows = torch.randint(0, n, (batch,), generator=generator)
        opt.zero_grad()
        loss(rows).backward()
        opt.step()
    after = error()
    weights = graph.weights()
    if np.isfinite(after) and all(np.isfinite(w).all() for w in weights.values()):
        model.inits.update(weights)
    else:
        after = float("nan")
    return before, after
