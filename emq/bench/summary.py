"""A summary of a benchmark: size, ground-truth spread, a few candidates; as plain data or as lines to read."""
from __future__ import annotations

from typing import Any

import numpy as np

from emq.bench.base import Benchmark

QUANTILES = {"min": 0.0, "q1": 0.25, "median": 0.5, "q3": 0.75, "max": 1.0}


def benchmark_summary(bench: Benchmark, limit: int = 5) -> dict[str, Any]:
    """Return `bench`'s candidate count, the spread of each accuracy column and its first `limit` candidates."""
    cands = bench.candidates()
    truth = bench.ground_truth()
    columns: dict[str, dict[str, Any]] = {}
    for col, values in truth.items():
        v = values[np.isfinite(values)]
        spread = dict(zip(QUANTILES, map(float, np.quantile(v, list(QUANTILES.values()))))) if v.size else {}
        columns[col] = {"n": int(v.size), "missing": int(values.size - v.size), **spread}
    first = [{"id": c.id, "truth": {col: float(truth[col][i]) for col in truth},
              "config": c.bits if c.bits is not None else c.arch} for i, c in enumerate(cands[:limit])]
    extra = getattr(bench, "describe_models", None)
    return {"name": bench.name, "family": bench.family, "candidates": len(cands),
            "trained_weights": bench.trained_weights, "description": bench.description, "columns": columns,
            "first": first, "models": extra() if callable(extra) else None}


def summary_text(summary: dict[str, Any]) -> str:
    """Return the lines of `benchmark_summary`'s record a person reads."""
    weights = "trained weights" if summary["trained_weights"] else "random initialisation (seeded)"
    lines = [f"{summary['name']} ({summary['family']}): {summary['candidates']} candidates; {weights}"]
    if summary["description"]:
        lines.append(summary["description"])
    for col, s in summary["columns"].items():
        if not s["n"]:
            lines.append(f"  {col}: no values")
            continue
        lines.append(f"  {col}: n={s['n']} min {s['min']:.4g}  q1 {s['q1']:.4g}  median {s['median']:.4g}  "
                     f"q3 {s['q3']:.4g}  max {s['max']:.4g}" + (f"  ({s['missing']} missing)" if s["missing"] else ""))
    for cand in summary["first"]:
        accs = ", ".join(f"{c}={v:.4g}" for c, v in cand["truth"].items())
        lines.append(f"  {cand['id']}: {accs}  {cand['config']}")
    if summary["models"] is not None:
        lines.append(summary["models"])
    return "\n".join(lines)
