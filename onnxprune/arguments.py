"""The arguments of prune / plan / apply_plan, checked before any work: a wrong type or
value is one OnnxPruneError naming the argument, never a crash halfway through."""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import onnx

from . import passes
from .budget import COUPLED, RANKINGS, parse_min_keep, default_round_to
from .errors import OnnxPruneError
from .latency_model import TimingOptions
from .plan import Plan, checked_removed
from .recover import parse_methods
from .residual import RESIDUAL
from .saliency import CRITERIA, needs_data
from .synthetic import is_synthetic

# Defaults per criterion: BGSC scores are comparable across groups (one bound, in the same
# units everywhere), so it ranks globally, as DFPC does; magnitudes are not, so the
# baselines thin every group by the same fraction.
# activation ranks globally: on PP-OCRv4 recognition at 80 % of the MACs, local scope left 0.002
# character accuracy and global 0.973 (no recovery); on the digits models global was as good or
# better after lsq (benchmarks/RESULTS_accuracy.md, session 6)
DEFAULT_SCOPE = {"bgsc": "global", "bgsc-position": "global", "bn-variance": "global", "activation": "global"}
DEFAULT_RANKING = {"bgsc": "normalized", "bgsc-position": "raw", "bn-variance": "raw"}
DEFAULT_COUPLED = {"bn-variance": "last"}


def default_criterion(calibration) -> str:
    """What `criterion="auto"` picks, by measurement on the trained digits models
    (benchmarks/RESULTS_accuracy.md): with real calibration data, `activation` (best or tied
    best after least-squares recovery, and the best before it; still the best on twelve
    trained files in session 11, benchmarks/recovery_choices.py); without data, or with
    synthetic images, `bn-variance` (the only criterion meeting the data-free bar on every
    BN model with `--calib synthetic`, and the best with BN-statistics recovery alone)."""
    return "activation" if has_real_data(calibration) else "bn-variance"


def has_real_data(calibration) -> bool:
    """Calibration data that are real inputs: neither none nor synthetic images."""
    return calibration is not None and not is_synthetic(calibration)


def default_allocator(plan, target_latency) -> str:
    """`auto` (onnxprune/plan_choice.py: candidate allocations measured on held-out data,
    real or synthetic) where there is an allocation to choose; else `rank`. Without anything
    to measure on, the prune resolves `auto` to `rank` (api.resolve_auto)."""
    return "auto" if plan is None and target_latency is None else "rank"


# rank: one ranking of channel classes decides how many each group keeps and which;
# density: PreCrop layer densities decide how many, the criterion which (onnxprune/density.py);
# sensitivity: fidelity measured on calibration data decides how many (onnxprune/sensitivity.py);
# synexp: PreCrop's convex program solved continuously, then rounded and repaired (onnxprune/synexp.py);
# synexp-weighted: the same, each group weighted by its measured sensitivity;
# latency: importance against measured milliseconds per MAC (onnxprune/latency_alloc.py);
# auto: rank, rank with streams last, rank with the other ranking and density, the best on held-out
# data (onnxprune/plan_choice.py)
ALLOCATORS = ("rank", "density", "sensitivity", "synexp", "synexp-weighted", "latency", "auto")
# --allocator latency: the fraction of latency saved is worth W times the importance the
# importance-only plan removes. 128 is the least of 0.5-128 (doubling) at which ResNet-50 and
# MobileNetV2 at half their MACs ran at least twice as fast in every repeat; on the trained
# PP-OCRv4 and digits models with calibration data it kept accuracy within about a point of
# the default allocator (benchmarks/RESULTS.md, "A MAC budget that weighs milliseconds").
DEFAULT_SPEED_WEIGHT = 128.0
SCOPES = ("local", "global")


@dataclass(frozen=True)
class Settings:
    """The arguments of prune/plan, checked and with their defaults resolved."""
    ratio: float | None
    target_macs: float | None
    target_params: float | None
    plan: Plan | None
    criterion: str
    seed: int
    scope: str
    ranking: str
    allocator: str
    coupled: str
    min_keep: float
    round_to: int
    exclude: tuple[str, ...]
    input_shapes: dict
    fold: str
    verify: bool
    tolerance: float
    residual: str = "coupled"   # DEFAULT_RESIDUAL
    target_latency: float | None = None
    timing: TimingOptions = TimingOptions()   # where --target-latency and --allocator latency measure
    speed_weight: float = DEFAULT_SPEED_WEIGHT


