"""Where a benchmark build may write: checked in full before the (minutes-long) build starts.

A build that writes first and validates later leaves half a benchmark behind,
and the default target is the committed data under `results/`. So every builder
calls `check_build_target` before any work: the count it was asked for must make
a benchmark, every output file must be safely writable (`emq.atomic`), and
existing ground truth is replaced only when the caller says `overwrite=True`
(CLI: `emq bench build NAME --overwrite`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from emq.atomic import check_output_path
from emq.errors import BuildTargetError

#: Most candidates one build measures (each is a PTQ or training run; the defaults are hundreds).
MAX_CANDIDATES = 20000


def check_build_target(out: Path, files: Sequence[str], count: int, what: str, overwrite: bool) -> None:
    """Raise BuildTargetError unless `count` `what` can be built into `out` (its `files`) as asked."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CANDIDATES:
        raise BuildTargetError(f"the number of {what} must be an integer in 1..{MAX_CANDIDATES}, got {count!r} "
                               "(CLI: --num-configs)")
    for name in files:
        check_output_path(out / name)
    existing = [name for name in files if (out / name).exists()]
    if existing and not overwrite:
        raise BuildTargetError(f"{out} already holds a built benchmark ({', '.join(existing)}); rebuilding replaces "
                               "it: pass --overwrite (overwrite=True) to do so, or build into another folder")
