"""`emq` command line: parse options, call one library function, print a short summary."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click


class UserError(click.ClickException):
    """A user or environment error as the CLI reports it: one line on stderr, exit code 2 (like a bad option)."""

    exit_code = 2


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user errors (bad files, unknown names, bad paths) into one-line CLI errors, exit code 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from emq.errors import one_line

        try:
            return fn(*args, **kwargs)
        except _user_errors() as err:
            raise UserError(one_line(_describe(err))) from None

    return wrapper


def _user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type that reports bad input or environment, not a bug.

    `EMQUserError` (from the leaf module `primitives.errors`) covers every layer of
    the project; the others come from the operating system (a missing file, a folder
    without write permission).
    """
    from primitives.errors import EMQUserError

    return (EMQUserError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
            FileExistsError)


def _describe(err: BaseException) -> str:
    """Return the message of a user error; an OS error also names its path and what to check."""
    if isinstance(err, OSError) and err.filename is not None and not isinstance(err, FileNotFoundError):
        return f"{err.filename}: {err.strerror or err}; check the path and its permissions"
    return str(err)


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EMQ_DATA_DIR", default=None,
    help="Folder of public ground-truth files (default: $EMQ_DATA_DIR, else ../shared/benchmarks beside the repo).",
)


BATCH_SOURCE_KEY = "emq.batch_source"


