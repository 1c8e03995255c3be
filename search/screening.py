"""Cheap checks before a program is scored on every search candidate; each rejection has a countable reason.

Order (the first that applies is the reason): size, a self-cancelling subterm such
as `sub(grad, grad)` (static: before any evaluation), then on the probe candidates
op errors / missing statistics, non-finite or constant scores, scores unchanged
on the probe's second batch (input independence: the published EMQ proxy fails
exactly this), a trivial predictor in disguise (`trivial_equivalent`: a probe ranking
equal to #params, a bit count or the quantized loss, or scores that are a function of one
architecture hyperparameter such as the embedding width), the projected time for the
full set, and finally the same value checks on the full search set.

The probe is small (about 32 networks and their second batch): each worker of a
process pool holds all of it and screens batches of programs (`screen_probe`, run by
`search.screen_worker`; an in-process pool's search screens itself: `search.screener`),
and only the survivors go to the sharded pool for the full search set
(`score_outcome` then checks the full scores).
`screen_and_score` runs both steps in one process.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from emq.degeneracy import (
    CONSTANT, INPUT_INDEPENDENT, NONFINITE, TRIVIAL_EQUIVALENT, hyperparameter_function, is_input_independent,
    score_flags, trivial_match,
)
from emq.proxy import Proxy
from emq.evaluate import StackedStats, evaluate_stacked

OVER_SIZE = "over_size"
SELF_CANCELLING = "self_cancelling"
OVER_TIME = "over_time"
MISSING_STAT = "missing_stat"
UNDEFINED_FITNESS = "undefined_fitness"
__all__ = ["OVER_SIZE", "SELF_CANCELLING", "OVER_TIME", "MISSING_STAT", "UNDEFINED_FITNESS", "NONFINITE", "CONSTANT",
           "INPUT_INDEPENDENT", "TRIVIAL_EQUIVALENT", "ScreenLimits", "ProbeInputs", "ScreenInputs", "Outcome",
           "screen_probe", "checked_probe_inputs", "probe_fingerprint", "score_outcome", "screen_and_score", "rejection_table"]


@dataclass(frozen=True)
class ScreenLimits:
    """What a program may cost: nodes, and projected seconds to score the full search set."""

    max_size: int = 20
    time_budget_s: float = 30.0
    #: Off by default: a data-free program (SynFlow) is legitimate; it is flagged `input_independent` instead.
    reject_input_independent: bool = False
    #: Reject programs ranking the probe like a trivial predictor (|Kendall tau| >= this); 1 disables.
    trivial_tau_limit: float = 0.95
    #: Reject programs whose probe ranks are this much (eta squared) a function of one arch hyperparameter; > 1 disables.
    arch_eta_limit: float = 0.99


@dataclass
class ProbeInputs:
    """What the probe screens need: the probe networks stacked (twice: two batches), their trivial predictors."""

    probe: StackedStats
    probe_other: StackedStats | None  # the same probe networks on a second batch
    n_search: int  # candidates of the full search set (for the time projection)
    #: Trivial predictors' values on the probe networks (#params always; bit counts, quantized loss, ...).
    probe_trivial: dict[str, np.ndarray] = field(default_factory=dict)
    #: Architecture hyperparameters of the probe networks (empty for bit configurations).
    probe_features: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, probe: StackedStats, probe_other: StackedStats | None, n_search: int,
              probe_trivial: Mapping[str, Sequence[float]] | None = None,
              probe_features: Mapping[str, Sequence[float]] | None = None) -> "ProbeInputs":
        trivial, features = checked_probe_inputs(probe.n, probe_other.n if probe_other is not None else None,
                                                 probe_trivial, probe_features)
        return cls(probe, probe_other, n_search, {"params": probe.total_params(), **trivial}, features)


def checked_probe_inputs(n: int, n_other: int | None, probe_trivial: Mapping[str, Sequence[float]] | None,
                         probe_features: Mapping[str, Sequence[float]] | None
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Return the probe's trivial predictors and features as float64 arrays, each checked to hold `n` values."""
    if n_other is not None and n_other != n:
        raise ValueError(f"{n_other} second-batch statistics for {n} probe networks")
    trivial = {k: np.asarray(v, dtype=np.float64) for k, v in (probe_trivial or {}).items()}
    features = {k: np.asarray(v, dtype=np.float64) for k, v in (probe_features or {}).items()}
    for name, values in [*trivial.items(), *features.items()]:
        if len(values) != n:
            raise ValueError(f"trivial predictor / feature {name!r} has {len(values)} values for {n} probes")
    return trivial, features


