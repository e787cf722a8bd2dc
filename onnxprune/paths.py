"""Where the tool writes, checked before any work: every path written (the model, its
external-data file, the report, the plan) against every path read (the model, its
external-data files, the plan) and against each other, as real files (symbolic and hard
links, other spellings). A regular file is written through a temporary file renamed over
it; an existing character device or FIFO (/dev/null, a pipe) is written in place, since
renaming over it would replace the device by a file; other kinds of file are refused."""
from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from .errors import OnnxPruneError
from .files import external_data_files, shown


# -- where a path is written -------------------------------------------------------------
class _Target(NamedTuple):
    path: str      # the file written: the real path of a regular file, else the path given
    stream: bool   # an existing character device or FIFO: opened and written, never renamed over


def write_target(path: str) -> _Target:
    """How `path` is written. A regular file (new or existing) is replaced at its real path,
    through symbolic links, as `open` would write it; a character device or FIFO is written
    in place; anything else is refused."""
    if not path:
        raise OnnxPruneError("cannot write '': the path is empty")
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return _Target(os.path.realpath(path), False)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    if stat.S_ISREG(mode):
        return _Target(os.path.realpath(path), False)
    if stat.S_ISDIR(mode):
        raise OnnxPruneError(f"cannot write {shown(path)}: it is a directory")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return _Target(path, True)
    kind = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise OnnxPruneError(f"cannot write {shown(path)}: it is {kind} (onnxprune writes regular files, "
                         "character devices and FIFOs)")


def refuse_external_stream(path: str) -> None:
    raise OnnxPruneError(f"cannot write {shown(path)}: a model with external data needs a regular file "
                         "(its weights go to a file next to it), not a device or FIFO")


def stream(path: str, data: bytes) -> None:
    """Write to a character device or FIFO in place. A FIFO is opened without waiting: with
    no process reading it, that is an error rather than a run that never ends."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OnnxPruneError(f"cannot write {shown(path)}: no process is reading this FIFO") from None
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None
    try:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {shown(path)}: {e.strerror or e}") from None


# -- checks before any work --------------------------------------------------------------
def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file: by identity where both exist (symbolic links,
    hard links, other spellings), by real path where not (a file still to be created)."""
    return _identity(a) == _identity(b)


def _identity(path: str):
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except (OSError, ValueError):
        return os.path.realpath(path)


def check_targets(input_path: str, output: str | None, report: str | None = None,
                  plan_out: str | None = None, plan: str | None = None, report_flag: str = "--report") -> None:
    """Every path we will write: none of the paths we read (the input, its external-data
    files, the plan), none of the others, of a kind we can write, in a writable directory.
    Checked before any work so that a bad path never leaves some files written. `output`
    None: no model is written; `report_flag` names the report's option in messages."""
    data_files = external_data_files(input_path) if os.path.isfile(input_path) else []
    reads = ([("the input path", input_path)]
             + [(f"the input's external-data file {shown(f)}", f) for f in data_files]
             + ([("the --plan path", plan)] if plan else []))
    written: list[tuple[str, str]] = []
    for flag, path in (("output", output), (report_flag, report), ("--plan-out", plan_out)):
        if not path and (flag != "output" or path is None):  # an empty --report "" asks for no report
            continue
        what = f"{flag} path"
        target = write_target(path)
        _refuse_overlap(what, path, reads, written)
        if not target.stream:
            _check_directory(path, target.path)
        if flag == "output":
            if target.stream and data_files:
                refuse_external_stream(path)
            if not target.stream:  # written when the output keeps external data: checked in any case
                data = target.path + ".data"
                _refuse_overlap(f"the output's external-data file {shown(data)}", data, reads, written)
                if data_files and write_target(data).stream:
                    raise OnnxPruneError(f"cannot write {shown(data)}: the output's external-data file "
                                         "must be a regular file")
                written.append(("output's external-data file", data))
        written.append((what, path))


def _refuse_overlap(what: str, path: str, reads, written) -> None:
    for label, other in reads:
        if same_file(other, path):
            raise OnnxPruneError(f"{what} equals {label}; the input is never overwritten")
    for label, other in written:
        if same_file(other, path):
            raise OnnxPruneError(f"{what} equals the {label}: {shown(path)}")


def _check_directory(path: str, real: str) -> None:
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        raise OnnxPruneError(f"cannot write {shown(path)}: its directory does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OnnxPruneError(f"cannot write {shown(path)}: directory {shown(directory)} is not writable")


def writable_directory(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OnnxPruneError(f"cannot write {shown(path)}: directory {shown(directory)} does not exist")
    if not os.access(directory, os.W_OK):
        raise OnnxPruneError(f"cannot write {shown(path)}: directory {shown(directory)} is not writable")
    return directory


