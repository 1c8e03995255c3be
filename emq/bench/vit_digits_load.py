"""Reading a `vit-digits` build: its ground truth, validated field by field, and what it says of the benchmark.

`params_kendall` (how well size alone ranks) and `repeat_agreement` (how much of the
ranking is training noise) are read off the ground truth by the build's README, by
`emq bench show` and by `emq apply vit --train`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from emq.bench.gt_json import read_gt_json
from emq.bench.vit_digits_space import space_from_json, valid_arch
from emq.errors import InputFileError
from emq.fitness import kendall
from emq.paths import results_dir

BENCH_NAME = "vit-digits"
GT_FORMAT = "emq-vit-gt/1"
GT_FILE = "ground_truth.json"
README_FILE = "README.md"
BUILD_COMMAND = "emq bench build vit-digits"


def default_out_dir() -> Path:
    """Return where the build lives: `results_dir()/vit-digits`."""
    return results_dir() / BENCH_NAME


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Return the validated content of an `emq-vit-gt/1` ground_truth.json."""
    path = Path(path)
    gt = read_gt_json(path, GT_FORMAT, ("space", "columns", "candidates"), InputFileError,
                      f"rebuild with `{BUILD_COMMAND} --seed 0`")

    def fail(name: str, why: str) -> InputFileError:
        return InputFileError(f"{path}: field {name!r} {why}")

    try:
        space_from_json(gt["space"])
    except (TypeError, AttributeError) as exc:
        raise fail("space", f"does not describe a TinyViTSpace ({exc})") from exc
    cols = gt["columns"]
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
        raise fail("columns", "must be a non-empty list of column names")
    cands = gt["candidates"]
    if not isinstance(cands, list) or not cands:
        raise fail("candidates", "must be a non-empty list")
    ids: set[str] = set()
    for i, c in enumerate(cands):
        where = f"candidates[{i}]"
        if not isinstance(c, dict):
            raise fail(where, "must be an object with 'id', 'arch', the accuracy columns and 'params'")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid or cid in ids:
            raise fail(f"{where}.id", f"must be a distinct non-empty string, got {cid!r}")
        ids.add(cid)
        arch = c.get("arch")
        if not valid_arch(arch):
            raise fail(f"{where}.arch", f"(id {cid!r}) must hold hidden_dim, depth and per-layer mlp_ratio / "
                                        f"num_heads lists of depth entries, got {arch!r}")
        for col in cols:
            v = c.get(col)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
                raise fail(f"{where}.{col}", f"(id {cid!r}) must be an accuracy in [0, 1], got {v!r}")
        if not isinstance(c.get("params"), int) or c["params"] < 1:
            raise fail(f"{where}.params", f"(id {cid!r}) must be a positive integer")
    return gt


def column(gt: dict[str, Any], col: str) -> np.ndarray:
    """Return one accuracy column (or `params`) of the ground truth, in candidate order."""
    return np.array([c[col] for c in gt["candidates"]], dtype=np.float64)


def params_kendall(gt: dict[str, Any]) -> dict[str, float]:
    """Return Kendall tau of #params with each accuracy column (near 1 would make the benchmark trivial)."""
    params = column(gt, "params")
    return {col: round(kendall(params, column(gt, col)), 4) for col in gt["columns"]}


def repeat_agreement(gt: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Return, per column, Kendall tau and mean |difference| between the two training seeds of the repeated archs."""
    rep = gt["repeat"]
    by_id = {c["id"]: c for c in gt["candidates"]}
    out = {}
    for col in gt["columns"]:
        first = np.array([by_id[i][col] for i in rep["ids"]], dtype=np.float64)
        second = np.array(rep[col], dtype=np.float64)
        out[col] = {"kendall": round(kendall(first, second), 4),
                    "mean_abs_diff": round(float(np.abs(first - second).mean()), 4) if len(first) else float("nan")}
    return out
