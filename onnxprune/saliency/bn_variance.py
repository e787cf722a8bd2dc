"""bn-variance: a data-free estimate of the error a channel's removal leaves at the layers
that read it (docs/methods.md §5.6).

After recovery has put each removed channel's expected value back into the consumer's
bias (mean compensation, statistics correction), what is left of channel c's removal at
a consumer with weight columns W[:, c] is W[:, c]·(x_c − E x_c), whose expected squared
norm is ‖W[:, c]‖² · Var(x_c). The class's score is the root of that sum over every
consumer that reads the class:

    s_c = sqrt( Σ_consumers ‖W[:, c]‖² · Var(x_c) )

Var(x_c) is predicted without data from the BatchNormalization statistics upstream
(onnxprune/moments.py: a BN output channel has mean β and variance γ², carried through
activations, pooling, residual sums). Where no estimate reaches a consumer's input (no BN
upstream, as in BN-folded exports) the variance is taken as 1: the score falls back to the
L2 norm of the consumer weights.

Unlike l1 (which scores the filters that *produce* a channel) this looks at the consumers,
the side the error appears on, and weighs each channel by how much it varies: it is the
`fluctuation` criterion (onnxprune/saliency/activation.py) with the variance predicted
instead of measured, and shares its weight energies (onnxprune/saliency/data.py).
"""
from __future__ import annotations

import numpy as np

from ..channels import FEED_OUT
from ..moments import predict
from .data import input_energy, per_class
from .scores import Scores


def bn_variance(model, couplings, seed=0) -> Scores:
    estimates = predict(model)
    nodes = model.index().nodes
    total = np.zeros(couplings.n_classes)
    estimated = np.zeros(couplings.n_classes, dtype=bool)
    read = np.zeros(couplings.n_classes, dtype=bool)
    for s in couplings.slices:
        if s.role != FEED_OUT:
            continue
        node = nodes[s.node]
        w = np.asarray(model.inits[node.input[s.input]], dtype=np.float64)
        energy = input_energy(node, w, s.axis, len(s.ids))   # ‖W[:, c]‖², as the data criteria take it
        variance = _input_variance(estimates, node.input[0], len(energy))
        classes = couplings.class_of[s.ids]
        estimated[classes] |= variance is not None
        read[classes] = True
        per_class(couplings, s.ids, energy * (variance if variance is not None else 1.0), total)
    notes = []
    read[list(couplings.frozen)] = False   # frozen classes are never pruned: no need to say
    if read.any() and not estimated[read].all():
        notes.append(f"bn-variance: {int((read & ~estimated).sum())} of {int(read.sum())} prunable channel "
                     "class(es) have no BatchNormalization statistics upstream; their consumers' "
                     "weight norms alone score them")
    return Scores(np.sqrt(total), notes=notes)


def _input_variance(estimates, tensor: str, width: int):
    """Predicted per-channel variance of a consumer's input, when it matches the weight's
    input axis (a Gemm after Flatten reads one feature per channel and position)."""
    if tensor not in estimates:
        return None
    variance = estimates[tensor][1]
    return variance if len(variance) == width else None
