"""The honest bar in one place: cut the split, choose the best trivial predictor, score held out, judge.

Every command that reaches a verdict (`emq search`, a study, `emq verdict`, `emq fit`)
follows these steps, in this order, through this module:

1. `cut_run`: the benchmark's split (seeded hash, uniform order) cut to the run's caps;
2. `choose_trivial`: per target, the trivial predictor (#params, FLOPs, bit counts, ...)
   that ranks the *search* split best, in its better direction;
3. `score_heldout`: programs scored on the held-out candidates, streamed a chunk at a time;
4. `against_trivial` / `run_verdict`: the paired bootstrap difference of the program and
   the chosen predictor on the same held-out candidates, and the run's verdict.

The second bar (issue 24) repeats steps 2 and 4 for the *known proxies* a run names as
baselines (SynFlow, NASWOT, jacov, ...): `choose_known` picks the best of them on the
search split, `against_trivial(..., bar="known")` measures the program against it held
out, and `run_verdict` then states the claim: "discovery over known proxies", "discovery
over trivial predictors" or "no discovery".
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emq.baselines import baseline_scores, is_trivial
from emq.bench.base import Benchmark, Candidate
from emq.fitness import (
    DISCOVERY, NO_DISCOVERY, Metric, PairedDifference, Split, TrivialChoice, choose_best_trivial, heldout_split,
    paired_bootstrap_difference, verdict,
)
from emq.known_scores import KnownScores
from emq.proxy import Proxy
from emq.scoring import stream_scores
from emq.stats.config import StatsConfig


@dataclass(frozen=True)
class RunCut:
    """One run's candidates and ground truth on each side of its split, cut to the run's caps."""

    split: Split
    search: list[Candidate]
    heldout: list[Candidate]
    search_truth: dict[str, np.ndarray]
    heldout_truth: dict[str, np.ndarray]
    seed: int
    heldout_fraction: float
    order: str

    def describe(self) -> dict[str, Any]:
        """Return the split as run folders record it (hall_of_fame.json `split`)."""
        return {"seed": self.seed, "heldout_fraction": self.heldout_fraction, "order": self.order,
                "search": len(self.search), "heldout": len(self.heldout)}


def cut_run(bench: Benchmark, targets: Sequence[str], heldout_fraction: float, split_seed: int, split_order: str,
            max_search: int | None = None, max_heldout: int | None = None) -> RunCut:
    """Return `bench`'s split for these settings, each half cut to its cap (None or 0: all of it)."""
    truth = bench.ground_truth()
    unknown = [t for t in targets if t not in truth]
    if unknown:
        raise KeyError(f"unknown target(s) {unknown} for benchmark {bench.name}; available: {', '.join(truth)}")
    candidates = bench.candidates()
    split = heldout_split([c.id for c in candidates], heldout_fraction, split_seed, split_order).cut(
        max_search, max_heldout)
    return RunCut(split, [candidates[i] for i in split.search], [candidates[i] for i in split.heldout],
                  {t: truth[t][split.search] for t in targets}, {t: truth[t][split.heldout] for t in targets},
                  split_seed, heldout_fraction, split_order)


def choose_trivial(bench: Benchmark, names: Sequence[str], stats_config: StatsConfig, cut: RunCut, metric: Metric,
                   progress: bool = True, cache_root: str | Path | None = None) -> dict[str, TrivialChoice]:
    """Return, per target, the best of the trivial predictors `names` on the search split (never the held-out one)."""
    on_search = baseline_scores(bench, names, stats_config, progress=progress, candidates=cut.search,
                                cache_root=cache_root)
    return choose_best_trivial(on_search, cut.search_truth, metric)


def score_heldout(programs: Sequence[Proxy], bench: Benchmark, cut: RunCut, stats_config: StatsConfig,
                  device: str | None = None, progress: bool = True,
                  cache_root: str | Path | None = None) -> list[tuple[np.ndarray, Counter]]:
    """Return (scores, failures) of each program on the held-out candidates, one chunk of statistics at a time.

    Streamed: 5,000 NAS-Bench-201 cells are 12 GB of statistics at once.
    """
    return stream_scores(programs, bench, cut.heldout, stats_config, device=device, progress=progress,
                         cache_root=cache_root)


def choose_known(bench: Benchmark, names: Sequence[str], stats_config: StatsConfig, cut: RunCut, metric: Metric,
                 progress: bool = True, cache_root: str | Path | None = None,
                 files: KnownScores | None = None) -> dict[str, TrivialChoice]:
    """Return, per target, the best of the known proxies among `names` (the non-trivial baselines) on the search split.

    Chosen like the trivial predictor, in its better direction, never on held-out
    candidates; {} when `names` holds no known proxy. With `files`, their committed
    values are read instead of computing the baselines (`known:NAME` names a program).
    """
    known = [n for n in names if not is_trivial(n)]
    if not known:
        return {}
    on_search = known_values(bench, known, stats_config, cut.search, progress, cache_root, files)
    return choose_best_trivial(on_search, cut.search_truth, metric)