def _set_batch_source(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Remember --batch-source for `_ensure_built`, which passes it to the benchmark as an argument."""
    ctx.meta[BATCH_SOURCE_KEY] = value


class _RegistryHelpOption(click.Option):
    """An option whose help is read from the registries when shown (not at import: `emq` starts fast)."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.help_from()
        return super().get_help_record(ctx)


def _batch_source_help() -> str:
    from emq.bench.registry import list_benchmarks

    offered = [f"{e.name} ({'|'.join(dict(e.options)['batch_source'])})" for e in list_benchmarks()
               if "batch_source" in dict(e.options)]
    return ("Input batch of benchmarks whose datasets are not offline (recorded with every score): "
            + "; ".join(offered) + ". Default: the benchmark's own.")


STAT_NAMES_KEY = "emq.stat_names"


def _set_stat_names(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Remember --stats for `_stats_config` (kept out of the commands' signatures), failing on unknown names."""
    if not value:
        return
    from emq.stats import UnknownStatError, check_stat_names

    names = tuple(n.strip() for n in value.split(",") if n.strip())
    try:
        check_stat_names(names)
    except UnknownStatError as err:
        raise click.BadParameter(str(err)) from None
    ctx.meta[STAT_NAMES_KEY] = names


#: Largest --batch-size: statistics keep per-image activations, and the digits splits hold a few hundred images.
MAX_BATCH_SIZE = 1024


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Fail on a --device torch does not know, or one this machine does not have (CUDA without a GPU)."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{value!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise click.BadParameter(f"{value!r}: EMQ computes statistics on cpu or cuda devices only")
    return value


def _stats_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--stats", "stat_names", default=None, expose_value=False, callback=_set_stat_names,
                     help="Comma-separated statistics to compute and cache, e.g. weight,grad,virtual_grad "
                          "(default: every applicable one; on 224x224 ViTs name a few: see `emq stats --list` "
                          "and README 'ViT statistics and memory'). Baselines add what they need."),
        click.option("--batch-seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the fixed input batch (recorded with every score)."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, MAX_BATCH_SIZE), help="Images in the batch the statistics are computed on."),
        click.option("--init-seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of random initialisation (benchmarks without trained weights)."),
        click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
                     help="Storage dtype of cached statistics (float16 halves memory; programs evaluate in float32)."),
        click.option("--hessian-samples", default=2, show_default=True, type=click.IntRange(1, 1000), help="Hutchinson samples for hessian_diag."),
        click.option("--device", default=None, callback=_check_device, help="torch device for statistics (default: cuda if present, else cpu)."),
        click.option("--batch-source", cls=_RegistryHelpOption, help_from=_batch_source_help, default=None,
                     expose_value=False, callback=_set_batch_source, is_eager=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _stats_config(batch_seed: int, batch_size: int, init_seed: int, dtype: str, hessian_samples: int, device: str | None):
    from emq.stats_cache import StatsConfig

    ctx = click.get_current_context(silent=True)
    names = ctx.meta.get(STAT_NAMES_KEY) if ctx is not None else None
    return StatsConfig(batch_seed=batch_seed, batch_size=batch_size, init_seed=init_seed, store_dtype=dtype,
                       hessian_samples=hessian_samples, device=device or _default_device(), stat_names=names)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """EMQ: discover and score training-free proxies for mixed-precision quantization and ViTs.

    \b
    Typical session:
      emq bench list                         # what can be ranked
      emq bench build mq-digits              # build the embedded MQ benchmark (minutes, once)
      emq score mq-digits --baselines        # how well do hand-made proxies rank it?
      emq score mq-digits --formula "sum_layers(l2(quant_error))"
      emq ops                                # the building blocks of proxy programs
    """


# ----------------------------------------------------------------------------- ops
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def ops(as_json: bool) -> None:
    """List the primitive ops proxy programs are built from, with type signatures.

    Types: T = per-layer tensor, S = per-layer scalar, N = one number per network.
    A program maps statistics (T) through ops to N, e.g. mean_layers(l2(mul(weight, grad))).
    """
    from primitives import list_ops

    all_ops = list_ops()
    if as_json:
        click.echo(json.dumps([{"name": o.name, "signature": o.signature(), "group": o.group, "doc": o.doc} for o in all_ops], indent=2))
        return
    group = None
    for op in all_ops:
        if op.group != group:
            group = op.group
            click.echo(f"\n{group}:")
        click.echo(f"  {op.name:<20} {op.signature():<10} {op.doc}")
    click.echo(f"\n{len(all_ops)} ops. Statistics (leaves of type T): see `emq stats --list`.")


# --------------------------------------------------------------------------- bench
@main.group()
def bench() -> None:
    """List, build and inspect benchmarks (candidates + ground-truth accuracy)."""


@bench.command("list")
def bench_list() -> None:
    """List registered benchmarks: embedded ones are built here, public ones read from --data-dir."""
    from emq.bench.registry import list_benchmarks

    for entry in list_benchmarks():
        where = "embedded (emq bench build)" if entry.embedded else "public file (--data-dir)"
        click.echo(f"{entry.name:<28} {entry.family:<4} {where:<28} {entry.doc}")


@bench.command("build")
@click.argument("name")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of training, splits and sampled configurations.")
@click.option("--num-configs", default=None, type=click.IntRange(min=1), help="Number of candidates to measure (default: the benchmark's own).")
@click.option("--overwrite", is_flag=True, help="Replace an existing build (e.g. the committed results/NAME).")
@_friendly_errors
def bench_build(name: str, seed: int, num_configs: int | None, overwrite: bool) -> None:
    """Build embedded benchmark NAME offline (train, then measure every candidate).

    Deterministic given --seed. An existing build (such as the committed one under
    results/) is replaced only with --overwrite. Example: emq bench build mq-digits --seed 0
    """
    from emq.bench.registry import get_builder

    builder = get_builder(name)
    kwargs: dict[str, Any] = {"seed": seed, "overwrite": overwrite}
    if num_configs is not None:
        kwargs["num_configs"] = num_configs
    start = time.perf_counter()
    out = builder(**kwargs)
    click.echo(f"built {name} in {time.perf_counter() - start:.0f} s -> {out}")


@bench.command("show")
@click.argument("name")
@data_dir_option
@click.option("--limit", default=5, show_default=True, type=click.IntRange(min=1), help="Candidates to print.")
@_friendly_errors
def bench_show(name: str, data_dir: Path | None, limit: int) -> None:
    """Summarise benchmark NAME: candidates, ground-truth columns and their spread."""
    from emq.bench.summary import summarize_benchmark
    from emq.bench.registry import get_benchmark
    from emq.paths import data_dir as resolve

    click.echo(summarize_benchmark(get_benchmark(name, resolve(data_dir)), limit=limit))


# --------------------------------------------------------------------------- stats
@main.command()
@click.argument("name", required=False)
@data_dir_option
@_stats_options
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N candidates.")
@click.option("--list", "list_stats", is_flag=True, help="List the statistics catalogue and exit.")
@_friendly_errors
def stats(name: str | None, data_dir: Path | None, batch_seed: int, batch_size: int, init_seed: int, dtype: str,
          hessian_samples: int, device: str | None, limit: int | None, list_stats: bool) -> None:
    """Precompute the statistics cache of benchmark NAME (a second run computes nothing).

    Example: emq stats mq-digits --batch-size 16 --dtype float16
    """
    from emq.stats import STATS

    if list_stats or not name:
        for info in STATS.values():
            click.echo(f"{info.name:<16} {'(MQ only) ' if info.needs_bits else ''}{info.doc}")
        return
    from emq.paths import data_dir as resolve
    from emq.stats_cache import load_or_compute

    bench_obj = _ensure_built(name, resolve(data_dir))
    cands = bench_obj.candidates()[:limit] if limit else bench_obj.candidates()
    config = _stats_config(batch_seed, batch_size, init_seed, dtype, hessian_samples, device)
    start = time.perf_counter()
    load_or_compute(bench_obj, cands, config, progress=True)
    click.echo(f"statistics of {len(cands)} candidates ready in {time.perf_counter() - start:.1f} s")


def _ensure_built(name: str, data_dir: Path | None):
    """Return benchmark `name` (with --batch-source), building it first when it is embedded and not built yet."""
    from emq.bench.registry import open_benchmark

    ctx = click.get_current_context(silent=True)
    source = ctx.meta.get(BATCH_SOURCE_KEY) if ctx is not None else None
    return open_benchmark(name, data_dir, notify=lambda line: click.echo(line, err=True), batch_source=source)


# --------------------------------------------------------------------------- score
@main.command()
@click.argument("name")
@data_dir_option
@click.option("--proxy", "proxy_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Proxy JSON file (emq-proxy/1) to score; repeatable.")
@click.option("--formula", "formulas", multiple=True, help="Proxy formula to score, e.g. 'sum_layers(l2(grad))'; repeatable.")
@click.option("--baselines", "all_baselines", is_flag=True,
              help="Also score every baseline that applies to this benchmark, the trivial predictors included "
                   "(#params, FLOPs, bit counts, quantized loss, one `arch:<hyperparameter>` per numeric arch setting).")
@click.option("--baseline", "baseline_names", multiple=True, help="Score this baseline (repeatable); --baselines scores every one that applies.")
@click.option("--split", type=click.Choice(["all", "search", "heldout"]), default="all", show_default=True,
              help="Candidates to score: all, or the search / held-out half of the fixed split.")
@click.option("--targets", default=None, help="Comma-separated ground-truth columns (default: all).")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(10, 1_000_000), help="Bootstrap resamples for the 95% intervals.")
@click.option("--limit", default=None, type=click.IntRange(min=3),
              help="Only the first N candidates of the split (a quick look; a rank correlation needs at least 3).")
