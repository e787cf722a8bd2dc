"""Calibration data: a few hundred unlabelled model inputs, read once, streamed in batches.

Recovery passes (docs/methods.md §5) collect statistics from these inputs; fidelity
(`onnxprune/fidelity.py`) measures the pruned model on *other* inputs. `split` gives two
disjoint sets from one source, and `CalibrationSet.overlap` counts shared samples.

Sources (`load_calibration`)
----------------------------
* ``data.npz``: one array per model input, keyed by the input's name, plus an optional
  integer labels array under `labels_key` (default ``labels``). Axis 0 of every array is
  the sample axis: an input of shape ``[N, 3, 224, 224]`` is stored as ``(S, 3, 224, 224)``
  for S samples. npz members are read into memory.
* ``data.npy``: the same for a model with a single input. It is memory-mapped: batches
  read only their own samples.
* a folder of images (``.png``, ``.jpg``/``.jpeg``, ``.bmp``, top level only, sorted by
  name) for a single image input. Files are checked when loading and decoded per batch.
  Reading them needs Pillow (``pip install pillow``).
* ``synthetic`` (the word itself): images made of 1/f noise for a single image input, no
  data at all (onnxprune/synthetic.py); `limit` is their number (256 by default) and the
  preprocessing's mean, std and layout apply.
* from Python, a dict ``{input_name: array}`` (an .npz in memory), or an iterable of such
  feed dicts. Each dict is a *batch*:
  axis 0 is the sample axis, as in the npz (one sample is an array of shape
  ``(1, ...)``). A dict may also hold labels under `labels_key`. The iterable is read once,
  into memory; with `limit`, reading stops after `limit` samples, so an endless
  generator is fine.

`input_names` describes the model: a list of input names, a mapping
``{name: shape}`` (dimensions as ints, None or a string for dynamic ones), or the model
itself (a path, a ``ModelProto`` or an ``onnxprune.model.Model``). With shapes, every
sample is checked against the static dimensions, and image preprocessing takes the
image size and channels from the input's shape.

Image preprocessing (``--calib-preprocess SPEC``)
-------------------------------------------------
SPEC is ``key=value`` pairs separated by ``;``; list values are separated by ``,``::

    size=224,224;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;scale=255;layout=NCHW;channels=RGB

========  ===========================================================================
key       meaning (default)
========  ===========================================================================
size      H,W: resize to height H and width W with Pillow's bilinear filter, which
          also antialiases when shrinking (the input's static H and W)
channels  RGB, BGR or L (grayscale) (from the input's channel dimension: 1 → L, 3 → RGB)
scale     pixel values are divided by it first (255)
mean      subtracted after scaling: one value, or one per channel (0)
std       divides after the mean: one value, or one per channel (1)
layout    NCHW or NHWC (from the input's shape: a channel dimension of 1 or 3 at axis 1
          → NCHW, at axis 3 → NHWC; NCHW otherwise)
========  ===========================================================================

So a pixel p of channel c becomes ``(p / scale - mean[c]) / std[c]``, as float32.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx

from .errors import OnnxPruneError
from .images import Preprocess, dims as _dims, image_files, reason as _reason
from .synthetic import DEFAULT_SAMPLES, SYNTHETIC, is_synthetic, synthetic_arrays

_FINITE_CHUNK = 1 << 22  # elements checked at a time, so a memory-mapped .npy is never read whole


# ---------------------------------------------------------------------------------------
# What the model takes
# ---------------------------------------------------------------------------------------
def model_inputs(model) -> dict[str, tuple | None]:
    """{input name: shape} of a path, ModelProto or onnxprune Model; dynamic dims are None.
    Initializers listed as inputs (old exporters) are not inputs to feed."""
    from .model import Model
    if isinstance(model, Model):
        return {n: tuple(model.shapes[n]) if n in model.shapes else None for n in model.input_names}
    if not isinstance(model, onnx.ModelProto):
        path = os.fspath(model)
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:
            raise OnnxPruneError(f"cannot read model {path}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'unreadable'}") from None
    inits = {t.name for t in model.graph.initializer}
    return {i.name: _proto_shape(i) for i in model.graph.input if i.name not in inits}


def _proto_shape(value_info) -> tuple | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


def _input_spec(input_names) -> dict[str, tuple | None]:
    if isinstance(input_names, Mapping):
        return {str(k): None if v is None else tuple(d if isinstance(d, int) and d > 0 else None for d in v)
                for k, v in input_names.items()}
    if isinstance(input_names, (list, tuple)):
        return {str(n): None for n in input_names}
    return model_inputs(input_names)


# ---------------------------------------------------------------------------------------
# Where samples come from
# ---------------------------------------------------------------------------------------
class _Arrays:
    """Samples held as arrays (in memory, or a memory map for .npy), axis 0 = sample."""

    def __init__(self, arrays: dict[str, np.ndarray], key, where: str, kind: str):
        self.arrays, self.key, self.where, self.kind = arrays, key, where, kind

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        if len(ids) and ids[-1] - ids[0] == len(ids) - 1:  # consecutive (ids are sorted): a view
            return {n: a[ids[0]:ids[-1] + 1] for n, a in self.arrays.items()}
        return {n: a[ids] for n, a in self.arrays.items()}

    def sample_shapes(self):
        return {n: a.shape[1:] for n, a in self.arrays.items()}

    def dtypes(self):
        return {n: a.dtype for n, a in self.arrays.items()}


# ---------------------------------------------------------------------------------------
# The set
# ---------------------------------------------------------------------------------------
class CalibrationSet:
    """Samples of a model's inputs, optionally labelled, read in batches.

    `split` and `limit` give sets over the same source: nothing is copied until a batch
    is read."""

    def __init__(self, source, ids: np.ndarray, labels: np.ndarray | None, preprocess: Preprocess | None = None):
        self._source, self._ids = source, np.asarray(ids, dtype=np.int64)
        self._labels, self.preprocess = labels, preprocess

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def n_samples(self) -> int:
        return len(self._ids)

    @property
    def input_names(self) -> list[str]:
        return list(self._source.sample_shapes())

    @property
    def sample_shapes(self) -> dict[str, tuple]:
        """{input: shape of one sample}, without the sample axis."""
        return {n: tuple(s) for n, s in self._source.sample_shapes().items()}

    @property
    def labels(self) -> np.ndarray | None:
        """int64 class per sample, or None."""
        return None if self._labels is None else self._labels[self._ids]

    def batches(self, batch_size: int, dtype=None) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts of at most `batch_size` samples, in order. Only one batch is in memory
        at a time (consecutive samples of an array source are views). `dtype`: one numpy
        dtype for every input, or {input: dtype}; None keeps the stored dtypes (float32
        for images)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise OnnxPruneError(f"batch size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self._ids), batch_size):
            feeds = self._source.read(self._ids[start:start + batch_size])
            yield _cast(feeds, dtype)

    def split(self, holdout_fraction: float, seed: int = 0) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration, held_out): disjoint, together all samples, the same for the same
        (size, fraction, seed). Each keeps the source order."""
        n = len(self)
        if not 0 < holdout_fraction < 1:
            raise OnnxPruneError(f"the held-out fraction must be in (0, 1), got {holdout_fraction}")
        if n < 2:
            raise OnnxPruneError(f"cannot split {n} sample(s) into calibration and held-out sets")
        n_hold = min(max(int(round(holdout_fraction * n)), 1), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        held = np.sort(order[:n_hold])
        calib = np.sort(order[n_hold:])
        return self._subset(calib), self._subset(held)

    def head(self, n: int) -> "CalibrationSet":
        """The first n samples."""
        return self._subset(np.arange(min(n, len(self))))

    def overlap(self, other: "CalibrationSet") -> int:
        """Samples the two sets share (same file or same loaded source); 0 otherwise."""
        if self._source.key != other._source.key:
            return 0
        return int(np.intersect1d(self._ids, other._ids).size)

    def describe(self) -> dict:
        """For the JSON report."""
        dtypes = self._source.dtypes()
        return {"source": self._source.where, "kind": self._source.kind, "samples": len(self),
                "inputs": {n: {"sample_shape": list(s), "dtype": str(dtypes[n])}
                           for n, s in self.sample_shapes.items()},
                "labels": self._labels is not None,
                "preprocess": self.preprocess.to_spec() if self.preprocess else None}

    def __repr__(self) -> str:
        return f"CalibrationSet({len(self)} samples from {self._source.where})"

    def _subset(self, positions: np.ndarray) -> "CalibrationSet":
        return CalibrationSet(self._source, self._ids[positions], self._labels, self.preprocess)


def _cast(feeds: dict, dtype) -> dict:
    if dtype is None:
        return feeds
    wanted = dtype if isinstance(dtype, Mapping) else dict.fromkeys(feeds, dtype)
    return {n: a if n not in wanted or wanted[n] is None else a.astype(wanted[n], copy=False)
            for n, a in feeds.items()}


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def load_calibration(source, input_names, *, limit: int | None = None, preprocess=None,
                     labels_key: str = "labels", seed: int = 0) -> CalibrationSet:
    """Samples of the model's inputs from an .npz, an .npy, a folder of images or an
    iterable of feed dicts (see the module docstring). `limit` keeps the first N samples.
    `preprocess` (a spec string or a `Preprocess`) applies to image folders only. Every
    problem raises a one-line OnnxPruneError."""
    spec = _input_spec(input_names)
    if not spec:
        raise OnnxPruneError("the model has no inputs to calibrate")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise OnnxPruneError(f"--calib-limit must be a positive integer, got {limit!r}")
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    if is_synthetic(source):   # data-free: 1/f noise images (onnxprune/synthetic.py)
        arrays, how = synthetic_arrays(spec, preprocess, limit or DEFAULT_SAMPLES, seed,
                                       model=None if isinstance(input_names, (Mapping, list, tuple)) else input_names)
        return _from_arrays(arrays, None, spec, None, where=f"synthetic images (1/f noise; {how})",
                            key=("synthetic", seed), kind=SYNTHETIC, labels_key=labels_key)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _load_images(path, spec, limit, preprocess or Preprocess())
        if preprocess is not None:
            raise OnnxPruneError("--calib-preprocess applies to a folder of images; "
                                 f"{path} holds arrays, which are fed as they are")
        return _load_file(path, spec, limit, labels_key)
    if preprocess is not None:
        raise OnnxPruneError("--calib-preprocess applies to a folder of images, not to arrays")
    if isinstance(source, Mapping):   # one dict of arrays: an in-memory .npz, i.e. one batch
        source = [source]
    if not isinstance(source, Iterable):
        raise OnnxPruneError("calibration data must be a path (.npz, .npy, folder of images), a dict "
                             "of arrays keyed by input name, or an iterable of such dicts (batches), "
                             f"got {type(source).__name__}")
    return _load_feeds(source, spec, limit, labels_key)


def _load_file(path: str, spec: dict, limit, labels_key: str) -> CalibrationSet:
    if not os.path.exists(path):
        raise OnnxPruneError(f"calibration data not found: {path}")
    if os.path.getsize(path) == 0:
        raise OnnxPruneError(f"calibration file is empty: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        arrays = _read_npz(path, spec, labels_key)
        labels = arrays.pop(labels_key, None)
    elif ext == ".npy":
        if len(spec) != 1:
            raise OnnxPruneError(f"an .npy file feeds a single input; the model has inputs {list(spec)}: "
                                 "use an .npz keyed by input name")
        arrays, labels = {next(iter(spec)): _read_npy(path)}, None
    else:
        raise OnnxPruneError(f"calibration data must be an .npz, an .npy or a folder of images, got {path}")
    return _from_arrays(arrays, labels, spec, limit, where=path, key=("file", os.path.realpath(path)),
                        kind=ext[1:], labels_key=labels_key)


def _read_npz(path: str, spec: dict, labels_key: str) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # BadZipFile, ValueError, OSError
        raise OnnxPruneError(f"cannot read calibration file {path}: {_reason(e)}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise OnnxPruneError(f"{path} is not an .npz archive (it holds a single array)")
    with npz:
        _check_keys(list(npz.files), spec, path, labels_key)
        try:
            return {k: npz[k] for k in npz.files}
        except Exception as e:  # a damaged member: BadZipFile (CRC), zlib.error, ValueError (pickled)
            raise OnnxPruneError(f"cannot read calibration file {path}: {_reason(e)}") from None


def _read_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise OnnxPruneError(f"cannot read calibration file {path}: {_reason(e)}") from None
    if not isinstance(array, np.ndarray):
        raise OnnxPruneError(f"{path} is not an .npy array")
    return array


def _check_keys(keys, spec: dict, where: str, labels_key: str) -> None:
    given = [k for k in keys if k != labels_key]
    missing = [n for n in spec if n not in given]
    unknown = [k for k in given if k not in spec]
    if missing or unknown:
        parts = ([f"no array for input(s) {missing}"] if missing else []) + \
                ([f"unknown key(s) {unknown}"] if unknown else [])
        raise OnnxPruneError(f"{where}: {' and '.join(parts)}; the model's inputs are {list(spec)}"
                             f" (labels go under '{labels_key}')")


def _load_feeds(feeds: Iterable, spec: dict, limit, labels_key: str) -> CalibrationSet:
    """Reads the batches into memory: a few hundred samples, and no second pass over a
    generator."""
    parts: dict[str, list] = {}
    count = labelled = 0
    for k, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise OnnxPruneError(f"calibration batch {k} is a {type(feed).__name__}, not a dict "
                                 "{input name: array}")
        _check_keys(list(feed), spec, f"calibration batch {k}", labels_key)
        batch = {n: _as_batch(a, n, f"calibration batch {k}") for n, a in feed.items()}
        _check_counts(batch, f"calibration batch {k}")
        take = len(next(iter(batch.values())))
        if limit is not None:
            take = min(take, limit - count)
        for n, a in batch.items():
            parts.setdefault(n, []).append(a[:take])
        count += take
        labelled += labels_key in batch
        if limit is not None and count >= limit:
            break
    if not parts:
        raise OnnxPruneError("the calibration data yielded no batches")
    if labelled not in (0, len(parts[next(iter(spec))])):
        raise OnnxPruneError(f"some calibration batches have labels ('{labels_key}') and others do not")
    arrays = {}
    for n, chunks in parts.items():
        shapes = {c.shape[1:] for c in chunks}
        if len(shapes) > 1:
            raise OnnxPruneError(f"calibration batches of input '{n}' have different sample shapes "
                                 f"{sorted(shapes)}")
        # one batch (a dict of arrays) is used as it is: no second copy of a large set
        arrays[n] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    labels = arrays.pop(labels_key, None)
    return _from_arrays(arrays, labels, spec, None, where="<iterable>", key=("iterable", object()),
                        kind="iterable", labels_key=labels_key)


def _as_batch(value, name: str, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return _nonscalar(value, name, where)  # as it is: a memory map stays one
    try:
        a = np.asarray(value)
    except Exception as e:
        raise OnnxPruneError(f"{where}: '{name}' is not an array ({_reason(e)})") from None
    return _nonscalar(a, name, where)


def _nonscalar(a: np.ndarray, name: str, where: str) -> np.ndarray:
    if a.ndim == 0:
        raise OnnxPruneError(f"{where}: '{name}' is a scalar; axis 0 of every array is the sample axis")
    return a


def _check_counts(arrays: dict, where: str) -> None:
    counts = {n: len(a) for n, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise OnnxPruneError(f"{where}: inputs have different numbers of samples {counts}")


def _from_arrays(arrays: dict, labels, spec: dict, limit, *, where: str, key, kind: str,
                 labels_key: str) -> CalibrationSet:
    arrays = {n: _as_batch(a, n, where) for n, a in arrays.items()}
    _check_counts(arrays, where)
    n = len(next(iter(arrays.values())))
    if labels is not None and len(_as_batch(labels, labels_key, where)) != n:
        raise OnnxPruneError(f"{where}: {len(labels)} labels ('{labels_key}') for {n} samples")
    if n == 0:
        raise OnnxPruneError(f"{where} holds no samples")
    if limit is not None:  # the first `limit` samples: views, nothing else is validated or read
        arrays = {k: a[:limit] for k, a in arrays.items()}
        labels = None if labels is None else labels[:limit]
        n = min(n, limit)
    for name, a in arrays.items():
        _check_array(name, a, spec[name], where)
    labels = None if labels is None else _check_labels(np.asarray(labels), labels_key, where)
    source = _Arrays({name: arrays[name] for name in spec}, key, where, kind)
    return CalibrationSet(source, np.arange(n), labels)


def _check_array(name: str, a: np.ndarray, shape, where: str) -> None:
    numeric = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_
    if not numeric:
        raise OnnxPruneError(f"{where}: input '{name}' has dtype {a.dtype}; calibration arrays "
                             "must be numeric (integer, float or bool)")
    if shape is not None:
        if a.ndim != len(shape):
            raise OnnxPruneError(f"{where}: input '{name}' has shape {a.shape} (rank {a.ndim}); the model "
                                 f"takes {_dims(shape)} (rank {len(shape)}), axis 0 being the sample axis")
        bad = [k for k in range(1, a.ndim) if shape[k] is not None and shape[k] != a.shape[k]]
        if bad:
            raise OnnxPruneError(f"{where}: samples of input '{name}' have shape {a.shape[1:]}; the model "
                                 f"takes {_dims(shape)} (axis 0 is the sample axis)")
    if np.issubdtype(a.dtype, np.inexact):
        flat = a.reshape(-1)  # a view for the contiguous arrays np.load returns
        for start in range(0, flat.size, _FINITE_CHUNK):
            if not np.isfinite(flat[start:start + _FINITE_CHUNK]).all():
                raise OnnxPruneError(f"{where}: input '{name}' holds NaN or infinite values")


def _check_labels(labels: np.ndarray, labels_key: str, where: str) -> np.ndarray:
    if labels.ndim != 1:
        raise OnnxPruneError(f"{where}: labels '{labels_key}' must be one integer class per sample, "
                             f"got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() \
            and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise OnnxPruneError(f"{where}: labels '{labels_key}' must be non-negative integer classes "
                             f"(got dtype {labels.dtype})")
    return labels.astype(np.int64)


def _load_images(folder: str, spec: dict, limit, preprocess: Preprocess) -> CalibrationSet:
    source = image_files(folder, spec, limit, preprocess)
    return CalibrationSet(source, np.arange(len(source.files)), None, source.preprocess)
