"""One unit per ground-truth column: accuracies are all fractions or all percent, never a mix.

A column mixing 0.68 and 68.0 still loads (both are in [0, 100]) but ranks the
fractions below every percentage, silently. The rule, by the column's median:

- median <= 1: the column is fractions; any value above 1 is a mix (refused), and a
  format that records percent refuses fractions outright;
- median > 1: the column is percent; values <= 1 may be real (a collapsed network
  scores chance, 1% on 100 classes, 0.1% on ImageNet), so they are warned about,
  naming the first, never dropped or refused.
"""
from __future__ import annotations

import warnings

import numpy as np


def accuracy_unit(values: np.ndarray, where: str, error: type[Exception], percent_only: bool = False) -> str:
    """Return "fraction" or "percent" for a column of accuracies (NaN = missing); raise `error` on a mix.

    `where` names the file and column in messages; `percent_only` refuses a fraction column.
    """
    v = np.asarray(values, dtype=np.float64)
    known = v[~np.isnan(v)]
    if known.size == 0:
        return "percent" if percent_only else "fraction"
    median = float(np.median(known))
    if median <= 1.0:
        if percent_only:
            raise error(f"{where} looks like fractions (median {median:.4g}); this file's accuracies are percent "
                        "in [0, 100]: multiply the column by 100")
        high = np.flatnonzero(~np.isnan(v) & (v > 1.0))
        if high.size:
            raise error(f"{where} mixes fractions (median {median:.4g}) with percentages, e.g. entry {int(high[0])}: "
                        f"{v[high[0]]:.4g}; use one unit for the whole column")
        return "fraction"
    low = np.flatnonzero(~np.isnan(v) & (v <= 1.0))
    if low.size:
        warnings.warn(f"{where} has {low.size} value(s) <= 1 among percentages (median {median:.4g}), e.g. entry "
                      f"{int(low[0])}: {v[low[0]]:.4g}; check they are percent, not fractions", stacklevel=3)
    return "percent"
