"""Calibration images: a folder of PNG/JPEG/BMP files read with Pillow (imported only when
needed: it is not a dependency), and the preprocessing that turns each into one input
sample (`Preprocess`, parsed from --calib-preprocess; syntax in onnxprune/calibration.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from .errors import OnnxPruneError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one sample; see the module docstring for the spec syntax."""
    size: tuple[int, int] | None = None      # (height, width); None: the model's
    channels: str | None = None              # RGB, BGR or L; None: the model's
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None                # NCHW or NHWC; None: the model's, else NCHW

    @classmethod
    def parse(cls, spec: str) -> "Preprocess":
        fields = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, sep, value = part.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep or not value:
                _bad_spec(spec, f"'{part}' is not key=value")
            if key not in _SPEC_PARSERS:
                _bad_spec(spec, f"unknown key '{key}'; keys are {', '.join(_SPEC_PARSERS)}")
            fields[key] = _SPEC_PARSERS[key](spec, value)
        return cls(**fields)

    def __post_init__(self):  # also checks a Preprocess built in Python, not parsed
        if self.size is not None and (len(self.size) != 2 or not all(isinstance(d, int) and d > 0 for d in self.size)):
            raise OnnxPruneError(f"bad --calib-preprocess: size needs two positive integers H,W, got {self.size}")
        if self.channels not in (None, "RGB", "BGR", "L") or self.layout not in (None, "NCHW", "NHWC"):
            raise OnnxPruneError(f"bad --calib-preprocess: channels must be RGB, BGR or L and layout NCHW "
                                 f"or NHWC, got {self.channels} and {self.layout}")
        if self.scale <= 0 or not np.isfinite(self.scale):
            raise OnnxPruneError(f"bad --calib-preprocess: scale must be a positive number, got {self.scale}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or min(map(abs, self.std)) == 0:
            raise OnnxPruneError("bad --calib-preprocess: mean and std must be finite and std non-zero")

    def to_spec(self) -> str:
        """The spec string (for reports); parse(to_spec()) gives the same Preprocess."""
        parts = []
        if self.size:
            parts.append(f"size={self.size[0]},{self.size[1]}")
        if self.channels:
            parts.append(f"channels={self.channels}")
        parts += [f"scale={self.scale:g}", "mean=" + ",".join(f"{v:g}" for v in self.mean),
                  "std=" + ",".join(f"{v:g}" for v in self.std)]
        if self.layout:
            parts.append(f"layout={self.layout}")
        return ";".join(parts)

    def for_input(self, name: str, shape: tuple | None) -> "Preprocess":
        """Every field fixed, the missing ones taken from the input's static shape."""
        if shape is not None and len(shape) != 4:
            raise OnnxPruneError(f"a folder of images needs a rank-4 image input; the model's input "
                                 f"'{name}' has shape {dims(shape)}")
        layout = self.layout or _guess_layout(shape)
        c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
        model_c = shape[c_axis] if shape else None
        channels = self.channels or {1: "L"}.get(model_c, "RGB")
        n_channels = 1 if channels == "L" else 3
        if model_c is not None and model_c != n_channels:
            raise OnnxPruneError(f"the model's input '{name}' takes {model_c} channel(s) in {layout} layout "
                                 f"({dims(shape)}); channels={channels} gives {n_channels}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, n_channels):
                raise OnnxPruneError(f"bad --calib-preprocess: {what} has {len(values)} values for "
                                     f"{n_channels} channel(s) ({channels})")
        size = self.size
        if size is None and shape is not None:
            size = (shape[h_axis], shape[w_axis])
        if size is None or None in size:
            raise OnnxPruneError(f"the image size of input '{name}' is not known"
                                 f"{f' (shape {dims(shape)})' if shape else ''}; give it with "
                                 "--calib-preprocess size=H,W")
        if shape is not None and (shape[h_axis], shape[w_axis]) != tuple(size) \
                and None not in (shape[h_axis], shape[w_axis]):
            raise OnnxPruneError(f"--calib-preprocess size={size[0]},{size[1]} does not fit the model's "
                                 f"input '{name}' of shape {dims(shape)} ({layout})")
        return replace(self, size=tuple(size), channels=channels, layout=layout)

    def apply(self, image) -> np.ndarray:
        """A Pillow image -> one float32 sample, (C, H, W) or (H, W, C). Call on a
        `for_input` result (every field fixed)."""
        from PIL import Image
        mode = "L" if self.channels == "L" else "RGB"
        image = image.convert(mode).resize((self.size[1], self.size[0]), Image.BILINEAR)  # Pillow: (W, H)
        x = np.asarray(image, dtype=np.float32)
        x = x[:, :, None] if x.ndim == 2 else x
        if self.channels == "BGR":
            x = x[:, :, ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x / np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "NCHW" else x, dtype=np.float32)


def _bad_spec(spec: str, why: str):
    raise OnnxPruneError(f"bad --calib-preprocess '{spec}': {why}")


def _floats(spec, value) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        _bad_spec(spec, f"'{value}' is not a comma-separated list of numbers")


def _parse_size(spec, value) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        _bad_spec(spec, f"size needs two positive integers H,W, got '{value}'")
    return int(parts[0]), int(parts[1])


def _parse_scale(spec, value) -> float:
    values = _floats(spec, value)
    if len(values) != 1:
        _bad_spec(spec, f"scale needs one number, got '{value}'")
    return values[0]


def _choice(key, choices):
    def parse(spec, value):
        if value.upper() not in choices:
            _bad_spec(spec, f"{key} must be one of {'|'.join(choices)}, got '{value}'")
        return value.upper()
    return parse


_SPEC_PARSERS = {"size": _parse_size, "channels": _choice("channels", ("RGB", "BGR", "L")),
                 "scale": _parse_scale, "mean": _floats, "std": _floats,
                 "layout": _choice("layout", ("NCHW", "NHWC"))}


def _guess_layout(shape) -> str:
    if shape and shape[1] not in (1, 3) and shape[3] in (1, 3):
        return "NHWC"
    return "NCHW"


def dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise OnnxPruneError("reading a folder of images needs Pillow, which is not installed: "
                             "pip install pillow") from None
    return Image


class ImageFiles:
    """Image files of one input, decoded and preprocessed per batch."""

    def __init__(self, name: str, files: list[str], preprocess: Preprocess, key, where: str):
        self.name, self.files, self.preprocess, self.key, self.where = name, files, preprocess, key, where
        self.kind = "images"

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        Image = _pillow()
        samples = []
        for i in ids:
            path = self.files[i]
            try:
                with Image.open(path) as image:
                    samples.append(self.preprocess.apply(image))
            except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError for damaged files
                raise OnnxPruneError(f"cannot read image {path}: {reason(e)}") from None
        return {self.name: np.stack(samples)}

    def sample_shapes(self):
        h, w = self.preprocess.size
        c = 1 if self.preprocess.channels == "L" else 3
        return {self.name: (c, h, w) if self.preprocess.layout == "NCHW" else (h, w, c)}

    def dtypes(self):
        return {self.name: np.dtype(np.float32)}


def reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    if "allow_pickle" in text or "Object arrays" in text:
        text = "it holds Python objects (pickled), which are never loaded; store numeric arrays"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def image_files(folder: str, spec: dict, limit, preprocess: Preprocess) -> "ImageFiles":
    """The images of a folder (sorted, the first `limit`), each checked readable now."""
    if len(spec) != 1:
        raise OnnxPruneError(f"a folder of images feeds a single input; the model has inputs {list(spec)}: "
                             "use an .npz keyed by input name")
    name, shape = next(iter(spec.items()))
    preprocess = preprocess.for_input(name, shape)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
                   and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise OnnxPruneError(f"no images (PNG, JPEG, BMP) in {folder}")
    files = files[:limit] if limit is not None else files
    Image = _pillow()
    for path in files:  # fail now, not in the middle of a recovery pass
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:  # verify raises several types for damaged files
            raise OnnxPruneError(f"cannot read image {path}: {reason(e)}") from None
    return ImageFiles(name, files, preprocess, ("file", os.path.realpath(folder)), folder)
