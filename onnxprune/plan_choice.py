"""`--allocator auto`, the default with real calibration data: a few allocations are made,
each is rewritten and recovered on calibration samples, and the plan whose held-out
outputs stay closest to the original's is kept (docs/methods.md §5.4).

No single allocation suits every model. On the digits ResNets at `--round-to` 8, one
ranking of `activation` scores over all groups took the last residual stream (the only path
into the classifier) down to 8 of its 64 channels; the refit model fell from 99.6 % to
88-92 %. Thinning streams only after the blocks' own channels, or giving each layer the
count PreCrop's density program gives it, kept 98-100 %. On PP-OCRv4 recognition it is the
other way round: streams-last cost 49 points of character accuracy at 70 % of the MACs,
where the single ranking loses 2. So the choice is measured, as `recover="auto"` measures
its repair: by the held-out mean relative error after recovery.

The candidates, in order (ties keep the first):
  - `rank`: the criterion's ranking over every group (the allocator without data);
  - `rank`, coupled "last": residual streams thinned after every other group;
  - `rank` with the other global ranking (`normalized`: each score over its group's mean,
    DFPC's second list; or `raw` where the criterion normalizes): at `--round-to` 8 it kept
    the seed-0 digits MobileNet at 99.3 % at T 0.6, where the others kept 98.7 %;
  - `density` (a cost target only): PreCrop's layer densities set the counts.
Candidates that give the same plan are tried once; a model without residual streams often
has two candidates only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from .cost import cost
from .recover import DataOptions, held_out_error, recover_stage, why_auto_does_not_fit
from .synthetic import is_synthetic

# A trial recovers as the prune will (`--recover`) on every calibration sample while one
# pass over them costs at most TRIAL_MACS multiply-accumulates (the digits models; PP-OCRv4
# recognition at 48 x 320). Bigger models would pay the least-squares refit up to four
# times more (its row count follows the layers' fan-in, not the samples: 97 s for three trials on
# ResNet-50 at 224 x 224), so their trials run `PROXY_RECOVERY` (mean compensation: one
# statistics pass) on as many calibration and held-out samples as TRIAL_MACS buys, never
# under MIN_TRIAL_SAMPLES. On the digits ResNets a trial on 64 samples instead of 205 picked
# plans 0.4-0.9 points worse; mean compensation never picked the plan that crushed a stream
# (benchmarks/RESULTS_accuracy.md, session 9).
TRIAL_MACS = 2.5e11
MIN_TRIAL_SAMPLES = 64
PROXY_RECOVERY = "means"


def trial_samples(macs_per_sample: float, available: int) -> int:
    """How many calibration samples each trial recovery runs on."""
    affordable = int(TRIAL_MACS // max(macs_per_sample, 1))
    return min(available, max(MIN_TRIAL_SAMPLES, affordable))


def trial_recovery(recover: str, samples: int, available: int) -> str:
    """The recovery a trial runs: the prune's own where the trial affords every sample."""
    return recover if samples >= available or recover == "none" else PROXY_RECOVERY


@dataclass(frozen=True)
class Candidate:
    allocator: str
    coupled: str
    ranking: str | None = None   # None: the settings' own
    round_to: int | None = None   # None: the settings' own

    def __str__(self) -> str:
        return (self.allocator + (f" (coupled {self.coupled})" if self.coupled != "all" else "")
                + (f" ({self.ranking} ranking)" if self.ranking else "")
                + (f" (round-to {self.round_to})" if self.round_to else ""))


def candidates(coupled: str, ranking: str, cost_target: bool) -> list[Candidate]:
    """What `--allocator auto` tries, given the `--coupled` and `--ranking` settings (the
    criterion's defaults or the user's) and whether the budget is a cost target (density
    needs one)."""
    other = "normalized" if ranking == "raw" else "raw"
    out = [Candidate("rank", coupled), Candidate("rank", "last"), Candidate("rank", coupled, other)]
    if cost_target:
        out.append(Candidate("density", coupled))
    return list(dict.fromkeys(out))


