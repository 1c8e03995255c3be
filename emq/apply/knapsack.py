"""The multiple-choice knapsack of a separable bit objective, solved to proven optimality (HiGHS, gap 0)."""
from __future__ import annotations

import contextlib
import os
import random
import sys
from typing import Iterator, Sequence

import numpy as np

from emq.apply.budget import Bits, repair_bits
from emq.errors import BudgetError


def maximise_within(gain: np.ndarray, params: Sequence[int], choices: Sequence[int], cap: int) -> tuple[Bits, bool]:
    """Return (widths maximising sum_l gain[l, k_l] with sum(bits x params) <= cap, proven optimal).

    `gain` is (layers, choices), NaN where a width may not be used: the multiple-choice
    knapsack of any separable objective, solved by integer programming (HiGHS, gap 0).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    n_layers, n_choices = gain.shape
    # Subtracting each layer's best term changes no argmax (one choice per layer) and keeps the numbers small.
    gain = gain - np.nanmax(gain, axis=1, keepdims=True)
    scale = float(np.nanmax(np.abs(gain))) or 1.0
    cost = -np.nan_to_num(gain / scale, nan=0.0).ravel()
    upper = np.where(np.isnan(gain), 0.0, 1.0).ravel()
    rows = np.repeat(np.arange(n_layers), n_choices)
    one_each = csr_array((np.ones(n_layers * n_choices), (rows, np.arange(n_layers * n_choices))),
                         shape=(n_layers, n_layers * n_choices))
    size_row = np.array([[p * b for p in params for b in choices]], dtype=np.float64)
    with _silenced_stdout():
        res = milp(cost, integrality=np.ones_like(cost), bounds=Bounds(0.0, upper),
                   constraints=[LinearConstraint(one_each, 1.0, 1.0), LinearConstraint(size_row, -np.inf, float(cap))],
                   options={"mip_rel_gap": 0.0})
    if res.x is None:
        raise BudgetError(f"no configuration the proxy can score fits the cap of {cap} bit-weights ({res.message})")
    ks = res.x.reshape(n_layers, n_choices).argmax(axis=1)
    widths = tuple(int(choices[k]) for k in ks)
    if sum(b * p for b, p in zip(widths, params)) > cap:  # solver tolerance; never hand back an over-budget answer
        widths = repair_bits(widths, params, choices, cap, random.Random(0))
        return widths, False
    return widths, bool(res.status == 0)


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for a block: HiGHS prints solver notes from C, whatever `disp` says,
    and they would corrupt `--json` output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