# How a residual Add treats its operands' channels: "coupled" (one class per stream channel)
# or "independent" (each branch its own; onnxprune/residual.py). Coupled measured better
# (benchmarks/RESULTS.md §9).
DEFAULT_RESIDUAL = "coupled"


def settings(*, ratio, target_macs, target_params, plan, criterion, seed, scope, ranking, allocator,
              coupled, min_keep, round_to, exclude, input_shapes, fold, verify, tolerance,
              calibration=None, residual=DEFAULT_RESIDUAL, target_latency=None, timing=None,
              speed_weight=None) -> Settings:
    ratio = _number("ratio", ratio)
    target_macs, target_params = _number("target_macs", target_macs), _number("target_params", target_params)
    target_latency = _number("target_latency", target_latency)
    if plan is not None and not isinstance(plan, Plan):
        raise OnnxPruneError(f"plan must be an onnxprune.Plan, got {type_name(plan)}")
    budgets = [b for b in (ratio, target_macs, target_params, target_latency, plan) if b is not None]
    both = target_macs is not None and target_params is not None   # one budget of two costs (synexp)
    if len(budgets) > 1 + both:
        raise OnnxPruneError("give one budget: --ratio, --target-macs, --target-params, --target-latency or --plan "
                             "(--target-macs with --target-params takes --allocator synexp)")
    if not budgets:
        ratio = 0.3
    if ratio is not None and not 0 <= ratio < 1:
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")
    for flag, fraction in (("--target-macs", target_macs), ("--target-params", target_params),
                           ("--target-latency", target_latency)):
        if fraction is not None and not 0 < fraction <= 1:
            raise OnnxPruneError(f"{flag} must be in (0, 1], got {fraction}")
    if plan is not None:  # a Plan built by hand gets the checks a plan file gets
        plan = Plan(checked_removed(plan.removed, "plan"), plan.meta)
    if isinstance(criterion, str) and criterion == "auto":
        criterion = default_criterion(calibration)
    criterion = _choice("criterion", criterion, sorted(CRITERIA))
    seed = integer("--seed", seed, least=0)
    scope = _choice("--scope", scope, SCOPES) if scope is not None else DEFAULT_SCOPE.get(criterion, "local")
    ranking = (_choice("--ranking", ranking, RANKINGS) if ranking is not None
               else DEFAULT_RANKING.get(criterion, "raw"))
    allocator = (_choice("--allocator", allocator, ALLOCATORS) if allocator is not None
                 else default_allocator(plan, target_latency))
    if allocator == "auto" and target_latency is not None:
        raise OnnxPruneError("--allocator auto goes with --ratio, --target-macs or --target-params "
                             "(--target-latency has its own allocator)")
    if both and allocator not in ("synexp", "synexp-weighted"):
        raise OnnxPruneError("--target-macs and --target-params together need --allocator synexp or "
                             "synexp-weighted (its program takes both budgets)")
    if allocator not in ("rank", "auto") and target_macs is None and target_params is None:
        raise OnnxPruneError(f"--allocator {allocator} needs a cost budget: --target-macs or --target-params"
                             + (" (--target-latency has its own allocator)" if target_latency is not None else ""))
    if speed_weight is not None and allocator != "latency":
        raise OnnxPruneError("--speed-weight goes with --allocator latency")
    speed_weight = _number("speed_weight", speed_weight)
    if speed_weight is not None and not (math.isfinite(speed_weight) and speed_weight >= 0):
        raise OnnxPruneError(f"--speed-weight must be a finite number >= 0, got {speed_weight}")
    coupled = _choice("--coupled", coupled, COUPLED) if coupled is not None else DEFAULT_COUPLED.get(criterion, "all")
    round_to = default_round_to() if round_to is None else integer("--round-to", round_to, least=1)
    fold = _choice("--fold", fold, passes.fold_removed_constants.MODES)
    residual = check_residual(residual)
    made_with = plan.meta.get("residual") if plan is not None else None   # a plan by hand does not say
    if made_with not in (None, residual):   # its classes are those of the other analysis: they would not line up
        raise OnnxPruneError(f"the plan was made with --residual {made_with}; apply it with --residual {made_with}")
    check_flag("verify", verify)
    tolerance = check_tolerance(tolerance)
    return Settings(ratio, target_macs, target_params, plan, criterion, seed, scope, ranking, allocator,
                     coupled, check_min_keep(min_keep), round_to, check_patterns(exclude), check_input_shapes(input_shapes),
                     fold, verify, tolerance, residual, target_latency, check_timing(timing),
                     DEFAULT_SPEED_WEIGHT if speed_weight is None else speed_weight)