@_stats_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report here (.md table or .json), atomically.")
@_friendly_errors
def score(name: str, data_dir: Path | None, proxy_files: tuple[Path, ...], formulas: tuple[str, ...], all_baselines: bool,
          baseline_names: tuple[str, ...], split: str, targets: str | None, n_boot: int, limit: int | None, batch_seed: int, batch_size: int,
          init_seed: int, dtype: str, hessian_samples: int, device: str | None, as_json: bool, out_file: Path | None) -> None:
    """Rank-correlate proxies and baselines with benchmark NAME's ground truth.

    Prints Kendall tau and Spearman rho with bootstrap 95% intervals per ground-truth
    column, each model baseline's measured cost per candidate, and flags degenerate
    scorers: nonfinite, constant, input_independent, and trivial_equivalent(NAME) for a
    proxy that ranks like a trivial predictor (|Kendall| >= 0.95) or is a function of
    one architecture hyperparameter.

    \b
    Examples:
      emq score mq-digits --baselines
      emq score mq-digits --proxy proxy.json --split heldout
      emq score mq-digits --formula "sum_layers(s_log(l2(quant_error)))" --json
    """
    from emq.atomic import write_json_atomic, write_text_atomic
    from emq.baselines import benchmark_baselines
    from emq.paths import data_dir as resolve
    from emq.proxy import Proxy
    from emq.scoring import score_benchmark

    _check_out(out_file, proxy_files)
    proxies = {p.stem: Proxy.load(p) for p in proxy_files}  # bad proxies fail before any heavy work
    proxies.update({f"formula{i + 1}" if len(formulas) > 1 else "formula": Proxy.from_formula(f) for i, f in enumerate(formulas)})
    bench_obj = _ensure_built(name, resolve(data_dir))
    names = list(baseline_names) + ([b for b in benchmark_baselines(bench_obj) if b not in baseline_names] if all_baselines else [])
    if not proxies and not names:
        raise click.UsageError("nothing to score: give --proxy FILE, --formula TEXT, --baseline NAME or --baselines")
    config = _stats_config(batch_seed, batch_size, init_seed, dtype, hessian_samples, device)
    target_list = _parse_targets(targets, list(bench_obj.ground_truth()), name)
    report = score_benchmark(bench_obj, proxies, names, config, split=split, targets=target_list, n_boot=n_boot,
                             limit=limit)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.to_markdown())
    if out_file:
        if out_file.suffix == ".json":
            write_json_atomic(out_file, report.to_json())
        else:
            command = _command_line()
            header = (f"# Scores on `{name}`\n\nReproduce: `{command}`\n\nStatistics: "
                      + ", ".join(f"{k}={v}" for k, v in config.describe().items()) + "\n\n")
            write_text_atomic(out_file, header + report.to_markdown())
        click.echo(f"wrote {out_file}", err=True)


# -------------------------------------------------------------------------- search
BACKEND_CHOICES = ["loky", "threading", "dask", "ray", "serial"]


@main.command()
@click.argument("name")
@data_dir_option
@click.option("--targets", default=None, help="Comma-separated ground-truth columns the proxy must rank (default: all).")
@click.option("--joint", type=click.Choice(["mean", "min"]), default="mean", show_default=True,
              help="How per-column fitness values combine into one (min = the worst column counts).")
@click.option("--metric", type=click.Choice(["kendall", "spearman"]), default="kendall", show_default=True,
              help="Rank correlation used as fitness.")
@click.option("--population", default=48, show_default=True, type=click.IntRange(min=2), help="Programs per generation.")
@click.option("--generations", default=15, show_default=True, type=click.IntRange(min=1), help="Generations (a resumed run may raise it).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the search (same seed + config = same hall of fame).")
@click.option("--seeds", default=None,
              help="Comma-separated search seeds for a study, e.g. 0,1,2: one run per seed x batch seed in --out, "
                   "then study.md with the discovery verdict over all runs (overrides --seed).")
@click.option("--batch-seeds", default=None,
              help="Comma-separated batch seeds for a study, e.g. 0,1 (overrides --batch-seed).")
@click.option("--fitness", type=click.Choice(["partial", "residual", "plain"]), default="partial", show_default=True,
              help="partial: min(plain, partialled on the best trivial predictor chosen on the search split), so "
                   "disguised size counts and quantized losses earn nothing and backwards rankers earn less; "
                   "residual: the partialled value alone (finds complements); plain: the rank correlation itself.")
