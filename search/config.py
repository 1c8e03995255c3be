"""What decides a proxy search's results (`SearchConfig`), and the errors a run folder or a seed can raise."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from emq.errors import EMQUserError
from emq.fitness import SPLIT_ORDERS, get_metric
from search.generate import GrowConfig
from search.settings import SETTINGS

#: The engine that wrote a run folder (recorded in its config, checkpoint and hall of fame). /2: the loop runs on
#: DEAP (selection draws from its own stream, `search.rng`), so its draws differ from /1's; /1 folders stay
#: readable, and their checkpoints are refused on resume (`search.checkpoint`).
ENGINE = "emq-search/2"
#: "plain" (default): the rank correlation, what the verdict measures held out;
#: "partial": min(plain, partialled on the best trivial predictor) (`emq.fitness.beyond_trivial`);
#: "residual": the partial correlation alone (rewards complements of the trivial predictor).
FITNESS_MODES = ("plain", "partial", "residual")
#: "evolution" (default): selection, crossover and mutation breed each generation; "random": each generation
#: after the first is `population` fresh random programs from the same grammar (the control of evolution).
STRATEGIES = ("evolution", "random")
#: How strategy "evolution" replaces programs. "generational" (default): each generation is a new population, the
#: hall of fame carried into it (elitism); "aging": regularized evolution (Real et al. 2019), the population a queue
#: in which each child replaces the oldest program, `offspring` children per log row (`search.engine`).
EVOLUTIONS = ("generational", "aging")
#: Fewest entries of a sketch (`SearchConfig.sketch`): fewer make spreads and extremes mostly noise.
MIN_SKETCH = 16


class RunFolderError(EMQUserError, ValueError):
    """A run folder's hall_of_fame.json is not one this engine wrote; the message names the file."""


class ResumeError(EMQUserError, ValueError):
    """A run folder cannot be started or resumed as asked (it holds a run, or one with another config)."""


