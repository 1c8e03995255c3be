"""Safe file writes: write a temporary file beside the target, then rename it over a regular file or nothing.

A rename replaces whatever sits at the target, so the target is checked first
(and again just before the rename):

- absent, or a regular file: written (readers never see half a file);
- a directory, or a special file (`/dev/null`, a FIFO, a socket, a device): refused,
  since a rename would silently turn it into a regular file;
- a symbolic link: refused, naming the link and its target. Replacing the link
  would leave its target stale, and following it would write somewhere the user
  did not name; either surprises. Write to the target itself instead.

Refusals are `UnsafeOutputError` (one line in the CLI). `check_writes` is the one
rule every writer applies before any work: safe output paths, none of them an input.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from emq.errors import UnsafeOutputError


def check_output_path(path: str | Path) -> Path:
    """Return `path` if a file may be written there; raise UnsafeOutputError naming it otherwise."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise UnsafeOutputError(f"{path}: a parent of this output path is a file, not a folder; "
                                "choose an output path inside a folder") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeOutputError(f"{path}: is a symbolic link (to {os.readlink(path)}); EMQ does not write "
                                    "through or over links: give the real file's path or a new one")
        if stat.S_ISDIR(info.st_mode):
            raise UnsafeOutputError(f"{path}: is a folder; give a file path for this output")
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeOutputError(f"{path}: is a special file (device, FIFO or socket), not a regular file; "
                                    "EMQ writes outputs only to regular files: give a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UnsafeOutputError(f"{path}: its parent {parent} is a file, not a folder; "
                                        "choose an output path inside a folder")
            break
    return path


def check_output_folder(path: str | Path) -> Path:
    """Return `path` if outputs may be written into it (absent, or a real folder); refuse a link or a file.

    A folder given as a symbolic link would send every output of a run somewhere the
    user did not name, as a file link would: give the real path.
    """
    path = Path(path)
    if path.is_symlink():
        raise UnsafeOutputError(f"{path}: is a symbolic link (to {os.readlink(path)}); EMQ does not write into "
                                "linked folders: give the real folder's path or a new one")
    if path.exists() and not path.is_dir():
        raise UnsafeOutputError(f"{path}: is a file, not a folder; give a folder path for this output")
    return path


def check_writes(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path] = ()) -> list[Path]:
    """Return `outputs` (None entries dropped) if each may be written; else raise UnsafeOutputError naming it.

    The one rule every writer follows, before any work starts: each output is a path
    `check_output_path` accepts, and none is one of the command's `inputs`. An input
    folder counts as every file under it; callers that read a run folder pass
    `search.run_folder.run_folder_files`, which adds the files a run folder may hold
    but does not hold yet. A new file beside an input is fine.
    """
    paths = [check_output_path(p) for p in outputs if p is not None]
    files: list[Path] = []
    for src in map(Path, inputs):
        files += [q for q in src.rglob("*") if q.is_file() or q.is_symlink()] if src.is_dir() else [src]
    for out in paths:
        for src in files:
            if _same_file(out, src):
                raise UnsafeOutputError(f"{out}: is an input of this command ({src}); writing it would destroy "
                                        "that input: choose another output path")
    if len({p.resolve() for p in paths}) < len(paths):
        raise UnsafeOutputError(f"{', '.join(map(str, paths))}: this command would write two of its outputs to the "
                                "same file; choose another output path")
    return paths


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return a.resolve() == b.resolve()


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then rename tmp over `path` (absent or a regular file); return `path`."""
    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise UnsafeOutputError(f"{path}: a parent of this output path is a file, not a folder; "
                                "choose an output path inside a folder") from None
    except PermissionError:
        raise UnsafeOutputError(f"{path}: no permission to write in {path.parent}; "
                                "choose a writable folder") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are shared files, readable like any other
        check_output_path(path)  # again: something may have appeared there while we wrote
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; return `path`."""
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically; return `path`."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_tensors_atomic(path: str | Path, tensors: Any) -> Path:
    """torch.save plain containers of tensors atomically (read back with weights_only=True)."""
    return write_atomic(path, lambda p: torch.save(tensors, p))
