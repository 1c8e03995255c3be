"""Reading a user-named file safely: a regular file only, and never more than a stated number of bytes.

Opening a FIFO for reading blocks until a writer appears, and a device such as
/dev/zero never ends, so a path from the user (a proxy file, a job file, a run
folder's checkpoint) is opened without blocking and checked with `fstat` on the
open descriptor: the check and the read see the same file, even if the path is
swapped in between. Anything but a regular file, or a file over its cap, is an
`InputFileError` naming the path, what it should be and the limit.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from emq.errors import EMQUserError, InputFileError

#: Caps on files EMQ reads (bytes). Each is far above what EMQ itself writes for that kind of file.
MAX_JSON_BYTES = 64 * 2**20  # run-folder JSON: config, hall of fame, study, verdict (a few hundred kB in practice)
MAX_CHECKPOINT_BYTES = 512 * 2**20  # state.json: population, memo of up to memo_size records, log
MAX_SMALL_TENSOR_BYTES = 2**20  # the torch random-state file (about 5 kB)


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_bytes_limited(path: str | Path, max_bytes: int, what: str = "file",
                       error: type[EMQUserError] = InputFileError) -> bytes:
    """Return the bytes of regular file `path`, or raise `error` (one line) for anything else or more than `max_bytes`.

    `what` names the file's role in the message ("proxy file", "job file").
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder; give a {what}") from None
    except PermissionError:
        raise error(f"{path}: no permission to read this {what}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is {_describe(info.st_mode)}, not a regular file; give a {what}")
        if info.st_size > max_bytes:
            raise error(f"{path}: {info.st_size} bytes; a {what} may have at most {max_bytes} (is this a {what}?)")
        chunks, size = [], 0
        while True:  # read to the end, but never past the cap (the file may grow after fstat)
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise error(f"{path}: more than {max_bytes} bytes; a {what} may have at most {max_bytes}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_limited(path: str | Path, max_bytes: int, what: str = "file",
                      error: type[EMQUserError] = InputFileError) -> str:
    """Return regular file `path` as UTF-8 text (see `read_bytes_limited`); undecodable bytes are `error` too."""
    try:
        return read_bytes_limited(path, max_bytes, what, error).decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; a {what} is text") from None


def check_regular_file(path: str | Path, what: str = "file", error: type[EMQUserError] = InputFileError) -> Path:
    """Return `path` if it names a regular file (links followed), else raise `error` naming it.

    For files a library opens itself (safetensors, large statistics files), where a
    read through `read_bytes_limited` would cost a copy.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (PermissionError, NotADirectoryError) as err:
        raise error(f"{path}: cannot be read as a {what} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {_describe(mode)}, not a regular file; give a {what}")
    return path
