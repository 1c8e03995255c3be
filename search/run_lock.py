"""One process per run folder: an exclusive lock file (`RUN/.lock`) holding the owner's pid and host.

Two searches writing the same folder interleave their config, checkpoint and
hall of fame, and one run's results are lost. The lock is an `fcntl.flock` on the
lock file: the kernel releases it when its process ends, however it ends
(kill -9 included), so a lock can never outlive its owner on this machine. The
file's content (pid, host, start time) only serves the messages:

- a live owner: the second search fails at once, naming the pid and host;
- a file left by an owner that died without removing it (kill -9, power loss):
  the lock is free, so it is taken over and a warning names the dead owner.

Locks are re-entrant within a process (the CLI takes the lock before computing
statistics, and `run_search` takes it again), and the file is removed on release.
"""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from emq.errors import EMQUserError

LOCK_FILE = ".lock"

try:  # POSIX; elsewhere the lock degrades to the exclusive-create check below
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Folders this process holds: resolved path -> (file descriptor, depth of nesting).
_HELD: dict[str, list[int]] = {}


class RunLockedError(EMQUserError, RuntimeError):
    """Another live process owns the run folder; the message names its pid and host."""


class StaleLockWarning(UserWarning):
    """A lock file was left by a process that no longer runs; it was taken over."""


def _owner(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "a process whose lock file is unreadable"
    return f"pid {owner.get('pid')} on host {owner.get('host')} (since {owner.get('started')})"


def pid_alive(pid: int) -> bool:
    """Return whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire(run_dir: str | Path) -> None:
    """Take the lock of `run_dir` for this process (re-entrant); raise RunLockedError if another process holds it."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, path)
            # The previous owner may have removed the file between our open and our lock:
            # then we hold a lock on a deleted file, and must start over on the new one.
            if os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    previous = _owner(path)
    if previous:
        same_host = previous.get("host") == socket.gethostname()
        dead = same_host and isinstance(previous.get("pid"), int) and not pid_alive(previous["pid"])
        state = "no longer runs" if dead else "released its lock without removing the file"
        warnings.warn(f"{run_dir}: took over a stale lock of {_describe(previous)}, which {state}",
                      StaleLockWarning, stacklevel=2)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(owner) + "\n").encode())
    os.fsync(fd)
    _HELD[key] = [fd, 1]


def _lock(fd: int, path: Path) -> None:
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        raise RunLockedError(f"{path.parent}: in use by {_describe(_owner(path))}; wait for it to finish, "
                             "or choose another --out folder") from None


def release(run_dir: str | Path) -> None:
    """Release one hold of `run_dir`'s lock; the last release removes the lock file."""
    key = str(Path(run_dir).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    fd = held[0]
    try:
        Path(key, LOCK_FILE).unlink(missing_ok=True)  # still locked: nobody can take it half-removed
    finally:
        os.close(fd)


@contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the duration of the block (see module docstring)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)
