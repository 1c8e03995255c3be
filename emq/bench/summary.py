"""A human-readable summary of a benchmark: size, ground-truth spread, a few candidates."""
from __future__ import annotations

import numpy as np

from emq.bench.base import Benchmark


def summarize_benchmark(bench: Benchmark, limit: int = 5) -> str:
    """Return lines describing `bench`: candidate count, spread of each accuracy column, first candidates."""
    cands = bench.candidates()
    truth = bench.ground_truth()
    lines = [f"{bench.name} ({bench.family}): {len(cands)} candidates; "
             f"{'trained weights' if bench.trained_weights else 'random initialisation (seeded)'}"]
    if bench.description:
        lines.append(bench.description)
    for col, values in truth.items():
        v = values[np.isfinite(values)]
        if v.size == 0:
            lines.append(f"  {col}: no values")
            continue
        q = np.quantile(v, [0, 0.25, 0.5, 0.75, 1])
        lines.append(f"  {col}: n={v.size} min {q[0]:.4g}  q1 {q[1]:.4g}  median {q[2]:.4g}  q3 {q[3]:.4g}  max {q[4]:.4g}"
                     + (f"  ({values.size - v.size} missing)" if v.size < values.size else ""))
    for i, cand in enumerate(cands[:limit]):
        desc = cand.bits if cand.bits is not None else cand.arch
        accs = ", ".join(f"{c}={truth[c][i]:.4g}" for c in truth)
        lines.append(f"  {cand.id}: {accs}  {desc}")
    extra = getattr(bench, "describe_models", None)
    if callable(extra):
        lines.append(extra())
    return "\n".join(lines)