@click.option("--hof-size", default=10, show_default=True, type=click.IntRange(min=0), help="Elite programs carried into every generation.")
@click.option("--max-search", default=160, show_default=True, type=click.IntRange(min=0),
              help="Use at most N networks of the search split (bounds memory and time; 0 = all). "
                   "The held-out split is always scored whole.")
@click.option("--max-heldout", default=None, type=click.IntRange(min=3),
              help="Score at most N held-out networks (default: all; quick looks and tests: a verdict on fewer "
                   "candidates has wider intervals).")
@click.option("--seed-proxies", "seed_proxy_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Proxy JSON file(s) (e.g. exported from another search) placed in the first population; repeatable.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="loky", show_default=True,
              help="Evaluation pool: the search candidates are sharded over its workers (one shard each); "
                   "dask needs --scheduler or starts a LocalCluster.")
@click.option("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786) for --backend dask.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Pool workers (default: usable CPU cores; more needs --force-workers).")
@click.option("--force-workers", is_flag=True, help="Allow more --workers than usable cores.")
@click.option("--shard-memory", default=None, type=click.FloatRange(min=1, min_open=False),
              help="MB of statistics a worker may keep resident; a larger shard is streamed from the cache files "
                   "on every generation instead (slower; for caches larger than memory). Default: keep it.")
@click.option("--baseline", "baseline_names", multiple=True,
              help="Baselines to compare on held-out (repeatable; default: every cheap program baseline).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/NAME-seedSEED).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@_stats_options
@_friendly_errors
def search(name: str, data_dir: Path | None, targets: str | None, joint: str, metric: str, population: int,
           generations: int, seed: int, seeds: str | None, batch_seeds: str | None, fitness: str, hof_size: int, max_search: int | None, max_heldout: int | None, seed_proxy_files: tuple[Path, ...],
           backend: str, scheduler: str | None, workers: int | None, force_workers: bool, shard_memory: float | None,
           baseline_names: tuple[str, ...],
           run_dir: Path | None, resume: bool, batch_seed: int, batch_size: int, init_seed: int,
           dtype: str, hessian_samples: int, device: str | None) -> None:
    """Evolve proxy programs that rank benchmark NAME's candidates like its ground truth.

    The candidates are split once (fixed seed) into a search half and a held-out half.
    Programs are screened (NaN/inf, constant, unchanged under a second batch, a trivial
    predictor in disguise, too slow), scored on the search half by rank correlation
    beyond the best trivial predictor (--fitness partial), and the hall of fame is
    finally compared with the baselines on the held-out half. The run folder gets
    log.jsonl, hall_of_fame.json, evolution.png, scatter.png and summary.md, which ends
    with the run's verdict against the best trivial predictor; it is checkpointed every
    generation, so a killed run continues with --resume. With --seeds / --batch-seeds
    it runs a study (one run per combination) whose study.md gives the verdict:
    "discovery" or "no discovery".

    \b
    Examples:
      emq search mq-digits                                  # defaults: < 10 min on 2 cores
      emq search vit-digits --targets test_acc,test_acc_low_data --joint min
      emq search vit-bench-101-autoformer --targets c100_kd_acc,flower_kd_acc,chaoyang_kd_acc
      emq search mq-digits --backend dask --scheduler tcp://10.0.0.5:8786
      emq search mq-digits --out runs/mq-digits-seed0 --resume --generations 40
      emq search mq-digits --seeds 0,1,2 --batch-seeds 0,1 --out runs/mq-study   # the discovery verdict
    """
    from emq.paths import data_dir as resolve
    from emq.proxy import Proxy
    from search.benchmark import search_benchmark
    from search.config import SearchConfig
    from search.pool import EvaluationPool
    from search.run_lock import run_folder_lock

    seed_formulas = tuple(Proxy.load(p).formula() for p in seed_proxy_files)
    bench_obj = _ensure_built(name, resolve(data_dir))
    columns = list(bench_obj.ground_truth())
    target_list = _parse_targets(targets, columns, name)
    seed_list = _numbers(seeds, int, "--seeds") if seeds else [seed]
    batch_list = _numbers(batch_seeds, int, "--batch-seeds") if batch_seeds else [batch_seed]
    study = len(seed_list) * len(batch_list) > 1
    run_dir = run_dir or Path("runs") / (f"{name}-study" if study else f"{name}-seed{seed_list[0]}")
    try:
        cfg = SearchConfig(population=population, generations=generations, seed=seed_list[0], metric=metric,
                           joint=joint, targets=tuple(target_list) if target_list else None,
                           hof_size=min(hof_size, population - 1), seed_formulas=seed_formulas, fitness=fitness)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    config = _stats_config(batch_list[0], batch_size, init_seed, dtype, hessian_samples, device)
    command = _command_line()
    workers = _checked_workers(backend, workers, force_workers)
    start = time.perf_counter()
    options = dict(baselines=list(baseline_names) or None, max_search=max_search or None, max_heldout=max_heldout,
                   progress=True, resume=resume)
    # The run folder is locked before the statistics are computed, so a second search on it fails at once.
    with run_folder_lock(run_dir), _worker_crashes(backend):
        with EvaluationPool(backend, n_jobs=workers, scheduler=scheduler, device=config.device,
                            max_shard_bytes=int(shard_memory * 2**20) if shard_memory else None) as pool:
            if study:
                from search.study import run_study

                outcome = run_study(bench_obj, config, cfg, run_dir, seed_list, batch_list, search_benchmark, command,
                                    pool=pool, **options)
                click.echo((run_dir / "study.md").read_text(encoding="utf-8"))
                click.echo(f"done in {time.perf_counter() - start:.0f} s; study folder {run_dir}: {outcome['verdict']}")
                return
            result = search_benchmark(bench_obj, config, cfg, run_dir, pool=pool, command=command, **options)
    seconds = time.perf_counter() - start
    if not result.hall_of_fame:
        raise click.ClickException(f"no valid program survived screening; see {run_dir / 'log.jsonl'}")
    click.echo((run_dir / "summary.md").read_text(encoding="utf-8") if (run_dir / "summary.md").exists() else "")
    best = result.hall_of_fame[0]
    click.echo(f"best proxy: {best['formula']}")
    click.echo(f"done in {seconds:.0f} s; run folder {run_dir} (export: emq export {run_dir} --top 1 -o proxy.json)")


def _checked_workers(backend: str, workers: int | None, force: bool) -> int | None:
    """Return --workers after checking it against the usable cores; print what local workers will cost.

    Each local worker process imports torch and holds its shard of the search
    statistics, so more workers than cores only add torch's memory and contention.
    """
    from search.pool import usable_cores

    if backend not in ("loky", "threading"):
        return workers
    cores = usable_cores()
    if workers is not None and workers > cores and not force:
        raise click.BadParameter(f"{workers} workers for {cores} usable core(s): more workers than cores only add "
                                 f"memory; use at most {cores}, or add --force-workers", param_hint="--workers")
    n = workers or cores
    if backend == "loky":
        click.echo(f"pool: {n} worker process(es); each needs about {WORKER_BASE_MB} MB for torch plus its shard "
                   f"(1/{n}) of the search statistics (ViT statistics: tens to hundreds of MB per network; see "
                   "--max-search and --shard-memory)", err=True)
    return workers


#: Resident memory of a worker after importing torch and the project (about 230 MB measured with the CPU wheel,
#: rounded up for its working buffers).
WORKER_BASE_MB = 300


@contextlib.contextmanager
def _worker_crashes(backend: str) -> Iterator[None]:
    """Report a pool worker that died (killed, out of memory) as one line instead of exiting silently."""
    try:
        yield
    except Exception as err:
        name = type(err).__name__
        if name in ("TerminatedWorkerError", "BrokenProcessPool") or (name == "KilledWorker" and backend == "dask"):
            raise UserError(f"a {backend} pool worker died during the search ({name}: often out of memory); rerun "
                            "with fewer --workers or --backend serial, adding --resume to continue the run") from None
        raise


def _parse_targets(targets: str | None, columns: list[str], name: str) -> list[str] | None:
    if not targets:
        return None
    chosen = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in columns]
    if unknown:
        raise click.UsageError(f"--targets: unknown column(s) {', '.join(unknown)} for {name}; available: {', '.join(columns)}")
    return chosen