def with_finer_steps(options: list[Candidate], finest_step: int | None) -> list[Candidate]:
    """Where the rounding cannot reach the target, the first plan went on in finer steps
    (budget.reach_at_finer_steps) and is off the rounding anyway; then each candidate is also
    tried whole at that step. On the digits ResNets at T 0.5 and `--round-to` 16, continuing
    the rounded plans cut the seed-0 model to 93.8 %; the plans made at 8 keep about 99 %."""
    return options + [replace(c, round_to=finest_step) for c in options] if finest_step else options


def choose_plan(options: list[Candidate], allocate, trial, how: str) -> tuple[Candidate, tuple, list[str]]:
    """`allocate(candidate)` -> (removed classes, ...); `trial(removed)` -> the held-out mean
    relative error after recovery, or None where none was measured; `how` says which
    recovery, on how many samples. Returns (the candidate kept, its allocation, notes)."""
    plans, seen = [], set()
    for c in options:
        allocation = allocate(c)
        key = frozenset(allocation[0])
        if key not in seen:   # the same plan under another name is not tried twice
            seen.add(key)
            plans.append((c, allocation))
    if len(plans) == 1:
        return plans[0][0], plans[0][1], []
    errors = [trial(allocation[0]) for _, allocation in plans]
    best = min(range(len(plans)), key=lambda i: math.inf if errors[i] is None else errors[i])
    shown = "; ".join(f"{c}: {'n/a' if e is None else f'{e:.1%}'}" for (c, _), e in zip(plans, errors))
    return plans[best][0], plans[best][1], [
        f"--allocator auto: {plans[best][0]} kept (held-out mean relative error after {how}: {shown})"]


class Trial(NamedTuple):
    error: float
    removed: frozenset
    rewritten: tuple   # (pruned Model, folds, fold stats): the exact rewrite
    recovered: tuple   # recover_stage's (model, fidelity, fidelity before recovery, info)
    timings: dict


class Trials:
    """The trial `choose_plan` calls: `trials(removed)` rewrites a plan (`rewrite(removed)`),
    recovers it and returns its held-out mean relative error. Within the budget
    (`trial_samples`) a trial is the prune's own recovery on every calibration sample, so the
    best one is kept and `reuse` hands it back instead of recovering the chosen plan again;
    beyond it, PROXY_RECOVERY on fewer samples, judged on as many held-out ones. `how`
    says which, for the note."""

    def __init__(self, model, couplings, sets, options: DataOptions, rewrite, seed: int):
        calib, held = sets
        samples = trial_samples(cost(model).macs, len(calib))
        methods = trial_recovery(options.recover, samples, len(calib))
        # trials never run the end-to-end fit (it runs once, on the plan kept): where the
        # prune would run it, a trial is not the prune's own recovery
        fits = options.recover == "auto" and \
            why_auto_does_not_fit(model, len(calib), is_synthetic(options.calibration)) is None
        self.final = samples >= len(calib) and not fits   # the trial is what prune would run itself
        self.sets = (calib, held) if samples >= len(calib) else (calib.head(samples), held.head(samples))
        self.model, self.couplings, self.rewrite, self.seed = model, couplings, rewrite, seed
        self.options = replace(options, recover=methods, end_to_end=False)
        kind = "synthetic " if is_synthetic(options.calibration) else ""
        shown = f"{methods} without the fit" if fits and methods == "auto" else methods
        self.how = f"recovery ({shown}) on {len(self.sets[0])} {kind}calibration samples"
        self.original_outputs = {}   # the original's held-out outputs, computed once for every trial
        self.best: Trial | None = None

    def __call__(self, removed) -> float | None:
        rewritten, timings = self.rewrite(removed), {}
        recovered = recover_stage(self.model, self.couplings, removed, rewritten[0], rewritten[1], self.options,
                                  self.seed, timings, self.sets, self.original_outputs)
        error = held_out_error(recovered[1])
        if self.final and error is not None and (self.best is None or error < self.best.error):
            # ties keep the first, as choose_plan does
            self.best = Trial(error, frozenset(removed), rewritten, recovered, timings)
        return error

    def reuse(self, removed) -> Trial | None:
        """The trial of the plan `removed` when it was exactly the prune's own recovery."""
        return self.best if self.best is not None and self.best.removed == frozenset(removed) else None
