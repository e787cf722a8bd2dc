"""Saving: atomic (temporary file, then rename), deterministic, external data past 2 GB.

And what makes writing safe whatever the paths given and whatever happens meanwhile:

* `check_targets` compares every path written (the model, its external-data file, the
  report, the plan) with every path read (the model, its external-data files, the plan)
  and with each other, as real files (symbolic and hard links, other spellings), before
  any work.
* A regular file is written through a temporary file renamed over it. An existing
  character device or FIFO (/dev/null, a pipe) is written in place: renaming over it
  would replace the device by a file. Other kinds of file are refused.
* Temporary files never outlive the run: SIGINT and SIGTERM remove them before the
  process stops, and the model and its external-data file are renamed into place as one
  step (a signal waits until both are in place; a failed rename puts the old data back).
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import uuid
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InternalError, OnnxPruneError
from .files import shown
from .graph import copy_fields
from .paths import refuse_external_stream as _refuse_external_stream, stream as _stream, write_target as _target, writable_directory as _writable_directory

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf cannot hold more than 2 GB


def is_large(model) -> bool:
    """Whether a Model's weights need external data (and checks from the saved file)."""
    return sum(a.nbytes for a in model.inits.values()) > EXTERNAL_DATA_THRESHOLD


# -- temporary files, signals, and renames that belong together --------------------------
_temporaries: set[str] = set()        # temporary files of ours that exist now
_previous_handlers: dict = {}         # the handlers ours replaced, restored when none is left
_held = 0                             # > 0 while a signal has to wait (renames under way)
_waiting: list[int] = []              # signals that arrived meanwhile
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_signal(signum, frame) -> None:
    if _held:
        _waiting.append(signum)
        return
    _stop(signum, frame)


def _stop(signum, frame) -> None:
    """Remove our temporary files, then let the signal do what it did before: SIGTERM ends
    the process, SIGINT raises KeyboardInterrupt (the CLI prints one line)."""
    for tmp in list(_temporaries):
        try:
            os.remove(tmp)
        except OSError:
            pass
    _temporaries.clear()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
    else:
        signal.raise_signal(signum)


def _install_handlers() -> None:
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only; elsewhere `finally` blocks clean up
    for s in _SIGNALS:
        current = signal.getsignal(s)
        if current not in (signal.SIG_IGN, None):  # an ignored signal stays ignored
            _previous_handlers[s] = current
            signal.signal(s, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        for s, handler in _previous_handlers.items():
            signal.signal(s, handler)
        _previous_handlers.clear()


@contextmanager
def _signals_held():
    """Signals wait until the block is done (then act): for steps that must not be cut."""
    global _held
    _install_handlers()
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _waiting:
            _stop(_waiting.pop(0), None)


def _new_temporary(directory: str, suffix: str) -> str:
    with _signals_held():  # created and recorded in one step: a signal cannot fall between
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=suffix, dir=directory)
        os.close(fd)
        _temporaries.add(tmp)
    return tmp


def _forget(*paths) -> None:
    """Stop tracking temporary files that were renamed or removed."""
    _temporaries.difference_update(paths)
    _temporaries.difference_update([p for p in _temporaries if not os.path.lexists(p)])
    if not _temporaries and not _held:
        _restore_handlers()


def _discard(*paths) -> None:
    """Remove temporary files that are still there (after a failure)."""
    for p in paths:
        if p and os.path.lexists(p):
            os.remove(p)
    _forget(*paths)


def _publish(renames: list[tuple[str, str]]) -> None:
    """Rename temporary files into place as one step: signals wait until all are in place,
    and when a rename fails, the files that the earlier ones replaced are put back."""
    done = []  # (final path, whether it existed, a second name of its previous content)
    kept_names = []
    with _signals_held():
        try:
            for i, (tmp, final) in enumerate(renames):
                last = i == len(renames) - 1  # nothing comes after it that could fail
                existed = os.path.lexists(final)
                kept = None if last or not existed else _second_name(final)
                kept_names.append(kept)
                os.replace(tmp, final)
                _forget(tmp)
                done.append((final, existed, kept))
        except OSError:
            for final, existed, kept in reversed(done):
                if kept:
                    os.replace(kept, final)
                elif not existed:
                    os.remove(final)
            raise
        finally:
            _discard(*kept_names)


def _second_name(path: str) -> str | None:
    """A hard link to the file at `path`, to put it back if a later rename fails (None
    where links are not supported: it cannot be put back then)."""
    kept = os.path.join(os.path.dirname(path), f".onnxprune-{uuid.uuid4().hex}.old")
    with _signals_held():
        try:
            os.link(path, kept, follow_symlinks=False)
        except OSError:
            return None
        _temporaries.add(kept)
    return kept