def _command_line() -> str:
    """Return this invocation as a shell line a reader can paste (recorded beside every result)."""
    import shlex

    return "emq " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# -------------------------------------------------------------------------- export
@main.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
@_friendly_errors
def run_job_command(job_file: Path, as_json: bool) -> None:
    """Run the batch job JOB_FILE (TOML): benchmark, statistics, search seeds, backend, outputs.

    Runs without a terminal (progress bars only on one) and logs JSON lines to
    OUT/job.jsonl. Exit codes: 0 done, 2 user error, 3 interrupted but resumable
    (SIGTERM checkpoints the current generation; run the same job again to resume).

    \b
    Examples:
      emq run examples/job-gpu-worker.toml
      emq run examples/job-dask-cluster.toml --json
    """
    from search.job import Job, run_job

    outcome = run_job(Job.load(job_file))
    click.echo(json.dumps(outcome.to_json()) if as_json else f"{outcome.status} (folder {outcome.out_dir})")
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@data_dir_option
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, help="Paired bootstrap resamples.")
@_stats_options
@click.option("--json", "as_json", is_flag=True, help="Print the verdict record as JSON.")
@_friendly_errors
def verdict(run_dir: Path, data_dir: Path | None, n_boot: int, batch_seed: int, batch_size: int, init_seed: int,
            dtype: str, hessian_samples: int, device: str | None, as_json: bool) -> None:
    """Judge a finished search run under the honest bar and append the verdict to its summary.md.

    The best program (rank 1) is scored on the run's held-out split and compared with
    the best trivial predictor (#params, FLOPs, bit counts, quantized loss, each arch
    hyperparameter), chosen on the run's search split, by a paired bootstrap. Give the
    run's statistics settings (--batch-seed, --batch-size, ...); --stats may name only
    what the program reads, to save time on large networks. Writes RUN_DIR/verdict.json.

    \b
    Examples:
      emq verdict results/search-mq-digits
      emq verdict results/search-vit-autoformer --batch-size 8 --stats grad,params
    """
    from emq.paths import data_dir as resolve
    from search.hall_of_fame import load_hall_of_fame
    from search.rescore import rescore_run
    from search.benchmark import verdict_line

    name = load_hall_of_fame(run_dir).get("benchmark")
    if not name:
        raise click.UsageError(f"{run_dir}/hall_of_fame.json does not name its benchmark; it predates held-out scoring")
    bench_obj = _ensure_built(name, resolve(data_dir))
    config = _stats_config(batch_seed, batch_size, init_seed, dtype, hessian_samples, device)
    record = rescore_run(bench_obj, run_dir, config, n_boot=n_boot)
    click.echo(json.dumps(record, indent=2) if as_json else verdict_line(record["verdict"]))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1), help="How many of the hall of fame's best programs to export.")
