"""The score stage's output type."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scores:
    """One saliency per channel class (higher: more important), the classes the criterion
    could not score (class -> reason: they are frozen before allocation), and notes for
    the report."""
    values: np.ndarray
    frozen: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
