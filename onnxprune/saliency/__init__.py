"""Score stage: one saliency per channel class. Every criterion has the same signature,
`criterion(model, couplings, seed) -> Scores | np.ndarray` (length `couplings.n_classes`,
higher means more important), and registers itself in CRITERIA. Criteria that read
calibration data (docs/methods.md §5.4) say so with `needs_data = True` and take it as
`data=` (a CalibrationData)."""
from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError
from .activation import activation, fluctuation
from .bgsc import bgsc, bgsc_per_position
from .bn_variance import bn_variance
from .data import CalibrationData
from .heatmap import heatmap
from .magnitude import l1, l2, random_scores
from .obs import lsq_aware
from .scores import Scores
from ..residual import propagate_scores

CRITERIA = {"bgsc": bgsc, "bgsc-position": bgsc_per_position, "bn-variance": bn_variance, "l1": l1,
            "l2": l2, "random": random_scores, "activation": activation, "fluctuation": fluctuation,
            "heatmap": heatmap, "lsq-aware": lsq_aware}


# Criteria that score a channel by the filters producing it (or not at all): a branch of an
# independent residual sum has its own. The others measure what the layers reading a channel
# lose, and only a sum's output is read: its branches get their share (onnxprune/residual.py).
PRODUCER_SIDE = ("l1", "l2", "random")


def needs_data(criterion: str) -> bool:
    return getattr(CRITERIA.get(criterion), "needs_data", False)


def score(model, couplings, criterion: str = "l1", seed: int = 0, data: CalibrationData | None = None) -> Scores:
    try:
        fn = CRITERIA[criterion]
    except KeyError:
        raise OnnxPruneError(f"unknown criterion '{criterion}'; choose from {sorted(CRITERIA)}") from None
    result = fn(model, couplings, seed=seed, data=data) if needs_data(criterion) else fn(model, couplings, seed=seed)
    scores = result if isinstance(result, Scores) else Scores(np.asarray(result, dtype=np.float64))
    scores.values = np.asarray(scores.values, dtype=np.float64)
    if criterion not in PRODUCER_SIDE:  # branches of independent residual sums: their share
        scores.values = propagate_scores(model, couplings, scores.values)
    assert scores.values.shape == (couplings.n_classes,)
    return scores


__all__ = ["CRITERIA", "CalibrationData", "Scores", "needs_data", "score"]