@dataclass
class ScreenInputs:
    """The statistics a program is screened and scored on in one process (all stacked, on one device)."""

    search: StackedStats
    probe_inputs: ProbeInputs
    probe_index: np.ndarray

    @property
    def probe(self) -> StackedStats:
        return self.probe_inputs.probe

    @property
    def probe_other(self) -> StackedStats | None:
        return self.probe_inputs.probe_other

    @property
    def probe_trivial(self) -> dict[str, np.ndarray]:
        return self.probe_inputs.probe_trivial

    @classmethod
    def build(cls, search: StackedStats, probe_other: StackedStats | None, probe_index,
              probe_trivial: Mapping[str, Sequence[float]] | None = None,
              probe_features: Mapping[str, Sequence[float]] | None = None) -> "ScreenInputs":
        index = np.asarray(probe_index, dtype=np.int64)
        if probe_other is not None and probe_other.n != len(index):
            raise ValueError(f"{probe_other.n} second-batch statistics for {len(index)} probe positions")
        probe = ProbeInputs.build(search.subset(index.tolist()), probe_other, search.n, probe_trivial, probe_features)
        return cls(search, probe, index)


@dataclass
class Outcome:
    """Result of screening (and, if it passed, scoring) one program."""

    formula: str
    hash: str
    reason: str | None = None  # None: passed every screen
    scores: np.ndarray | None = None  # on every search candidate
    probe: np.ndarray | None = None  # on the probe candidates (the behaviour used for niches)
    probe_other: np.ndarray | None = None  # on the probe candidates' second batch (when the screen has one)
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None


def _reason(failures: Counter) -> str:
    # The most frequent failure names the rejection; ties broken by name so the reason is deterministic.
    return sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _hard_failures(failures: Counter) -> Counter:
    """Return the failures that make a score unusable: every op error, but not an infinite value (see score_flags)."""
    return Counter({k: v for k, v in failures.items() if k != NONFINITE})


def _value_rejection(scores: np.ndarray, failures: Counter) -> str | None:
    """Return why scores are unusable (the most frequent op failure, else a degeneracy flag), or None.

    An infinite score is usable (it ranks at an end, as the baselines' are) unless the
    program is infinite on more than `emq.degeneracy.MAX_INF_SHARE` of the candidates;
    a NaN score never is.
    """
    hard = _hard_failures(failures)
    if hard:
        return _reason(hard)
    flags = score_flags(scores)
    return flags[0] if flags else None


def static_rejection(proxy: Proxy, limits: ScreenLimits) -> tuple[str, dict[str, Any]] | None:
    """Return (reason, detail) when the program is refused before any evaluation (too large, self-cancelling)."""
    if proxy.size > limits.max_size:
        return OVER_SIZE, {}
    cancelling = proxy.self_cancelling()
    if cancelling is not None:
        return SELF_CANCELLING, {"subterm": cancelling}
    return None