def check_timing(timing) -> TimingOptions:
    """Where --target-latency measures: a TimingOptions (default: cpu, 1 thread, batch 1)."""
    if timing is None:
        return TimingOptions()
    if not isinstance(timing, TimingOptions):
        raise OnnxPruneError(f"timing must be an onnxprune.TimingOptions, got {type_name(timing)}")
    from .bench import check_options
    check_options(timing.provider, timing.threads, timing.batch, timing.warmup, timing.runs)
    if timing.table is not None and not isinstance(timing.table, (str, os.PathLike)):
        raise OnnxPruneError(f"the latency table must be a path, got {type_name(timing.table)}")
    return timing


def check_tolerance(tolerance) -> float:
    tolerance = _number("tolerance", tolerance)
    if not 0 <= tolerance < math.inf:
        raise OnnxPruneError(f"--tolerance must be >= 0 and finite, got {tolerance}")
    return tolerance


def type_name(value) -> str:
    return type(value).__name__


def _number(name: str, value) -> float | None:
    """None, or a real number (not a bool, not a string) as a float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OnnxPruneError(f"{name} must be a number, got {value!r} ({type_name(value)})")
    return float(value)


def integer(flag: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise OnnxPruneError(f"{flag} must be an integer >= {least}, got {value!r}")
    return int(value)


def check_residual(value) -> str:
    return _choice("--residual", value, RESIDUAL)


def _choice(flag: str, value, choices) -> str:
    if flag == "criterion" and value not in choices:  # the message score() has always given
        raise OnnxPruneError(f"unknown criterion {value!r}; choose from {list(choices)}")
    if value not in choices:
        raise OnnxPruneError(f"{flag} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise OnnxPruneError(f"{name} must be True or False, got {value!r}")


def check_min_keep(value) -> float:
    # parse_min_keep would crash on inf (int(inf)); a bool is not a count
    if isinstance(value, bool) or (isinstance(value, (numbers.Real, str)) and not _finite(value)):
        raise OnnxPruneError(f"--min-keep must be a count >= 1 or a fraction in (0, 1), got {value!r}")
    return parse_min_keep(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return True  # not a number at all: parse_min_keep says so


def check_patterns(exclude) -> tuple[str, ...]:
    if isinstance(exclude, (str, bytes)):  # a bare string would be split into one-letter globs
        raise OnnxPruneError(f"exclude must be a list of node-name patterns, not a string: "
                             f"write exclude=[{exclude!r}]")
    if not isinstance(exclude, Collection) or not all(isinstance(p, str) for p in exclude):
        raise OnnxPruneError(f"exclude must be a list of node-name patterns (strings), got {exclude!r}")
    return tuple(exclude)


def check_input_shapes(input_shapes) -> dict[str, tuple[int, ...]]:
    if input_shapes is None:
        return {}
    if not isinstance(input_shapes, Mapping):
        raise OnnxPruneError(f"input_shapes must be a dict {{input name: shape}}, got {type_name(input_shapes)}")
    shapes = {}
    for name, shape in input_shapes.items():
        if (not isinstance(name, str) or isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence)
                or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise OnnxPruneError(f"input_shapes must map input names to shapes of positive integers, "
                                 f"got {name!r}: {shape!r}")
        shapes[name] = tuple(int(d) for d in shape)
    return shapes


def check_source(source) -> None:
    if not isinstance(source, (str, os.PathLike, onnx.ModelProto)):
        raise OnnxPruneError(f"source must be a path or an onnx.ModelProto, got {type_name(source)}")


def check_data_options(recover, limit, labels_key) -> None:
    if not isinstance(recover, str):
        raise OnnxPruneError(f"recover must be a string ('auto', 'none' or a comma list of methods), got {recover!r}")
    if recover != "auto":
        parse_methods(recover)
    if limit is not None:
        integer("--calib-limit", limit, least=1)
    if not isinstance(labels_key, str):
        raise OnnxPruneError(f"labels_key must be a string, got {labels_key!r}")


def check_needs_data(s: Settings, calibration) -> None:
    """Data criteria and the sensitivity allocator read calibration data: say so before any work."""
    if calibration is not None or s.plan is not None:
        return
    if needs_data(s.criterion):
        raise OnnxPruneError(f"criterion '{s.criterion}' needs calibration data (--calib / calibration=)")
    if s.allocator == "sensitivity":
        raise OnnxPruneError("--allocator sensitivity needs calibration data (--calib / calibration=)")
