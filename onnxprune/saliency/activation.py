"""Activation criteria (docs/methods.md §5.4): what removing a channel costs at the layers
that read it, measured on calibration data.

For input position p of a feed-out layer b, dropping it changes b's output by
x_p · W_b[:, p]; the mean squared change per output row is

    activation:  E[x_p²]  · ‖W_b[:, p]‖²       (nothing repairs the loss)
    fluctuation: Var[x_p] · ‖W_b[:, p]‖²       (FLAP: a bias refit — mean compensation, or the
                                               least-squares refit's bias — repairs E[x_p])

summed over the positions of the class in every feed-out. One streaming pass of the
original model; per position only a count, a sum and a sum of squares are kept."""
from __future__ import annotations

import numpy as np

from ..layer_data import Moments, channel_rows
from .data import consumers, per_class, require_data, stream_original
from .scores import Scores


def activation(model, couplings, seed=0, data=None) -> Scores:
    return _scores(model, couplings, data, "activation", centred=False)


def fluctuation(model, couplings, seed=0, data=None) -> Scores:
    return _scores(model, couplings, data, "fluctuation", centred=True)


activation.needs_data = fluctuation.needs_data = True


def _scores(model, couplings, data, name, centred: bool) -> Scores:
    data = require_data(data, f"criterion '{name}'")
    users = consumers(model, couplings)
    moments = {u.tensor: Moments() for u in users}
    axis_of = {u.tensor: u.axis for u in users}

    def consume(values):
        for t, m in moments.items():
            m.add(channel_rows(values[t], axis_of[t]))

    stream_original(model, moments, data, consume)
    scores = np.zeros(couplings.n_classes)
    for u in users:
        m = moments[u.tensor]
        power = m.std ** 2 if centred else m.ss / max(m.n, 1)
        per_class(couplings, u.ids, power * u.energy, scores)
    return Scores(scores, notes=[f"{len(users)} feed-out layer(s) measured on {data.size} calibration samples"])