def screen_probe(proxy: Proxy, inputs: ProbeInputs, limits: ScreenLimits = ScreenLimits()) -> Outcome:
    """Return the outcome of every screen up to the full search set: `reason` None means "score it on the search set".

    The outcome's `probe` holds the probe scores and `detail["projected_s"]` the
    projected seconds for the search set; `seconds` the time spent here.
    """
    start = time.perf_counter()
    out = Outcome(proxy.formula(), proxy.canonical_hash())

    def done(reason: str | None) -> Outcome:
        out.reason = reason
        out.seconds = time.perf_counter() - start
        return out

    static = static_rejection(proxy, limits)
    if static is not None:
        out.detail.update(static[1])
        return done(static[0])
    t0 = time.perf_counter()
    probe, failures = evaluate_stacked(proxy, inputs.probe)
    probe_seconds = time.perf_counter() - t0
    reason = _value_rejection(probe, failures)
    if reason:
        return done(reason)
    out.probe = probe
    if inputs.probe_other is not None:
        other, failures = evaluate_stacked(proxy, inputs.probe_other)
        out.probe_other = other
        hard = _hard_failures(failures)
        if hard:
            return done(_reason(hard))
        if is_input_independent(probe, other):
            if limits.reject_input_independent:
                return done(INPUT_INDEPENDENT)
            out.detail["flags"] = [INPUT_INDEPENDENT]  # legitimate (SynFlow reads only weights): shown, not rejected
    twin = trivial_match(probe, inputs.probe_trivial, limits.trivial_tau_limit) or \
        hyperparameter_function(probe, inputs.probe_features, limits.arch_eta_limit)
    if twin is not None:
        out.detail["trivial"] = twin
        return done(TRIVIAL_EQUIVALENT)
    projected = probe_seconds * inputs.n_search / max(1, inputs.probe.n)
    out.detail["projected_s"] = projected
    if projected > limits.time_budget_s:
        return done(OVER_TIME)
    return done(None)


#: Significant digits of the probe scores kept in a fingerprint: float noise between equal functions is
#: forgotten (`mul(x, 2)` and `add(x, x)` agree), distinct behaviour is not.
FINGERPRINT_DIGITS = 6


def probe_fingerprint(out: Outcome, digits: int = FINGERPRINT_DIGITS) -> str:
    """Return a key of a probe-screened program's behaviour: its probe scores (both batches) to `digits` digits.

    Two programs with the same key compute the same function on the probe networks, so
    the search may give the second the first one's record without scoring it on the
    search split (the functional-equivalence cache, as in AutoML-Zero). The trade-off,
    accepted there and here: programs equal on the probe can still differ on the full
    split (a branch the probe never reaches, a difference below `digits` digits); the
    second then carries the first one's fitness. NaN and infinities are kept as such.
    """
    def text(values: np.ndarray | None) -> str:
        if values is None:
            return "-"
        # `+ 0.0` turns -0.0 into 0.0: the sign of a zero is not behaviour.
        return ",".join(f"{float(v) + 0.0:.{digits}g}" for v in np.asarray(values, dtype=np.float64).ravel())

    return hashlib.sha256(f"{text(out.probe)}|{text(out.probe_other)}".encode()).hexdigest()[:24]


def score_outcome(out: Outcome, scores: np.ndarray, failures: Counter, seconds: float = 0.0) -> Outcome:
    """Return a probe-screened outcome completed with its full search-set scores (or the value check's reason)."""
    out.seconds += seconds
    reason = _value_rejection(scores, failures)
    if reason:
        out.reason = reason
    else:
        out.scores = scores
    return out


def screen_and_score(proxy: Proxy, inputs: ScreenInputs, limits: ScreenLimits = ScreenLimits()) -> Outcome:
    """Return the outcome of screening `proxy` on the probe and, if it passes, scoring it on the search set."""
    out = screen_probe(proxy, inputs.probe_inputs, limits)
    if out.reason is not None:
        return out
    t0 = time.perf_counter()
    scores, failures = evaluate_stacked(proxy, inputs.search)
    return score_outcome(out, scores, failures, time.perf_counter() - t0)


def rejection_table(counts: Counter | dict[str, int]) -> str:
    """Return rejection counts as `reason: n` lines, most frequent first (for logs and summaries)."""
    items = sorted(dict(counts).items(), key=lambda kv: (-kv[1], kv[0]))
    return "\n".join(f"{reason}: {n}" for reason, n in items) or "(none)"