@click.option("-o", "--out", "out_file", default="proxy.json", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file; with --top > 1, files NAME-1.json, NAME-2.json, ... are written.")
@_friendly_errors
def export(run_dir: Path, top: int, out_file: Path) -> None:
    """Write the best program(s) of search RUN_DIR as reusable proxy JSON files (emq-proxy/1).

    \b
    Reuse them with:  emq score OTHER_BENCH --proxy proxy.json
                      emq search OTHER_BENCH --seed-proxies proxy.json
                      emq apply mq mq-digits --proxy proxy.json --budget 0.06
    """
    from search.hall_of_fame import export_run

    for path in export_run(run_dir, top=top, out=out_file):
        click.echo(f"wrote {path}")


# --------------------------------------------------------------------------- apply
@main.group("apply")
def apply_group() -> None:
    """Reuse an exported proxy: bit allocation under a size budget, ViT search under a parameter budget."""


def _load_proxies(proxy_files: tuple[Path, ...], formulas: tuple[str, ...]) -> dict[str, Any]:
    """Return the proxies named on the command line, by file stem (or formula1, formula2 ...)."""
    from emq.proxy import Proxy

    proxies: dict[str, Any] = {}
    for path in proxy_files:
        if path.is_dir():  # a search run folder: its best program
            from search.hall_of_fame import export_proxies

            best = export_proxies(path, 1)
            if not best:
                raise click.ClickException(f"{path}: the hall of fame is empty (no program passed screening)")
            proxies[path.name] = best[0]
        else:
            proxies[path.stem] = Proxy.load(path)
    for i, text in enumerate(formulas):
        name, sep, formula = text.partition("=")
        if not sep:
            name, formula = (f"formula{i + 1}" if len(formulas) > 1 else "formula"), text
        proxies[name.strip()] = Proxy.from_formula(formula)
    if not proxies:
        raise click.UsageError("give the proxy to apply: --proxy FILE (emq-proxy/1 JSON) or --formula TEXT")
    return proxies


def _numbers(text: str, cast: Callable[[str], Any], option: str) -> list[Any]:
    """Parse a comma-separated list of numbers given to `option`."""
    try:
        values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.UsageError(f"{option}: expected a number or comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise click.UsageError(f"{option}: expected a number or comma-separated finite numbers, got {text!r}")
    return values


def _check_out(out_file: Path | None, inputs: tuple[Path, ...]) -> None:
    """Fail before any work if `--out` cannot be written safely or would overwrite one of the inputs."""
    if out_file is None:
        return
    from emq.atomic import check_not_inputs, check_output_path

    check_output_path(out_file)
    check_not_inputs([out_file], [p for p in inputs if not p.is_dir()]
                     + [q for p in inputs if p.is_dir() for q in p.rglob("*") if q.is_file()])


def _write_report(out_file: Path, markdown: str | None, data: Any) -> None:
    from emq.atomic import write_json_atomic, write_text_atomic

    if out_file.suffix == ".json":
        write_json_atomic(out_file, data)
    elif markdown is None:
        raise click.UsageError("--out: without --compare / --train the output is JSON; give a .json file")
    else:
        write_text_atomic(out_file, markdown)
    click.echo(f"wrote {out_file}", err=True)


_proxy_options = [
    click.option("--proxy", "proxy_files", multiple=True, type=click.Path(path_type=Path),
                 help="Proxy JSON file (emq-proxy/1, e.g. from `emq export`), or a search run folder (its best "
                      "program); repeatable."),
    click.option("--formula", "formulas", multiple=True,
                 help="Proxy formula instead of a file, optionally named: NAME=FORMULA; repeatable."),
]


def _with(options: list[Callable[..., Any]]) -> Callable[..., Any]:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorator


@apply_group.command("mq")
@click.argument("name")
@data_dir_option
@_with(_proxy_options)
@click.option("--budget", "budget_text", required=True,
              help="Size budget, or several comma-separated: megabytes of weights (sum bits x weights / 8e6) or, "
                   "with --budget-unit avg-bits, average bits per weight. Never exceeded.")
@click.option("--budget-unit", type=click.Choice(["mb", "avg-bits"]), default="mb", show_default=True,
              help="Unit of --budget.")
@click.option("--method", type=click.Choice(["auto", "milp", "ga"]), default="auto", show_default=True,
              help="milp: exact integer programming (proxies that are sums of per-layer terms); ga: genetic "
                   "algorithm (any proxy); auto: milp when possible.")
@click.option("--compare", is_flag=True,
              help="Also allocate with hawq, bparams, hawq_v2, qloss-greedy, uniform and random configurations and "
                   "measure every configuration's real PTQ test accuracy (mq-digits); the report ends with a "
                   "reading that names every method beating each proxy.")
@click.option("--random", "random_configs", default=10, show_default=True, type=click.IntRange(min=0),
              help="Random feasible configurations measured by --compare.")
@click.option("--baseline", "baseline_names", multiple=True,
              help="Baseline allocated as an objective by --compare (repeatable; default: hawq and bparams).")
@click.option("--allocator", "allocator_names", multiple=True,
              type=click.Choice(["hawq_v2", "qloss-greedy", "none"]),
              help="Allocator compared by --compare besides the objectives (repeatable; default: both). hawq_v2: "
                   "HAWQ-v2 as published, solved exactly; qloss-greedy: greedy lowering by the quantized "
                   "network's calibration cross-entropy; none: neither.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the GA and of the random configurations.")
@click.option("--population", default=30, show_default=True, type=click.IntRange(min=2), help="GA population.")
@click.option("--generations", default=20, show_default=True, type=click.IntRange(min=1), help="GA generations.")
@click.option("--exact-stats", is_flag=True,
              help="GA only: measure every scored configuration's own quantized network (one statistics pass each) "
                   "instead of the per-layer separable model.")
@_stats_options
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result: .json, or with --compare a .md report headed by this command.")
@_friendly_errors
def apply_mq(name: str, data_dir: Path | None, proxy_files: tuple[Path, ...], formulas: tuple[str, ...],
             budget_text: str, budget_unit: str, method: str, compare: bool, random_configs: int,
             baseline_names: tuple[str, ...], allocator_names: tuple[str, ...], seed: int,
             population: int, generations: int, exact_stats: bool, batch_seed: int, batch_size: int, init_seed: int,
             dtype: str, hessian_samples: int, device: str | None, as_json: bool, out_file: Path | None) -> None:
    """Find the per-layer weight bit-widths of MQ benchmark NAME's network that maximise a proxy within a size budget.

    The proxy is computed on the benchmark's fixed batch; a proxy that is a sum of per-layer
    terms (sum_layers / mean_layers, n_neg ...) is solved exactly by integer programming,
    any other by a seeded genetic algorithm. See emq/apply/bits.py for the statistics model.

    \b
    Examples:
      emq apply mq mq-digits --proxy proxy.json --budget 0.06
      emq apply mq mq-digits --formula "n_neg(sum_layers(l2(mul(hessian_diag, quant_error))))" \\
          --budget 3,4,5 --budget-unit avg-bits --compare --out results/apply-mq.md
      emq apply mq mq-digits --proxy proxy.json --budget 4 --budget-unit avg-bits --method ga --json
    """
    from tqdm.auto import tqdm

    from emq.apply.bits import Budget, allocate
    from emq.apply.mq import COMPARE_ALLOCATORS, COMPARE_BASELINES, benchmark_objective, compare_mq, precheck
    from emq.paths import data_dir as resolve

    _check_out(out_file, proxy_files)
    proxies = _load_proxies(proxy_files, formulas)
    budgets = [Budget(v, budget_unit) for v in _numbers(budget_text, float, "--budget")]
    bench_obj = _ensure_built(name, resolve(data_dir))
    if bench_obj.family != "mq":
        raise click.UsageError(f"{name} is a {bench_obj.family} benchmark; bit allocation needs an MQ benchmark "
                               "(for ViTs: emq apply vit)")
    precheck(bench_obj, proxies, budgets, method, exact_stats)
    config = _stats_config(batch_seed, batch_size, init_seed, dtype, hessian_samples, device)
    stats_kwargs = dict(batch_seed=batch_seed, batch_size=batch_size, hessian_samples=hessian_samples,
                        device=config.resolved_device(), store_dtype=config.torch_dtype())
    if compare:
        if exact_stats:
            raise click.UsageError("--compare uses the separable statistics model; drop --exact-stats")
        if name != "mq-digits":
            raise click.UsageError(f"--compare measures real PTQ accuracy, which needs the network and test split "
                                   f"of mq-digits; {name} has neither here")
        from emq.baselines import get_baseline

        not_programs = [b for b in baseline_names if get_baseline(b).kind != "program"]
        if not_programs:
            raise click.UsageError(f"--baseline {', '.join(not_programs)}: only program baselines (formulas over "
                                   "statistics) can be allocation objectives")
        if "none" in allocator_names and len(set(allocator_names)) > 1:
            raise click.UsageError("--allocator none excludes the other allocators")
        allocators = [a for a in allocator_names if a != "none"] if allocator_names else list(COMPARE_ALLOCATORS)
        result = compare_mq(bench_obj, proxies, budgets, method=method, seed=seed, random_configs=random_configs,
                            baselines=baseline_names or COMPARE_BASELINES, allocators=allocators,
                            population=population, generations=generations,
                            progress=lambda msg: click.echo(msg, err=True), **stats_kwargs)
        command = _command_line()
        click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.to_markdown())
        if out_file:
            _write_report(out_file, result.to_markdown(command), result.to_json())
        return
    results = []
    for pname, proxy in proxies.items():
        with tqdm(desc=f"statistics {pname}", unit="pass", leave=False) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            objective = benchmark_objective(bench_obj, proxy, exact=exact_stats, progress=progress, **stats_kwargs)
        for budget in budgets:
            alloc = allocate(objective, budget, method=method, seed=seed, population=population,
                             generations=generations)
            results.append({"name": pname, **alloc.to_json()})
            if not as_json:
                click.echo(f"{pname} ({alloc.proxy}), budget {alloc.budget}:")
                click.echo(f"  {alloc.method}{' (optimal)' if alloc.optimal else ''}: {alloc.average_bits:.3f} average "
                           f"bits, {alloc.size_mb:.6f} MB (cap {alloc.cap_bits} bit-weights), proxy score "
                           f"{alloc.score:.6g}, {alloc.evaluations} proxy evaluations, {alloc.seconds:.2f} s")
                for note in alloc.notes:
                    click.echo(f"  note: {note}")
                click.echo("  bits: " + " ".join(f"{k}={v}" for k, v in alloc.bits.items()))
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if out_file:
        _write_report(out_file, None, results)


@apply_group.command("vit")
@click.argument("space", type=click.Choice(["autoformer", "pit", "vit-digits"]))
@_with(_proxy_options)
@click.option("--max-params", "max_params_text", required=True,
              help="Parameter budget (trainable parameters), or several comma-separated. Never exceeded.")
@click.option("--train", is_flag=True,
              help="vit-digits only: train the found arch with the benchmark's recipe and compare it with the "
                   "benchmark's archs under the same budget (best, median, most parameters, proxy's top-1).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the evolutionary search.")
@click.option("--population", default=16, show_default=True, type=click.IntRange(min=2), help="Archs per generation.")
@click.option("--generations", default=6, show_default=True, type=click.IntRange(min=1), help="Generations.")
@_stats_options
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the result: .json, or with --train a .md report headed by this command.")
@_friendly_errors
def apply_vit(space: str, proxy_files: tuple[Path, ...], formulas: tuple[str, ...], max_params_text: str, train: bool,
              seed: int, population: int, generations: int, batch_seed: int, batch_size: int, init_seed: int,
              dtype: str, hessian_samples: int, device: str | None, as_json: bool, out_file: Path | None) -> None:
    """Search ViT space SPACE for the arch with the highest proxy score within a parameter budget.

    Candidates are randomly initialised (--init-seed) and scored on the space's fixed batch,
    as the benchmarks score theirs. The arch is printed in the ground-truth files' format.
    Spaces: autoformer and pit (ViT-Bench-101, 224x224 inputs: seconds per arch on a CPU),
    vit-digits (the embedded tiny-ViT space: well under a second per arch).

    \b
    Examples:
      emq apply vit vit-digits --proxy proxy.json --max-params 60000
      emq apply vit vit-digits --formula "sum_layers(l2(mul(weight, grad)))" \\
          --max-params 30000,60000,100000 --train --out results/apply-vit.md
      emq apply vit autoformer --proxy proxy.json --max-params 6000000 --population 8 --generations 3
    """
    from tqdm.auto import tqdm

    from emq.apply.arch import ArchObjective, get_space, search_arch

    _check_out(out_file, proxy_files)
    proxies = _load_proxies(proxy_files, formulas)
    budgets = _numbers(max_params_text, int, "--max-params")
    if any(b < 1 for b in budgets):
        raise click.UsageError(f"--max-params must be positive, got {max_params_text!r}")
    config = _stats_config(batch_seed, batch_size, init_seed, dtype, hessian_samples, device)
    kwargs = dict(init_seed=init_seed, batch_seed=batch_seed, batch_size=batch_size, hessian_samples=hessian_samples,
                  device=config.resolved_device(), store_dtype=config.torch_dtype())
    if train:
        if space != "vit-digits":
            raise click.UsageError(f"--train needs a training recipe and test split, which only vit-digits has "
                                   f"(not {space})")
        from emq.apply.vit import compare_vit_digits

        bench_obj = _ensure_built("vit-digits", None)
        result = compare_vit_digits(bench_obj, proxies, budgets, seed=seed, population=population,
                                    generations=generations, progress=lambda msg: click.echo(msg, err=True), **kwargs)
        command = _command_line()
        click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.to_markdown())
        if out_file:
            _write_report(out_file, result.to_markdown(command), result.to_json())
        return
    arch_space = get_space(space)
    results = []
    for pname, proxy in proxies.items():
        objective = ArchObjective(proxy, arch_space, **kwargs)
        for budget in budgets:
            with tqdm(total=generations, desc=f"search {pname} <= {budget}", unit="gen", leave=False) as bar:
                found = search_arch(objective, budget, population=population, generations=generations, seed=seed,
                                    progress=lambda gen, best: bar.update(1) if gen else None)
            results.append({"name": pname, **found.to_json()})
            if not as_json:
                click.echo(f"{pname} ({found.proxy}), at most {budget} parameters: {found.params} parameters, "
                           f"proxy score {found.score:.6g} ({found.evaluations} archs scored, {found.seconds:.1f} s)")
                click.echo(f"  arch: {json.dumps(found.arch)}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if out_file:
        _write_report(out_file, None, results)


if __name__ == "__main__":
    sys.exit(main())
