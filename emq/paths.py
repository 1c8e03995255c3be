"""Where EMQ reads public data, writes caches and finds its committed results."""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the folder holding `results/`) for an editable install.
REPO_ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """Return the folder of committed results (`EMQ_RESULTS_DIR` overrides)."""
    return Path(os.environ.get("EMQ_RESULTS_DIR", REPO_ROOT / "results"))


def cache_dir() -> Path:
    """Return the statistics cache folder (`EMQ_CACHE_DIR`, default `.emq-cache` in the repo)."""
    return Path(os.environ.get("EMQ_CACHE_DIR", REPO_ROOT / ".emq-cache"))


def data_dir(explicit: str | Path | None = None) -> Path | None:
    """Return the public ground-truth folder: the explicit path, else `EMQ_DATA_DIR`, else `../shared/benchmarks` if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("EMQ_DATA_DIR")
    if env:
        return Path(env)
    sibling = REPO_ROOT.parent / "shared" / "benchmarks"
    return sibling if sibling.is_dir() else None
