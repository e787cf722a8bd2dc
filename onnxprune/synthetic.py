"""Synthetic calibration images: recovery without a single real input (docs/methods.md §5.7).

`--calib synthetic` feeds the recovery passes images that have the one property all
natural images share: a power spectrum falling as 1/f² (amplitude 1/f), so neighbouring
pixels are strongly correlated and edges and blobs of every size appear. White noise has
none of that: measured on the digits models, least-squares recovery from white noise keeps
64-88 % at 80 % of the MACs, from 1/f noise 92-99 % (benchmarks/RESULTS_accuracy.md).

Each image is Gaussian noise shaped to that spectrum, standardised over the whole set,
mapped to the pixel range [0, 1] as 0.5 + 0.5·z and clipped there; colour channels share
most of their structure (natural colour channels are highly correlated). The pixels then
go through the same preprocessing as a folder of images (`--calib-preprocess`: scale is
ignored since the pixels are already in [0, 1]; mean, std and layout apply), which is
what the user must know about the model's input: the range its pixels were normalised
from. Nothing here reads data or statistics from anywhere else.
"""
from __future__ import annotations

import numpy as np

from .errors import OnnxPruneError
from .images import Preprocess
from .input_range import fit_input_range

SYNTHETIC = "synthetic"
DEFAULT_SAMPLES = 256
SHARED_COLOUR = 0.8     # weight of the structure the colour channels have in common


def is_synthetic(source) -> bool:
    return isinstance(source, str) and source == SYNTHETIC


def has_one_image_input(model) -> bool:
    """Whether synthetic images can feed the model: a single rank-4 input."""
    names = model.input_names
    return len(names) == 1 and len(model.shapes.get(names[0]) or ()) == 4


def fits_without_options(model) -> bool:
    """Whether synthetic images can feed the model with nothing given: one rank-4 input whose
    channel count (1 or 3, on axis 1 or 3) and spatial size are static."""
    if not has_one_image_input(model):
        return False
    shape = model.shapes[model.input_names[0]]
    try:
        Preprocess().for_input(model.input_names[0], tuple(d if isinstance(d, int) and d > 0 else None
                                                             for d in shape))
    except OnnxPruneError:
        return False
    return True


def synthetic_arrays(spec: dict, preprocess: Preprocess | None, samples: int, seed: int = 0,
                     model=None) -> tuple[dict, str]:
    """({input name: (samples, ...) float32}, how their range was chosen) for a model with
    one image input. Without `preprocess`, the normalisation is fitted to the model's first
    BatchNormalization (onnxprune/input_range.py) when `model` has one, else pixels in [0, 1]."""
    if len(spec) != 1:
        raise OnnxPruneError(f"--calib synthetic feeds a single image input; the model has inputs {list(spec)}")
    name, shape = next(iter(spec.items()))
    if shape is None or len(shape) != 4:
        raise OnnxPruneError(f"--calib synthetic needs a rank-4 image input; the model's input '{name}' "
                             f"has shape {shape}")
    p = (preprocess or Preprocess()).for_input(name, shape)
    channels = 1 if p.channels == "L" else 3
    pixels = pink_noise(samples, channels, p.size, np.random.default_rng(seed))   # (S, C, H, W) in [0, 1]
    if p.layout == "NHWC":
        pixels = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    axis = 3 if p.layout == "NHWC" else 1
    how = "pixels in [0, 1] as given by --calib-preprocess" if preprocess is not None else \
        "pixels in [0, 1] (no BatchNormalization statistics to fit the input range to; give the " \
        "model's normalisation with --calib-preprocess)"
    if preprocess is None and model is not None:
        fit = fit_input_range(model, name, pixels, axis)
        if fit is not None:
            p, how = fit.preprocess.for_input(name, shape), fit.describe()
    shape_c = [1, 1, 1, 1]
    shape_c[axis] = -1
    mean = np.asarray(p.mean, dtype=np.float32).reshape(shape_c)
    std = np.asarray(p.std, dtype=np.float32).reshape(shape_c)
    return {name: np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)}, how


def pink_noise(samples: int, channels: int, size: tuple[int, int], rng) -> np.ndarray:
    """(samples, channels, H, W) float32 images in [0, 1] with a 1/f amplitude spectrum."""
    h, w = size
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    radius = np.sqrt(fy ** 2 + fx ** 2)
    radius[0, 0] = 1.0 / max(h, w)   # the mean gets the weight of the lowest frequency
    white = rng.standard_normal((samples, channels + 1, h, w))
    shaped = np.real(np.fft.ifft2(np.fft.fft2(white) / radius))
    if channels > 1:   # shared structure plus a smaller part of each channel's own
        shaped = SHARED_COLOUR * shaped[:, :1] + (1 - SHARED_COLOUR) * shaped[:, 1:]
    else:
        shaped = shaped[:, :1]
    # standardised over the whole set, not per image: images keep their own brightness and
    # contrast, as real ones do
    z = (shaped - shaped.mean()) / max(float(shaped.std()), 1e-12)
    return np.clip(0.5 + 0.5 * z, 0.0, 1.0).astype(np.float32)
