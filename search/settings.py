"""The one owner of every search setting: its name, default, bounds and help, for the CLI, job files and the library.

`emq search` builds its options from `SETTINGS` (`cli_option`), a job file's fields are
checked against the same entries (`check_value`), and `SearchRequest` takes its
defaults from them (`default`), so the three cannot drift apart (a test compares
them). Bounds are documented limits, not tuning: they keep a typo such as
`population = 9223372036854775807` from allocating memory for hours.

Limits (README, "Hostile input"): population 2..100,000, generations 1..100,000, offspring 1..population,
budget 1..1,000,000,000, hurdle_size 0..10,000,000, hurdle_quantile 0..1, sketch 0 or 16..10,000,000,
hof_size 0..1,000, max_search 0 (all) ..10,000,000, max_heldout 3..10,000,000, at most 100 seeds and 100
batch seeds (each 0..2**31-1), workers 1..1,024, batch_size 1..1,024, hessian_samples
1..1,000, shard_memory_mb 1..10,000,000.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable

from emq.errors import EMQUserError

MAX_SEED = 2**31 - 1
MAX_LIST = 100


class SettingError(EMQUserError, ValueError):
    """Search settings that cannot run (out of their documented bounds, of the wrong kind, or not on this
    machine); the message names the setting. `search.session` knows it as SearchSettingsError."""


@dataclass(frozen=True)
class Setting:
    """One search setting as a person writes it on the command line (`cli`) or in a job file (`job`)."""

    name: str  # the SearchRequest / StatsConfig field
    kind: str  # "int", "float", "str", "bool", "ints" (list of int), "names" (list of str), "paths" (list of str)
    default: Any
    help: str
    cli: str | None = None  # option name; None: job files only
    job: str | None = None  # "section.field"; None: command line only
    low: float | None = None
    high: float | None = None
    choices: str | tuple[str, ...] | None = None  # a tuple, or "module:NAME" of a registry
    max_items: int = MAX_LIST

    def allowed(self) -> tuple[str, ...] | None:
        """Return the allowed names (read from the registry when `choices` names one)."""
        if isinstance(self.choices, str):
            module, name = self.choices.split(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices

    def bounds_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}..{self.high:g}"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}"


def _int(name: str, default: Any, low: int, high: int, help: str, cli: str | None, job: str | None) -> Setting:
    return Setting(name, "int", default, help, cli, job, low, high)


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    # [search]
    _int("population", 48, 2, 100_000, "Programs per generation.", "--population", "search.population"),
    _int("generations", 15, 1, 100_000, "Generations (a resumed run may raise it).", "--generations",
         "search.generations"),
    Setting("seeds", "ints", (0,), "Search seeds; a study runs one search per seed x batch seed.", "--seeds",
            "search.seeds", 0, MAX_SEED),
    Setting("batch_seeds", "ints", None, "Batch seeds of a study (default: the statistics' batch seed).",
            "--batch-seeds", "search.batch_seeds", 0, MAX_SEED),
    Setting("targets", "names", None, "Ground-truth columns the proxy must rank (default: all).", "--targets",
            "search.targets"),
    Setting("joint", "str", "mean", "How per-column fitness values combine into one (min = the worst column counts).",
            "--joint", "search.joint", choices=("mean", "min")),
    Setting("metric", "str", "kendall", "Rank correlation used as fitness.", "--metric", "search.metric",
            choices=("kendall", "spearman")),
    Setting("fitness", "str", "plain",
            "plain: the rank correlation on the search split, what the verdict measures held out; partial: "
            "min(plain, partialled on the best trivial predictor chosen on the search split), so disguised size "
            "counts earn nothing; residual: the partialled value alone (finds complements).",
            "--fitness", "search.fitness", choices="search.config:FITNESS_MODES"),
    Setting("reject_input_independent", "bool", False,
            "Reject programs whose scores do not move with the batch (default: keep them, flagged "
            "input_independent: a data-free proxy such as SynFlow is legitimate).", "--reject-input-independent",
            "search.reject_input_independent"),
    Setting("strategy", "str", "evolution",
            "evolution: breed programs (selection, crossover, mutation); random: every generation a fresh batch of "
            "random programs, screened and scored the same way (the control that says what evolution adds).",
            "--strategy", "search.strategy", choices="search.config:STRATEGIES"),
    Setting("evolution", "str", "generational",
            "generational: each generation breeds a new population, the hall of fame carried into it (elitism); "
            "aging: regularized evolution (Real et al. 2019), each child replaces the oldest program of the "
            "population, --offspring children per generation.", "--evolution", "search.evolution",
            choices="search.config:EVOLUTIONS"),
    _int("offspring", None, 1, 100_000, "Children per generation (log line, checkpoint) of --evolution aging "
         "(default: a quarter of --population; at most --population).", "--offspring", "search.offspring"),
    _int("budget", None, 1, 1_000_000_000, "Programs to evaluate in all (new programs screened; cache hits do not "
         "count): the run ends after the generation in which the count reaches N. --generations stays a cap: raise "
         "it to let the budget decide (default: no budget).", "--budget", "search.budget"),
    _int("hurdle_size", 0, 0, 10_000_000, "Multi-fidelity hurdle: score each new program first on the first N "
         "networks of the search split (a uniform sample); only those at or above the hurdle are scored on the "
         "whole split (0 = off; at least 3; as large as the split = off).", "--hurdle-size", "search.hurdle_size"),
    Setting("hurdle_quantile", "float", 0.5, "The hurdle: this quantile of the current population's fitness on the "
            "--hurdle-size networks (0.5 = its median).", "--hurdle-quantile", "search.hurdle_quantile", 0, 1),
    _int("sketch", 0, 0, 10_000_000, "Sketched statistics: score the search split's programs on a fixed random sample "
         "of K entries of each per-layer tensor statistic larger than K (weight, grad, act, ...; sums scale by "
         "numel / K), where a program only maps entries and reduces them; the hall of fame is scored again on the "
         "full statistics (0 = off; at least 16).", "--sketch", "search.sketch"),
    Setting("sketch_slices", "bool", False, "With --sketch K: score the programs a sketch cannot serve (softmax, "
            "sort, row norms, matrix ops: they read shapes) on slices of the same statistics: the sub-tensor at "
            "fixed random rows and columns (dims 0 and 1), at most K entries; biased estimates for shape-reading "
            "ops, much faster; programs with a cross-layer op still read the full tensors; the hall of fame is "
            "scored again on the full statistics.", "--sketch-slices", "search.sketch_slices"),
    Setting("separable", "bool", False, "Separable programs only: sum_layers(f(the layer's own per-(layer, bits) "
            "statistics lb_*)), each layer's term read from one table computed once (|L| x |B| passes), so a "
            "program scores any configuration as a sum and `emq apply mq` allocates bits exactly (MQ benchmarks; "
            "default --stats: every lb_* statistic).", "--separable", "search.separable"),
    _int("hof_size", 10, 0, 1_000, "Elite programs carried into every generation.", "--hof-size", "search.hof_size"),
    _int("max_search", 160, 0, 10_000_000, "Use at most N networks of the search split (bounds memory and time; "
         "0 = all).", "--max-search", "search.max_search"),
    _int("max_heldout", None, 3, 10_000_000, "Score at most N held-out networks (default: all; a verdict on fewer "
         "candidates has wider intervals).", "--max-heldout", "search.max_heldout"),
    Setting("seed_proxies", "paths", (), "Proxy JSON files placed in the first population (known: the known-proxy "
            "library, known:NAME,... some of it).", "--seed-proxies",
            "search.seed_proxies", max_items=1_000),
    # [stats]
    _int("batch_size", 16, 1, 1_024, "Images in the batch the statistics are computed on.", "--batch-size",
         "stats.batch_size"),
    _int("init_seed", 0, 0, MAX_SEED, "Seed of random initialisation (benchmarks without trained weights).",
         "--init-seed", "stats.init_seed"),
    _int("hessian_samples", 2, 1, 1_000, "Hutchinson samples for hessian_diag.", "--hessian-samples",
         "stats.hessian_samples"),
    Setting("store_dtype", "str", "float16", "Storage dtype of cached statistics (float16 halves memory; programs "
            "evaluate in float32).", "--dtype", "stats.dtype", choices=("float16", "float32")),
    Setting("stat_names", "names", None, "Statistics to compute and cache (default: every applicable one).",
            "--stats", "stats.stats", max_items=1_000),
    Setting("device", "str", None, "torch device for statistics (default: cuda if present, else cpu).", "--device",
            "stats.device"),
    # [backend]
    Setting("backend", "str", "loky", "Evaluation pool: the search candidates are sharded over its workers.",
            "--backend", "backend.name", choices="search.pool:BACKENDS"),
    Setting("scheduler", "str", None, "Dask scheduler address (tcp://host:8786) for backend dask.", "--scheduler",
            "backend.scheduler"),
    _int("workers", None, 1, 1_024, "Pool workers (default: usable CPU cores).", "--workers", "backend.workers"),
    Setting("pool_device", "str", None, "torch device of the pool workers (default: the statistics' device).", None,
            "backend.device"),
    Setting("shard_memory_mb", "float", None, "MB of statistics a worker may keep resident; a larger shard is "
            "streamed from the cache files.", "--shard-memory", "backend.shard_memory_mb", 1, 10_000_000),
    Setting("screen_in", "str", "workers", "Where new programs are screened on the probe networks: the pool's "
            "worker processes (every core screens and scores), or the search's own process.", "--screen-in",
            "backend.screen_in", choices="search.screener:SCREEN_IN"),
]}


def default(name: str) -> Any:
    """Return the default of setting `name` (what the CLI shows, a job file gets when silent, SearchRequest holds)."""
    return SETTINGS[name].default


def check_value(setting: Setting, value: Any, where: str) -> Any:
    """Return `value` as the setting's kind after checking kind, bounds and names; else SettingError naming `where`.

    `where` is how the user wrote it: "--population" or "job.toml: field search.population".
    """
    def fail(why: str) -> SettingError:
        return SettingError(f"{where} {why}, got {_short(value)}")

    kind = setting.kind
    if value is None:
        return None
    if kind in ("int", "float"):
        ok = isinstance(value, int) or (kind == "float" and isinstance(value, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value):
            raise fail(f"must be {'an integer' if kind == 'int' else 'a number'} in {setting.bounds_text()}")
        if (setting.low is not None and value < setting.low) or (setting.high is not None and value > setting.high):
            raise fail(f"must be in {setting.bounds_text()}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("must be true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise fail("must be a string")
        allowed = setting.allowed()
        if allowed is not None and value not in allowed:
            raise fail(f"must be one of {', '.join(allowed)}")
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise fail("must be a non-empty list")
    if len(value) > setting.max_items:
        raise SettingError(f"{where} has {len(value)} entries; at most {setting.max_items}")
    item = Setting(setting.name, "int" if kind == "ints" else "str", None, "", low=setting.low, high=setting.high)
    return tuple(check_value(item, v, f"{where} entry") for v in value)


def check_settings(values: dict[str, Any], where: Callable[[Setting], str]) -> dict[str, Any]:
    """Return `values` (setting name -> value) checked by `check_value`; `where(setting)` names each for messages."""
    return {name: check_value(SETTINGS[name], v, where(SETTINGS[name])) for name, v in values.items()}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
