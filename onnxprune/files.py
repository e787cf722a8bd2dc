"""Reading a model: the file, its tensors and its external data, checked before use.

A broken or hostile model is bad input: every tensor is checked against its declared type
and dims (a data type ONNX does not have, negative or overflowing dims, data of the wrong
length), and every external-data reference against the file it names: a plain relative
path that stays inside the model's folder (no `..`, no absolute path, no symbolic link, as
onnx's own loader requires), a regular file, offset and length within it. Each problem is
one line naming the tensor, instead of a failure deep inside numpy or onnxruntime, or a
file from elsewhere copied into the output.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from .errors import OnnxPruneError

_T = onnx.TensorProto
_TENSOR_TYPES = set(onnx.helper.get_all_tensor_dtypes()) - {_T.UNDEFINED}
# Types stored several to a byte, in raw data: bits per element (int32_data: one byte per entry).
_PACKED_BITS = {getattr(_T, name): bits for name, bits in
                (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                 ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)) if hasattr(_T, name)}
_MAX_BYTES = 2**62  # more than any file or memory holds: dims beyond this are broken, not big


def shown(path) -> str:
    """A path as it goes into a one-line message: control characters (a newline) escaped."""
    text = os.fspath(path)
    return text if text.isprintable() else repr(text)


def read_proto(source) -> onnx.ModelProto:
    """A ModelProto from a path or a proto, with external data loaded; clear errors."""
    proto, base, _ = _read(source)
    if base is not None:
        for t in _all_tensors(proto.graph):
            if uses_external_data(t):
                _load_in_place(t, base, os.fspath(source))
    return proto


def _read(source) -> tuple[onnx.ModelProto, str | None, bytes | None]:
    """The proto with external-data initializers left as references (checked against their
    files), the folder their paths are relative to, and the file's bytes (both None for an
    in-memory proto): the checker reads those bytes instead of reading the file a second time.
    External tensors elsewhere (Constant nodes, sparse initializers) are small: they are
    loaded here, from the model's folder, so nothing later resolves them against the cwd."""
    if isinstance(source, onnx.ModelProto):
        _refuse_unloaded_external_data(source)
        _check_tensors(source, "the model")
        return source, None, None
    path = os.fspath(source)
    if not os.path.exists(path):
        raise OnnxPruneError(f"input file not found: {shown(path)}")
    if not os.path.isfile(path):
        raise OnnxPruneError(f"input is not a file: {shown(path)}")
    if os.path.getsize(path) == 0:
        raise OnnxPruneError(f"input file is empty: {shown(path)}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise OnnxPruneError(f"{shown(path)} is not a readable ONNX model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'cannot parse'})") from None
    if not proto.graph.node and not proto.graph.output:
        raise OnnxPruneError(f"{shown(path)} is not an ONNX model (no graph found)")
    base = os.path.dirname(os.path.abspath(path))
    _check_tensors(proto, path)
    for t in proto.graph.initializer:   # fail now, clearly, if a data file is missing or hostile
        if uses_external_data(t):
            _external_array(t, base, path)   # mapped when loaded, not read
    for t in _tensors_besides_initializers(proto.graph):
        if uses_external_data(t):
            _load_in_place(t, base, path)
    return proto, base, data


def external_data_files(path) -> list[str]:
    """The real paths of the files that the model at `path` reads its external data from
    (an unreadable model, or a reference that loading refuses, gives none: loading reports it)."""
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:
        return []
    base = os.path.dirname(os.path.abspath(path))
    files = []
    for t in _all_tensors(proto.graph):
        if uses_external_data(t):
            try:
                file = _external_file(t, base, path)
            except OnnxPruneError:
                continue
            if file not in files:
                files.append(file)
    return files


def _all_tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph: initializers, sparse initializers, node attributes,
    and the same inside subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    yield from _tensors_besides_initializers(graph)


def _tensors_besides_initializers(graph: onnx.GraphProto):
    """_all_tensors without the graph's own initializers. (Protobuf hands out a new Python
    object at each access, so initializers cannot be told apart from the rest by id().)"""
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_tensors(g)


