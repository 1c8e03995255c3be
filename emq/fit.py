"""Fit per-layer weights of a proxy with a differentiable Kendall loss (ParZC-style), on search candidates only.

The program's per-layer terms (what its layer aggregations read) are computed once by
the evaluator (`emq.evaluate.layer_groups`); the weights then scale them and the rest of
the program, the network part, is differentiated with torch. The loss is minus a smooth
Kendall tau, the mean over candidate pairs of tanh((s_i - s_j) / T) * sign(y_i - y_j)
on standardised scores (DiffKendall: it tends to Kendall's tau as T -> 0).

Weights are exp(phi), so they stay positive: a fitted program reweights its layers
and never flips a layer's sign, and ops after the aggregation (log, sqrt) keep their
domain. phi starts at 0 (every weight 1: the unfitted program), has a small L2 pull
towards it, and the search candidates are split once more: a validation slice picks
the step to keep (early stopping), so no held-out candidate is ever seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from emq.evaluate import StackedStats, layer_groups, network_tensor
from emq.fitness import kendall
from emq.layer_weights import KEY_MODES, LayerWeights, layer_keys
from emq.proxy import Proxy
from emq.stats import NetworkStats
from primitives.errors import EMQUserError


class FitError(EMQUserError, ValueError):
    """The proxy or the candidates cannot be fitted as asked."""


@dataclass(frozen=True)
class FitSettings:
    """How `fit_layer_weights` fits; recorded in the fitted proxy file."""

    mode: str = "type"
    buckets: int = 3
    steps: int = 300
    lr: float = 0.05
    temperature: float = 0.25
    l2: float = 1e-3
    val_fraction: float = 0.2
    eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in KEY_MODES:
            raise FitError(f"--mode {self.mode!r}: choose one of {', '.join(KEY_MODES)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise FitError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.steps < 1 or self.buckets < 1 or self.temperature <= 0 or self.lr <= 0:
            raise FitError("--steps, --buckets, --temperature and --lr must be positive")


@dataclass
class FitResult:
    """The fitted weights, the Kendall tau before/after on the fit and validation slices, and the loss curve."""

    weights: LayerWeights
    before: dict[str, float]
    after: dict[str, float]
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)


def soft_kendall(scores: torch.Tensor, truth: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the smooth Kendall tau of `scores` against `truth` (pairs tied in truth are left out)."""
    s = (scores - scores.mean()) / (scores.std() + 1e-12)
    sign = torch.sign(truth[:, None] - truth[None, :])
    pairs = sign != 0
    return (torch.tanh((s[:, None] - s[None, :]) / temperature) * sign)[pairs].mean()


def fit_layer_weights(proxy: Proxy, stats_list: Sequence[NetworkStats], truth: Mapping[str, np.ndarray],
                      settings: FitSettings = FitSettings()) -> FitResult:
    """Return layer weights for `proxy` fitted on `stats_list` (search candidates) against each target of `truth`.

    The loss is the mean over targets of minus the smooth Kendall tau. Candidates whose
    unweighted score is not finite are left out of the fit.
    """
    plan, groups = layer_groups(proxy, StackedStats(stats_list))
    keys: dict[str, int] = {}
    prepared = []
    for g in groups:
        idx = torch.tensor([[keys.setdefault(k, len(keys)) for k in layer_keys(nm, settings.mode, settings.buckets)]
                            for nm in g.names])
        terms = {nid: t.detach().to(torch.float64) for nid, t in g.terms.items()}
        prepared.append((g.positions, idx, terms, g.params.to(torch.float64)))
    columns = {t: np.asarray(v, dtype=np.float64) for t, v in truth.items()}
    phi = torch.zeros(len(keys), dtype=torch.float64, requires_grad=True)

    def scores(weights: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(stats_list),), float("nan"), dtype=torch.float64)
        for positions, idx, terms, params in prepared:
            w = weights[idx]
            failed: list[str | None] = [None] * len(positions)
            value = network_tensor(plan, {nid: t * w for nid, t in terms.items()}, params, len(positions), failed)
            out = out.index_put((torch.as_tensor(positions),), value.to(torch.float64))
        return out

    with torch.no_grad():
        base = scores(torch.ones(len(keys), dtype=torch.float64)).numpy()
    usable = np.flatnonzero(np.isfinite(base) & np.all([np.isfinite(c) for c in columns.values()], axis=0))
    if len(usable) < 10:
        raise FitError(f"only {len(usable)} candidates have a finite score and ground truth; fitting needs at least 10")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(usable)
    n_val = max(3, int(round(len(order) * settings.val_fraction)))
    val, fit = np.sort(order[:n_val]), np.sort(order[n_val:])
    fit_t, val_t = torch.as_tensor(fit), torch.as_tensor(val)
    targets = {t: torch.as_tensor(c) for t, c in columns.items()}

    def taus(values: np.ndarray) -> dict[str, float]:
        return {f"{part}:{t}": kendall(values[rows], c[rows]) for part, rows in (("fit", fit), ("val", val))
                for t, c in columns.items()}

    def val_tau(values: np.ndarray) -> float:
        return float(np.mean([kendall(values[val], c[val]) for c in columns.values()]))

    before = taus(base)
    best_phi, best_val, best_step = phi.detach().clone(), val_tau(base), 0
    optimiser = torch.optim.Adam([phi], lr=settings.lr)
    history: list[dict[str, float]] = []
    for step in range(1, settings.steps + 1):
        optimiser.zero_grad()
        s = scores(torch.exp(phi))
        loss = -torch.stack([soft_kendall(s[fit_t], y[fit_t], settings.temperature) for y in targets.values()]).mean()
        loss = loss + settings.l2 * (phi ** 2).sum()
        if not torch.isfinite(loss):
            break  # a weighting the program cannot evaluate: keep the best step so far
        loss.backward()
        optimiser.step()
        if step % settings.eval_every == 0 or step == settings.steps:
            with torch.no_grad():
                now = scores(torch.exp(phi)).numpy()
            v = val_tau(now)
            history.append({"step": step, "loss": float(loss.detach()), "val_kendall": v})
            if np.isfinite(v) and v > best_val:
                best_phi, best_val, best_step = phi.detach().clone(), v, step
    with torch.no_grad():
        final = scores(torch.exp(best_phi)).numpy()
    names = {i: k for k, i in keys.items()}
    weights = LayerWeights({names[i]: float(w) for i, w in enumerate(torch.exp(best_phi).tolist())},
                           settings.mode, settings.buckets, 1.0,
                           {"method": "smooth-kendall", "settings": settings.__dict__, "targets": list(columns),
                            "candidates": len(stats_list), "fit": int(len(fit)), "validation": int(len(val)),
                            "best_step": best_step})
    return FitResult(weights, before, taus(final), best_step, history)


def describe_fit(result: FitResult) -> dict[str, Any]:
    """Return the fit's record for reports and `--json` (weights summarised by their spread)."""
    w = np.array(list(result.weights.weights.values()))
    return {"keys": len(w), "weight_min": float(w.min()), "weight_max": float(w.max()),
            "best_step": result.best_step, "before": result.before, "after": result.after,
            "history": result.history}
