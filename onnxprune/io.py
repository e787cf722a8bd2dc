"""Saving: atomic (temporary file, then rename), deterministic, external data past 2 GB."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from .errors import OnnxPruneError

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf cannot hold more than 2 GB


def is_large(model) -> bool:
    """Whether a Model's weights need external data (and checks from the saved file)."""
    return sum(a.nbytes for a in model.inits.values()) > EXTERNAL_DATA_THRESHOLD


def save_model(model, path: str, check: bool = False) -> None:
    """Save a `Model`. Small ones go through `save` (with `check`, the bytes are checked
    before anything is written); large ones, and models whose input kept its weights in
    external data, are streamed: each array is written straight into the external-data
    file `<out>.data`, so no large proto is ever built (nor its bytes), then the saved file
    always gets the full ONNX check."""
    if not is_large(model) and not model.external_data:
        return save(model.to_proto(), path, check)
    path = os.fspath(path)
    directory = _writable_directory(path)
    data_name = os.path.basename(path) + ".data"
    tmp_model = tmp_data = None
    try:
        fd, tmp_model = tempfile.mkstemp(prefix=".onnxprune-", suffix=".onnx", dir=directory)
        os.close(fd)
        tmp_data = tmp_model + ".data"
        structure = model.to_proto(with_initializers=False)
        with open(tmp_data, "wb") as f:
            for name, array in model.inits.items():
                structure.graph.initializer.append(_external_tensor(name, array, f, data_name))
        with open(tmp_model, "wb") as f:
            f.write(structure.SerializeToString(deterministic=True))
        for tmp in (tmp_model, tmp_data):
            os.chmod(tmp, file_mode(path))
        os.replace(tmp_data, os.path.join(directory, data_name))
        os.replace(tmp_model, path)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for leftover in (tmp_model, tmp_data):
            if leftover and os.path.exists(leftover):
                os.remove(leftover)
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:
        raise OnnxPruneError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0]}") from None


def _external_tensor(name, array, f, location: str) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.name = name
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    t.dims.extend(array.shape)
    offset = f.tell()
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    f.write(memoryview(data).cast("B") if data.size else b"")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(f.tell() - offset))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _writable_directory(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OnnxPruneError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise OnnxPruneError(f"cannot write {path}: directory {directory} is not writable")
    return directory


def save(proto: onnx.ModelProto, path: str, check: bool = False) -> None:
    """Atomic save; with `check`, the serialised bytes pass the full ONNX check first."""
    path = os.fspath(path)
    directory = _writable_directory(path)
    large = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    data_name = os.path.basename(path) + ".data"
    mode = file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".onnx", dir=directory)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    tmp_data = tmp + ".data"
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600 files; give the usual permissions
        if large:
            onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(tmp_data), size_threshold=1024)
            _relocate_external_data(tmp, data_name)
            os.replace(tmp_data, os.path.join(directory, data_name))
        else:
            data = proto.SerializeToString(deterministic=True)
            if check:
                from .verify import check as check_bytes
                check_bytes(data)
            with open(tmp, "wb") as f:
                f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for leftover in (tmp, tmp_data):
            if os.path.exists(leftover):
                os.remove(leftover)


def file_mode(path: str) -> int:
    """Permissions for a file written at `path`: those of the file it replaces, else
    0666 minus the umask (what open() would give)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _relocate_external_data(model_path: str, data_name: str) -> None:
    """Point the saved model's external-data entries at the final data file name."""
    m = onnx.load(model_path, load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = data_name
    with open(model_path, "wb") as f:
        f.write(m.SerializeToString(deterministic=True))