class SeedProxyError(EMQUserError, ValueError):
    """A `--seed-proxies` program the search cannot use (too large, or reads statistics it lacks)."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's results (with the statistics and ground truth it runs on).

    `targets` None means every ground-truth column. `stats` None means every
    statistic present in all search networks. `fresh_share` of each generation are
    new random programs; the hall of fame (`hof_size`) is carried over whole.
    `time_budget_s` bounds the projected seconds to score one program on the search
    split (the only timing-dependent rule: keep it generous for reproducible runs).
    `trivial_tau_limit` rejects programs whose probe ranking matches a trivial
    predictor (#params, bit counts, quantized loss: |Kendall| at or above it; 1
    disables), `arch_eta_limit` those whose probe scores are a function of one
    architecture hyperparameter (eta squared of the ranks; above 1 disables).
    `split_order` "hash" lists each half of the split in the order of its hash, so a
    `--max-search` / `--max-heldout` cut is a uniform sample ("index": old run folders).
    `reject_input_independent` rejects programs whose probe scores do not move with
    the batch; off, they are kept and flagged `input_independent` in the hall of fame.
    `fitness` "plain" (the default) is the rank correlation on the search split, the
    quantity the verdict measures held out; "partial" pays only for what a program adds
    beyond the best trivial predictor of each target, chosen on the search split, and
    never more than it ranks on its own: min(plain, partialled) Kendall or Spearman
    (`emq.fitness.beyond_trivial`); "residual" is the partialled value alone
    (`emq.fitness.partial_correlation`: it finds complements that rank badly alone).
    Without trivial predictors all are the same.
    `strategy` "evolution" breeds each generation; "random" samples it afresh (the
    control). `budget` (None: none) ends the run after the generation in which the
    programs evaluated (new programs screened, cache hits not counted) reach it;
    `generations` stays a cap. `hurdle_size` > 0 scores each new program first on the
    first `hurdle_size` search networks and on the whole split only when it reaches the
    `hurdle_quantile` of the population's fitness there (`search.hurdles`).
    `evolution` "generational" breeds a new population each generation, the hall of fame
    carried over; "aging" (regularized evolution) keeps the population as a queue in
    which each child replaces the oldest program, `offspring` children per generation
    (log row, checkpoint); None: a quarter of `population` (`offspring_size`). `sketch` K > 0
    scores programs on the search split and probe on K-entry samples of the large
    positional statistics where they can (`emq.sketch`); the hall of fame is then scored
    again on the full search split, ranked by that fitness, and keeps the sketched one.
    `sketch_slices` (with `sketch`) scores the programs a sketch cannot serve (ops that
    read shapes) on K-entry slices of the same statistics, unless they have a cross-layer op.
    `separable` builds only programs sum_layers(f(per-(layer, bits) statistics `lb_*`)) (`search.generate.
    separable_grow_config`), each separable by construction (`emq.separable.is_separable`).
    `equivalence_cache` gives a program whose probe scores equal (to 6 significant
    digits, `search.screening.probe_fingerprint`) those of a program scored earlier in
    the run that program's record instead of scoring it on the search split;
    programs equal on the probe but not on the full split then share a fitness (the
    AutoML-Zero trade-off). `memo_size` bounds both caches.
    """

    # The settings a person chooses default to `search.settings.SETTINGS`, as the CLI, job files and
    # SearchRequest do (one table; tests/test_hostile_inputs_2.py checks the four agree).
    population: int = SETTINGS["population"].default
    generations: int = SETTINGS["generations"].default
    seed: int = SETTINGS["seeds"].default[0]
    metric: str = SETTINGS["metric"].default
    joint: str = SETTINGS["joint"].default
    targets: tuple[str, ...] | None = SETTINGS["targets"].default
    hof_size: int = SETTINGS["hof_size"].default
    fresh_share: float = 0.1
    cx_prob: float = 0.3
    mut_prob: float = 0.6
    tournament: int = 3
    max_size: int = 20
    max_depth: int = 7
    probe_size: int = 32
    time_budget_s: float = 60.0
    niche_threshold: float = 0.98
    reject_input_independent: bool = SETTINGS["reject_input_independent"].default
    trivial_tau_limit: float = 0.95
    arch_eta_limit: float = 0.99
    fitness: str = SETTINGS["fitness"].default
    strategy: str = SETTINGS["strategy"].default
    evolution: str = SETTINGS["evolution"].default
    offspring: int | None = SETTINGS["offspring"].default
    budget: int | None = SETTINGS["budget"].default
    hurdle_size: int = SETTINGS["hurdle_size"].default
    hurdle_quantile: float = SETTINGS["hurdle_quantile"].default
    sketch: int = SETTINGS["sketch"].default
    sketch_slices: bool = SETTINGS["sketch_slices"].default
    separable: bool = SETTINGS["separable"].default
    stats: tuple[str, ...] | None = None
    op_weights: tuple[tuple[str, float], ...] = ()
    heldout_fraction: float = 0.5
    split_seed: int = 0
    split_order: str = "hash"
    memo_size: int = 20000
    equivalence_cache: bool = True
    seed_formulas: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("targets", "stats", "seed_formulas"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        weights = self.op_weights.items() if isinstance(self.op_weights, Mapping) else self.op_weights
        object.__setattr__(self, "op_weights", tuple((str(k), float(v)) for k, v in weights))
        get_metric(self.metric)
        if self.joint not in ("mean", "min"):
            raise ValueError(f"joint must be 'mean' or 'min', got {self.joint!r}")
        if self.fitness not in FITNESS_MODES:
            raise ValueError(f"fitness must be one of {', '.join(FITNESS_MODES)}, got {self.fitness!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.evolution not in EVOLUTIONS:
            raise ValueError(f"evolution must be one of {', '.join(EVOLUTIONS)}, got {self.evolution!r}")
        if self.evolution == "aging" and self.strategy != "evolution":
            raise ValueError(f"evolution 'aging' breeds programs: it needs strategy 'evolution', not {self.strategy!r}")
        if self.offspring is not None and not 1 <= self.offspring <= self.population:
            raise ValueError(f"offspring must be in 1..population ({self.population}) (None: a quarter of it), "
                             f"got {self.offspring}")
        object.__setattr__(self, "hurdle_quantile", float(self.hurdle_quantile))
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1 program (None: no budget), got {self.budget}")
        if self.hurdle_size != 0 and self.hurdle_size < 3:
            raise ValueError(f"hurdle_size must be 0 (off) or >= 3 networks (a rank correlation), "
                             f"got {self.hurdle_size}")
        if self.sketch != 0 and self.sketch < MIN_SKETCH:
            raise ValueError(f"sketch must be 0 (off) or >= {MIN_SKETCH} entries, got {self.sketch}")
        if self.sketch_slices and not self.sketch:
            raise ValueError("sketch_slices (--sketch-slices) needs sketch K > 0 (--sketch K): the slices hold at most K "
                             "entries; add --sketch 1024, or drop --sketch-slices")
        if not 0 <= self.hurdle_quantile <= 1:
            raise ValueError(f"hurdle_quantile must be in [0, 1], got {self.hurdle_quantile}")
        if self.split_order not in SPLIT_ORDERS:
            raise ValueError(f"split_order must be one of {', '.join(SPLIT_ORDERS)}, got {self.split_order!r}")
        if self.population < 2:
            raise ValueError("population must be >= 2")
        if not 0 <= self.hof_size < self.population:
            raise ValueError("hof_size must be in [0, population)")
        if not 0 <= self.fresh_share <= 1 or not 0 <= self.cx_prob <= 1 or not 0 <= self.mut_prob <= 1:
            raise ValueError("fresh_share, cx_prob and mut_prob must be in [0, 1]")
        if self.cx_prob + self.mut_prob > 1:
            raise ValueError("cx_prob + mut_prob must be <= 1 (the rest is reproduction)")
        if self.probe_size < 3:
            raise ValueError("probe_size must be >= 3")
        GrowConfig(self.max_depth, self.max_size)  # validates the limits

    def to_json(self) -> dict[str, Any]:
        """Return the config as JSON-ready data (tuples as lists, `op_weights` as an object)."""
        data = dataclasses.asdict(self)
        data["op_weights"] = dict(self.op_weights)
        for name in ("targets", "stats", "seed_formulas"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SearchConfig":
        """Return the config `to_json` wrote; an unknown field is a ValueError (a newer or damaged file).

        A config without `split_order` was written before splits were ordered by their
        hash: it reads as "index", so old run folders rescore on the candidates they ran on.
        Other missing fields (a folder older than them) take their defaults: no budget, no hurdle,
        generational evolution, no sketch (and no slices), not separable.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown search config field(s): {sorted(unknown)}")
        return cls(**{"split_order": "index", **dict(data)})

    def strategy_text(self) -> str:
        """Return how the run searches, for summaries and studies, e.g. `strategy random, budget 720 programs`."""
        parts = [f"strategy {self.strategy}"]
        if self.evolution != "generational":
            parts.append(f"evolution {self.evolution} ({self.offspring_size()} children per generation)")
        if self.budget is not None:
            parts.append(f"budget {self.budget} programs")
        if self.hurdle_size:
            parts.append(f"hurdle: the {self.hurdle_quantile:g} quantile on the first {self.hurdle_size} networks")
        if self.separable:
            parts.append("separable programs only: sum_layers(f(lb_*))")
        if self.sketch:
            parts.append(f"sketch: {self.sketch} entries per statistic"
                         + (", slices for shape-reading programs" if self.sketch_slices else "")
                         + " (hall of fame rescored on full statistics)")
        return ", ".join(parts)

    def offspring_size(self) -> int:
        """Return the children per generation of aging evolution: `offspring`, else a quarter of `population`."""
        return self.offspring if self.offspring is not None else max(1, self.population // 4)

    def resume_conflicts(self, saved: "SearchConfig") -> list[str]:
        """Return the fields (other than `generations` and `budget`, which may grow) that differ from a saved run's."""
        mine, theirs = self.to_json(), saved.to_json()
        return [k for k in mine if k not in EXTENSIBLE and mine[k] != theirs[k]]

    def extends(self, saved: "SearchConfig") -> bool:
        """Whether this config takes `saved` further (another `generations` or `budget`; config.json is rewritten)."""
        return any(getattr(self, k) != getattr(saved, k) for k in EXTENSIBLE)


#: Fields a resumed run may change: they say how far the run goes, not what each generation does.
EXTENSIBLE = ("generations", "budget")
