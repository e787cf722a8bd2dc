"""Score stage: one saliency per channel class. Every criterion has the same signature,
`criterion(model, couplings, seed) -> Scores | np.ndarray` (length `couplings.n_classes`,
higher means more important), and registers itself in CRITERIA."""
from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError
from .bgsc import bgsc, bgsc_per_position
from .bn_variance import bn_variance
from .magnitude import l1, l2, random_scores
from .scores import Scores

CRITERIA = {"bgsc": bgsc, "bgsc-position": bgsc_per_position, "bn-variance": bn_variance, "l1": l1,
            "l2": l2, "random": random_scores}


def score(model, couplings, criterion: str = "l1", seed: int = 0) -> Scores:
    try:
        fn = CRITERIA[criterion]
    except KeyError:
        raise OnnxPruneError(f"unknown criterion '{criterion}'; choose from {sorted(CRITERIA)}") from None
    result = fn(model, couplings, seed=seed)
    scores = result if isinstance(result, Scores) else Scores(np.asarray(result, dtype=np.float64))
    scores.values = np.asarray(scores.values, dtype=np.float64)
    assert scores.values.shape == (couplings.n_classes,)
    return scores


__all__ = ["CRITERIA", "Scores", "score"]