def _refuse_unloaded_external_data(proto: onnx.ModelProto) -> None:
    t = next((t for t in _all_tensors(proto.graph) if uses_external_data(t)), None)
    if t is not None:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        raise OnnxPruneError(
            f"the model's external data is not loaded (tensor {t.name!r} refers to {location!r}): "
            "load the model with onnx.load(path) (load_external_data=True, the default) or "
            "onnx.load_external_data_for_model(model, folder), or pass its path instead")


# -- tensors -----------------------------------------------------------------------------
def _check_tensors(proto: onnx.ModelProto, where: str) -> None:
    for t in _all_tensors(proto.graph):
        _check_tensor(t, where)


def _broken(t: onnx.TensorProto, where: str, problem: str) -> OnnxPruneError:
    return OnnxPruneError(f"broken tensor {t.name!r} in {shown(where)}: {problem}")


def _check_tensor(t: onnx.TensorProto, where: str) -> None:
    """Type, dims and (for data held in the model) the data's length. External data is
    checked against its file by `_external_array`."""
    if t.data_type not in _TENSOR_TYPES:
        raise _broken(t, where, f"data type {t.data_type} is not an ONNX tensor type")
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise _broken(t, where, f"negative dimension in dims {dims}")
    if _nbytes(t) > _MAX_BYTES:
        raise _broken(t, where, f"the element count of dims {dims} overflows")
    if t.HasField("segment"):
        raise _broken(t, where, "segmented tensors are not supported")
    if uses_external_data(t):
        return
    if t.HasField("raw_data"):
        if t.data_type == _T.STRING:
            raise _broken(t, where, "STRING data cannot be stored in raw_data")
        got, need = len(t.raw_data), _nbytes(t)
        if got != need:
            raise _broken(t, where, f"raw_data holds {got} bytes, dims {dims} of {_type_name(t)} "
                                    f"need {need}")
        return
    field = onnx.helper.tensor_dtype_to_field(t.data_type)
    got, need = len(getattr(t, field)), _values_needed(t)
    if got != need:
        raise _broken(t, where, f"{field} holds {got} values, dims {dims} of {_type_name(t)} need {need}")