# -- saving models -----------------------------------------------------------------------
def save_model(model, path: str, check: bool = False) -> None:
    """Save a `Model`. Small ones go through `save` (with `check`, the bytes are checked
    before anything is written); large ones, and models whose input kept its weights in
    external data, go to `<out>.data` (`_save_external`)."""
    if not is_large(model) and not model.external_data:
        return save(model.to_proto(), path, check)
    _save_external(model.to_proto(with_initializers=False), model.inits.items(), os.fspath(path))


def save(proto: onnx.ModelProto, path: str, check: bool = False) -> None:
    """Atomic save; with `check`, the serialised bytes pass the full ONNX check first.
    A character device or FIFO is written in place. Beyond protobuf's 2 GB, the weights go
    to `<out>.data`; `proto` itself is left as it is."""
    path = os.fspath(path)
    if sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD:
        arrays = ((t.name, numpy_helper.to_array(t)) for t in proto.graph.initializer)
        return _save_external(_without_initializers(proto), arrays, path)
    target = _target(path)
    if target.stream:
        return _stream(path, _checked_bytes(proto, check))
    directory = _writable_directory(target.path)
    tmp = None
    try:
        tmp = _new_temporary(directory, ".onnx")
        os.chmod(tmp, file_mode(target.path))  # mkstemp makes 0600 files; give the usual permissions
        _write(tmp, _checked_bytes(proto, check))
        _publish([(tmp, target.path)])
    except OSError as e:
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    finally:
        _discard(tmp)


# Tensors smaller than this stay in the model file (onnx's own external-data default): shape
# inference, and so the checker, reads a Reshape's target shape only from the proto.
INLINE_BYTES = 1024


def _save_external(structure: onnx.ModelProto, arrays, path: str) -> None:
    """Write each array straight into the external-data file `<out>.data`, so that no large
    proto is ever built (nor its bytes); the saved files get the full ONNX check before
    they are renamed into place, together."""
    target = _target(path)
    if target.stream:
        _refuse_external_stream(path)
    directory = _writable_directory(target.path)
    data_name = os.path.basename(target.path) + ".data"
    tmp_model = tmp_data = None
    try:
        tmp_model = _new_temporary(directory, ".onnx")
        tmp_data = _new_temporary(directory, ".data")
        with open(tmp_data, "wb") as f:
            for name, array in arrays:
                structure.graph.initializer.append(
                    numpy_helper.from_array(array, name) if array.nbytes < INLINE_BYTES
                    else _external_tensor(name, array, f, os.path.basename(tmp_data)))
        _write(tmp_model, structure.SerializeToString(deterministic=True))
        _check_saved(tmp_model)
        _relocate(structure, data_name)
        _write(tmp_model, structure.SerializeToString(deterministic=True))
        for tmp in (tmp_model, tmp_data):
            os.chmod(tmp, file_mode(target.path))
        _publish([(tmp_data, os.path.join(directory, data_name)), (tmp_model, target.path)])
    except OSError as e:
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    finally:
        _discard(tmp_model, tmp_data)


def _without_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without its initializers (copying them would double the memory)."""
    structure = onnx.ModelProto()
    copy_fields(proto, structure, skip="graph")
    copy_fields(proto.graph, structure.graph, skip="initializer")
    return structure


def _check_saved(model_path: str) -> None:
    try:
        onnx.checker.check_model(model_path, full_check=True)
    except Exception as e:   # the input passed this check when it was loaded: our bug
        raise InternalError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0]}") from None


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


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


def _relocate(proto: onnx.ModelProto, data_name: str) -> None:
    """Point the model's external-data entries at the final data file name."""
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = data_name


def _checked_bytes(proto: onnx.ModelProto, check: bool) -> bytes:
    data = proto.SerializeToString(deterministic=True)
    if check:
        from .verify import check as check_bytes
        check_bytes(data)
    return data


def file_mode(path: str) -> int:
    """Permissions for a file written at `path`: those of the file it replaces, else
    0666 minus the umask (what open() would give)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# -- report and plan ---------------------------------------------------------------------
def stage_text(path: str, text: str | bytes) -> str:
    """Write `text` (or bytes: a PNG) to a temporary file that `publish_text` puts in place:
    next to `path`, or, for a device or FIFO (written in place), in the system's temporary folder."""
    target = _target(path)
    directory = tempfile.gettempdir() if target.stream else os.path.dirname(target.path)
    try:
        tmp = _new_temporary(directory, ".tmp")
    except OSError as e:
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    try:
        with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.chmod(tmp, file_mode(target.path))
    except OSError as e:
        _discard(tmp)
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    return tmp


def publish_text(tmp: str, path: str) -> None:
    """Put a file staged by `stage_text` in place."""
    target = _target(path)
    try:
        if target.stream:
            with open(tmp, "rb") as f:
                data = f.read()
            _discard(tmp)
            _stream(path, data)
        else:
            _publish([(tmp, target.path)])
    except OSError as e:
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