def known_values(bench: Benchmark, names: Sequence[str], stats_config: StatsConfig, candidates: Sequence[Candidate],
                 progress: bool = True, cache_root: str | Path | None = None,
                 files: KnownScores | None = None) -> dict[str, np.ndarray]:
    """Return the known proxies `names` on `candidates`: read from `files` when given, else computed as baselines."""
    if files is not None:
        return files.values([c.id for c in candidates], names)
    return baseline_scores(bench, names, stats_config, progress=progress, candidates=candidates,
                           cache_root=cache_root)


def trivial_on_heldout(bench: Benchmark, choices: Mapping[str, TrivialChoice], stats_config: StatsConfig, cut: RunCut,
                       progress: bool = True, cache_root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Return the chosen trivial predictors' values on the held-out candidates (what `against_trivial` compares)."""
    return baseline_scores(bench, sorted({c.name for c in choices.values()}), stats_config, progress=progress,
                           candidates=cut.heldout, cache_root=cache_root)


def against_trivial(scores: np.ndarray, choices: Mapping[str, TrivialChoice], trivial: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray], metric: Metric, mode: str, n_boot: int,
                    bar: str = "trivial") -> dict[str, Any]:
    """Return a program's held-out comparison with the chosen predictors (values on the same candidates).

    `<bar>_heldout` is each chosen predictor's metric per target; `vs_best_<bar>` the
    paired bootstrap of joint metric(program) - joint metric(predictors), present only
    when every target has a chosen predictor. `bar` is "trivial" or "known" (`choose_known`).
    """
    control = {t: c.oriented(trivial[c.name]) for t, c in choices.items()}
    out: dict[str, Any] = {f"{bar}_heldout": {t: metric(v, truth[t]) for t, v in control.items()}}
    if control and len(control) == len(truth):
        out[f"vs_best_{bar}"] = paired_bootstrap_difference(scores, control, truth, metric, mode, n_boot).to_json()
    return out


def run_verdict(best: Mapping[str, Any] | None, choices: Mapping[str, TrivialChoice],
                targets: Sequence[str], known: Mapping[str, TrivialChoice] | None = None) -> dict[str, Any]:
    """Return this run's verdict: the best program (by search fitness) against the best trivial predictor on held-out.

    With `known` (the best known proxy per target, `choose_known`) and the program's
    `vs_best_known`, the verdict also holds `over_known` and the run's `claim`.
    """
    if best is None or "vs_best_trivial" not in best:
        why = "no program passed screening" if best is None else "no trivial predictor is defined for every target"
        return {"verdict": NO_DISCOVERY, "why": why, "difference": None}
    diff = PairedDifference(**best["vs_best_trivial"])
    out = {"verdict": verdict([diff]), "formula": best["formula"],
           "difference": diff.to_json(), "trivial": {t: choices[t].label for t in targets}}
    if known and "vs_best_known" in best:
        over = PairedDifference(**best["vs_best_known"])
        out["over_known"] = {"verdict": verdict([over]), "difference": over.to_json(),
                             "known": {t: known[t].label for t in targets}}
        out["claim"] = claim(out["verdict"], out["over_known"]["verdict"])
    return out


def claim(over_trivial: str, over_known: str | None) -> str:
    """Return what a run or study may claim from its two verdicts (the known bar only counts above the trivial one)."""
    if over_trivial != DISCOVERY:
        return NO_DISCOVERY
    return "discovery over known proxies" if over_known == DISCOVERY else "discovery over trivial predictors"


def verdict_line(outcome: Mapping[str, Any]) -> str:
    """Return the summary's closing line, e.g. `Verdict (this run): no discovery — ...`."""
    if outcome.get("difference") is None:
        return f"Verdict (this run): {outcome['verdict']} ({outcome['why']})."
    d = outcome["difference"]
    trivial = ", ".join(sorted(set(outcome["trivial"].values())))
    return (f"Verdict (this run): **{outcome['verdict']}**: held-out Kendall of evolved #1 minus best trivial "
            f"predictor ({trivial}) = {d['value']:+.3f}, paired bootstrap 95% CI [{d['low']:+.3f}, {d['high']:+.3f}]"
            f" ({d['n_boot']} resamples). A discovery claim needs this in the median over >= 3 search seeds x 2 "
            "batch seeds (`emq search ... --seeds 0,1,2 --batch-seeds 0,1`)." + known_line(outcome))


def known_line(outcome: Mapping[str, Any]) -> str:
    """Return the sentence on the second bar (the best known proxy), "" when the run has none."""
    over = outcome.get("over_known")
    if not over:
        return ""
    d, names = over["difference"], ", ".join(sorted(set(over["known"].values())))
    return (f" Against the best known proxy ({names}, chosen on the search split): {d['value']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}], **{over['verdict']}** over it; this run's claim: "
            f"**{outcome['claim']}**.")