def _count(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d  # Python integers: no overflow, and (2**40)**2 is seen as the nonsense it is
    return n


def _nbytes(t: onnx.TensorProto) -> int:
    """Bytes of the tensor's data in raw (and external) form."""
    bits = _PACKED_BITS.get(t.data_type)
    if bits is None:
        bits = 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return (_count(t) * bits + 7) // 8


def _values_needed(t: onnx.TensorProto) -> int:
    """Entries of the typed field (float_data, int32_data, ...) that numpy_helper reads."""
    n = _count(t)
    if t.data_type in (_T.COMPLEX64, _T.COMPLEX128):
        return 2 * n
    bits = _PACKED_BITS.get(t.data_type)
    if bits in (2, 4):  # one byte of packed elements per int32_data entry
        return (n * bits + 7) // 8
    return n


def _type_name(t: onnx.TensorProto) -> str:
    return _T.DataType.Name(t.data_type)


# -- external data -----------------------------------------------------------------------
def _external_entries(t: onnx.TensorProto, path: str) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor, as non-negative integers."""
    info = {e.key: e.value for e in t.external_data}
    numbers = []
    for key in ("offset", "length"):
        value = info.get(key)
        if value is None:
            numbers.append(None)
            continue
        if not (value.isascii() and value.isdigit()):
            raise _external_error(path, t, f"has {key} {value!r}, not a non-negative integer")
        numbers.append(int(value))
    return info.get("location", ""), numbers[0] or 0, numbers[1]


def _external_error(path: str, t: onnx.TensorProto, problem: str) -> OnnxPruneError:
    return OnnxPruneError(f"cannot load external data of {shown(path)}: tensor {t.name!r} {problem}")


def _external_file(t: onnx.TensorProto, base: str, path: str) -> str:
    """The real path of a tensor's data file: a plain relative path, inside the model's
    folder, with no symbolic link on the way (onnx's loader refuses those too), to a
    regular file."""
    location = _external_entries(t, path)[0]
    if not location:
        raise _external_error(path, t, "has no external data location")
    parts = location.split("/")
    if (os.path.isabs(location) or ".." in parts
            or any(ord(c) < 32 or c == "\x7f" for c in location)):
        raise _external_error(path, t, f"has external data location {location!r}, which is not "
                                       "a plain relative path inside the model's folder")
    root = os.path.realpath(base)
    file = os.path.normpath(os.path.join(root, location))
    real = os.path.realpath(file)
    if os.path.commonpath([real, root]) != root:
        raise _external_error(path, t, f"has external data location {location!r}, which "
                                       f"resolves outside the model's folder {shown(root)}")
    if real != file:
        raise _external_error(path, t, f"has external data location {location!r}, which goes "
                                       "through a symbolic link")
    if not os.path.exists(file):
        raise _external_error(path, t, f"should be stored in {shown(file)}, which is missing")
    if not os.path.isfile(file):
        raise _external_error(path, t, f"should be stored in {shown(file)}, which is not a regular file")
    return file


def _checked_external(t: onnx.TensorProto, base: str, path: str) -> tuple[str, int, int]:
    """(file, offset, byte count) of an external tensor, all checked against the file."""
    file = _external_file(t, base, path)
    _, offset, length = _external_entries(t, path)
    nbytes = _nbytes(t)
    if t.data_type == _T.STRING:
        raise _external_error(path, t, "holds STRING data, which cannot be stored externally")
    if length is not None and length != nbytes:
        raise _external_error(path, t, f"has length {length}, but dims {list(t.dims)} of "
                                       f"{_type_name(t)} need {nbytes} bytes")
    size = os.path.getsize(file)
    if offset + nbytes > size:
        raise _external_error(path, t, f"needs bytes {offset} to {offset + nbytes} of {shown(file)}, "
                                       f"which holds {size}")
    return file, offset, nbytes


def _external_array(t: onnx.TensorProto, base: str, path: str) -> np.ndarray:
    """A read-only memory map of an external-data tensor: nothing is read until used, so a
    model of several GB costs little memory until its weights are sliced."""
    file, offset, nbytes = _checked_external(t, base, path)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    shape = tuple(t.dims)
    if nbytes == 0:
        return np.zeros(shape, dtype)
    if t.data_type in _PACKED_BITS:  # several elements a byte: numpy_helper unpacks them
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        _set_raw(copy, _read_bytes(file, offset, nbytes))
        return numpy_helper.to_array(copy)
    return np.memmap(file, dtype=dtype.newbyteorder("<"), mode="r", offset=offset, shape=shape)


def _load_in_place(t: onnx.TensorProto, base: str, path: str) -> None:
    """Replace an external reference by the (checked) bytes it points to."""
    _set_raw(t, _read_bytes(*_checked_external(t, base, path)))


def _read_bytes(file: str, offset: int, nbytes: int) -> bytes:
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(nbytes)


def _set_raw(t: onnx.TensorProto, data: bytes) -> None:
    t.raw_data = data
    t.data_location = _T.DEFAULT
    del t.external_data[:]


# -- the ONNX checker ----------------------------------------------------------------------
def _check_input(proto_or_path) -> None:
    """The ONNX checker, on the file's bytes or path when there is one (an in-memory proto
    has to be serialised first)."""
    if isinstance(proto_or_path, onnx.ModelProto) and not _small_enough_to_size(proto_or_path):
        return  # checked on the output instead: protobuf cannot serialise > 2 GB
    try:
        onnx.checker.check_model(proto_or_path)
    except onnx.checker.ValidationError as e:
        message = " ".join(str(e).split()) or "invalid model"
        if len(message) > 400:
            message = message[:400] + " ..."
        raise OnnxPruneError(f"input fails the ONNX checker: {message}") from None
    except ValueError:
        pass  # >2 GB protos cannot be checked in memory; the output is checked instead


def _small_enough_to_size(proto) -> bool:
    return sum(t.ByteSize() for t in proto.graph.initializer) < 1_500_000_000
