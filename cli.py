"""`emq` command line: each command parses its options, calls one library function and prints a short summary.

Every command that reports something takes `--json`; option choices are read from the library's registries;
the work, and every check that needs more than an option's own value, is the library's.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import click


class UserError(click.ClickException):
    """A user or environment error as the CLI reports it: one line on stderr, exit code 2 (like a bad option)."""

    exit_code = 2


class _Group(click.Group):
    """Commands whose user errors (`EMQUserError`, bad paths) are one line, exit code 2; a bug keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from emq.errors import EMQUserError, one_line

        try:
            return super().invoke(ctx)
        except (EMQUserError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
                FileExistsError) as err:
            where = isinstance(err, OSError) and err.filename is not None and not isinstance(err, FileNotFoundError)
            raise UserError(one_line(f"{err.filename}: {err.strerror or err}; check the path and its permissions"
                                     if where else str(err))) from None


class _Names(click.Choice):
    """The names of library registry `module:NAME` (plus `extra`), read when first needed: `emq` starts fast."""

    def __init__(self, where: str, *extra: str) -> None:
        self.where, self.extra = where, extra
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        module, name = self.where.split(":")
        return (*getattr(importlib.import_module(module), name), *self.extra)

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


class _Listed(click.ParamType):
    """Comma-separated values, e.g. `--budget 3,4,5`: at least one; numbers finite and at least `low`."""

    name = "list"

    def __init__(self, cast: Callable[[str], Any] = str, low: float = -math.inf) -> None:
        self.cast, self.low = cast, low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple):
            return value
        try:
            values = tuple(self.cast(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or self.cast is not str and not all(math.isfinite(v) and v >= self.low for v in values):
            bound = f" >= {self.low}" if self.low > -math.inf else ""
            what = "names" if self.cast is str else f"finite numbers{bound}"
            self.fail(f"expected one or more comma-separated {what}, got {value!r}", param, ctx)
        return values


class _BatchSourceOption(click.Option):
    """--batch-source, whose help lists each benchmark's sources from the registry when shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from emq.bench.registry import list_benchmarks

        offered = [f"{e.name} ({'|'.join(dict(e.options)['batch_source'])})" for e in list_benchmarks()
                   if "batch_source" in dict(e.options)]
        self.help = ("Input batch of benchmarks whose datasets are not offline (recorded with every score): "
                     + "; ".join(offered) + ". Default: the benchmark's own.")
        return super().get_help_record(ctx)


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Fail on a --device torch does not know, or one this machine does not have (CUDA without a GPU)."""
    from emq.errors import DeviceError
    from emq.stats.cache import check_device

    try:
        return None if value is None else check_device(value)
    except DeviceError as err:
        raise click.BadParameter(str(err)) from None


def _with(options: Iterable[Callable[..., Any]]) -> Callable[..., Any]:
    """Return one decorator applying a group of options in order."""
    return lambda fn: functools.reduce(lambda f, option: option(f), reversed(list(options)), fn)


def _setting(name: str, show_default: bool = True, **overrides: Any) -> Callable[..., Any]:
    """Return the click option of search setting `name`: flag, default, bounds and help from `search.settings`.

    The same entry checks job files, so an option and its job-file field accept the same values.
    """
    from search.settings import SETTINGS

    s = SETTINGS[name]
    if s.kind == "bool":
        return click.option(s.cli, name, is_flag=True, default=s.default, help=s.help, **overrides)
    if s.kind == "int":
        kind: Any = click.IntRange(s.low, s.high)
    elif s.kind == "float":
        kind = click.FloatRange(s.low, s.high)
    elif s.kind == "ints":
        kind = _Listed(int, s.low if s.low is not None else -math.inf)
    elif s.kind == "names":
        kind = _Listed()
    elif s.choices is not None:
        kind = _Names(s.choices) if isinstance(s.choices, str) else click.Choice(list(s.choices))
    else:
        kind = str
    default = None if s.kind in ("ints", "names") else s.default
    attrs = dict(type=kind, default=default, show_default=show_default and default is not None, help=s.help)
    return click.option(s.cli, name, **{**attrs, **overrides})


def _stats_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the statistics options; the command receives them as one `StatsConfig`, `config`, and `batch_source`."""

    @functools.wraps(fn)
    def command(*args: Any, stat_names: tuple[str, ...] | None, batch_seed: int, batch_size: int, init_seed: int,
                store_dtype: str, hessian_samples: int, device: str | None, **kwargs: Any) -> Any:
        from emq.stats.config import StatsConfig

        config = StatsConfig(batch_seed=batch_seed, batch_size=batch_size, init_seed=init_seed, stat_names=stat_names,
                             hessian_samples=hessian_samples, store_dtype=store_dtype, device=device)
        return fn(*args, config=dataclasses.replace(config, device=config.resolved_device()), **kwargs)

    return _with([
        _setting("stat_names", help="Comma-separated statistics to compute and cache, e.g. weight,grad,virtual_grad "
                 "(default: every applicable one; on 224x224 ViTs name a few: see `emq stats --list` and README 'ViT "
                 "statistics and memory'). Baselines add what they need."),
        click.option("--batch-seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
                     help="Seed of the fixed input batch (recorded with every score)."),
        _setting("batch_size"),
        _setting("init_seed"),
        _setting("store_dtype"),
        _setting("hessian_samples"),
        _setting("device", callback=_device),
        click.option("--batch-source", cls=_BatchSourceOption),
    ])(command)


_data_dir = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Folder of public ground-truth files (default: $EMQ_DATA_DIR, else ../shared/benchmarks "
                              "beside the repo).")
_bootstrap = click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(10, 1_000_000),
                          help="Bootstrap resamples for the 95% intervals (paired ones for the verdict).")
_json = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
_proxy_options = _with([
    click.option("--proxy", "proxy_files", multiple=True, type=click.Path(path_type=Path),
                 help="Proxy JSON file (emq-proxy/1, e.g. from `emq export`), a search run folder (its best "
                      "program), known:NAME[,NAME...] from the known-proxy library (emq proxies list), or known "
                      "(all of it the benchmark can compute); repeatable."),
    click.option("--formula", "formulas", multiple=True,
                 help="Proxy formula, e.g. 'sum_layers(l2(grad))', optionally named: NAME=FORMULA; repeatable."),
])


def _ga_options(population: int, generations: int, seed_help: str = "") -> Callable[..., Any]:
    return _with([
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
                     help=f"Seed of the genetic search{seed_help}."),
        _setting("population", default=population, help="Genetic search population."),
        _setting("generations", default=generations, help="Genetic search generations."),
    ])


def _out(what: str) -> Callable[..., Any]:
    return click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
                        help=f"Also write the result, atomically: .json, or {what} .md report headed by this command.")


def _note(line: str) -> None:
    click.echo(line, err=True)


def _echo(data: Any, text: str, as_json: bool, indent: int | None = 2) -> None:
    """Print `data` as JSON with --json, else `text`: the one place the CLI writes machine-readable output."""
    click.echo(json.dumps(data, indent=indent) if as_json else text)


def _report(result: Any, as_json: bool, out_file: Path | None = None) -> None:
    """Print a library result (`to_json`, `to_text`) and write it to --out: .json, or its `to_markdown` report."""
    _echo(result.to_json(), result.to_text(), as_json)
    if out_file is None:
        return
    from emq.atomic import write_json_atomic, write_text_atomic

    if out_file.suffix == ".json":
        write_json_atomic(out_file, result.to_json())
    elif not hasattr(result, "to_markdown"):
        raise click.UsageError("--out: without --compare / --train the output is JSON; give a .json file")
    else:
        write_text_atomic(out_file, result.to_markdown(_command_line()))
    click.echo(f"wrote {out_file}", err=True)
    if getattr(result, "table", None) is not None:  # per-candidate scores, so the table can be re-checked
        table = result.table
        table.meta["command"] = _command_line()
        from emq.score_table import scores_path

        click.echo(f"wrote {table.write(scores_path(out_file))}", err=True)


def _command_line() -> str:
    """Return this invocation as a shell line a reader can paste (recorded beside every result)."""
    return "emq " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _open(name: str, data_dir: Path | None, batch_source: str | None = None) -> Any:
    """Return benchmark `name`, building it first when it is embedded and not built yet."""
    from emq.bench.registry import open_benchmark

    return open_benchmark(name, data_dir, notify=_note, batch_source=batch_source)


def _proxies(files: tuple[Path, ...], formulas: tuple[str, ...], out_file: Path | None, required: bool = True) -> Any:
    """Return the proxies of --proxy / --formula, parsed (and --out checked) before any heavy work."""
    from search.proxy_sources import check_report_path, load_proxies

    if required and not files and not formulas:
        raise click.UsageError("give the proxy to apply: --proxy FILE (emq-proxy/1 JSON) or --formula TEXT")
    check_report_path(out_file, files)
    return load_proxies(files, formulas)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


@main.command()
@_json
def ops(as_json: bool) -> None:
    """List the primitive ops proxy programs are built from, with type signatures.

    Types: T = per-layer tensor, S = per-layer scalar, N = one number per network.
    A program maps statistics (T) through ops to N, e.g. mean_layers(l2(mul(weight, grad))).
    """
    from primitives import list_ops

    found = list_ops()
    lines = [("" if i and op.group == found[i - 1].group else f"\n{op.group}:\n")
             + f"  {op.name:<20} {op.signature():<10} {op.doc}" for i, op in enumerate(found)]
    _echo([{"name": o.name, "signature": o.signature(), "group": o.group, "doc": o.doc} for o in found],
          "\n".join(lines) + f"\n\n{len(found)} ops. Statistics (leaves of type T): see `emq stats --list`.", as_json)


@main.group(cls=_Group)
def proxies() -> None:
    """The known-proxy library: the field's hand-designed proxies as programs (known:NAME)."""


@proxies.command("list")
@_json
def proxies_list(as_json: bool) -> None:
    """List the known proxies: name, formula, statistics to compute, reference baseline and paper.

    \b
    Use one with --proxy known:NAME (emq score) or --seed-proxies known:NAME,... (emq search);
    `known` names all of them.
    """
    from emq.known import known_proxies

    found = list(known_proxies().values())
    lines = [f"{e.name:<16} {e.title} ({e.paper})\n{'':<16} {e.formula}\n{'':<16} stats: {','.join(e.stats)}; "
             f"reference baseline: {e.reference}; {e.fidelity}" for e in found]
    _echo([e.to_json() for e in found], "\n".join(lines) + f"\n\n{len(found)} known proxies.", as_json)


@main.group(cls=_Group)
def bench() -> None:
    """List, build and inspect benchmarks (candidates + ground-truth accuracy)."""


@bench.command("list")
@_json
def bench_list(as_json: bool) -> None:
    """List registered benchmarks: embedded ones are built here, public ones read from --data-dir."""
    from emq.bench.registry import list_benchmarks

    found = list_benchmarks()
    where = {True: "embedded (emq bench build)", False: "public file (--data-dir)"}
    _echo([{"name": e.name, "family": e.family, "embedded": e.embedded, "doc": e.doc, "options": dict(e.options)}
           for e in found],
          "\n".join(f"{e.name:<28} {e.family:<4} {where[e.embedded]:<28} {e.doc}" for e in found), as_json)


@bench.command("build")
@click.argument("name")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of training, splits and sampled configurations.")
@click.option("--num-configs", type=click.IntRange(min=1), help="Candidates to measure (default: the benchmark's own).")
@click.option("--overwrite", is_flag=True, help="Replace an existing build (e.g. the committed results/NAME).")
@_json
def bench_build(name: str, seed: int, num_configs: int | None, overwrite: bool, as_json: bool) -> None:
    """Build embedded benchmark NAME offline (train, then measure every candidate); deterministic given --seed.

    An existing build (such as the committed one under results/) is replaced only with --overwrite.
    """
    from emq.bench.registry import get_builder

    start = time.perf_counter()
    out = get_builder(name)(seed=seed, overwrite=overwrite, **({"num_configs": num_configs} if num_configs else {}))
    seconds = time.perf_counter() - start
    _echo({"benchmark": name, "out": str(out), "seconds": round(seconds, 3)},
          f"built {name} in {seconds:.0f} s -> {out}", as_json)


@bench.command("show")
@click.argument("name")
@_data_dir
@click.option("--limit", default=5, show_default=True, type=click.IntRange(min=1), help="Candidates to print.")
@_json
def bench_show(name: str, data_dir: Path | None, limit: int, as_json: bool) -> None:
    """Summarise benchmark NAME: candidates, ground-truth columns and their spread."""
    from emq.bench.registry import open_benchmark
    from emq.bench.summary import benchmark_summary, summary_text

    summary = benchmark_summary(open_benchmark(name, data_dir, build=False), limit=limit)
    _echo(summary, summary_text(summary), as_json)


@main.command()
@click.argument("name", required=False)
@_data_dir
@_stats_options
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N candidates.")
@click.option("--list", "list_stats", is_flag=True, help="List the statistics catalogue and exit.")
@_json
def stats(name: str | None, data_dir: Path | None, config: Any, batch_source: str | None, limit: int | None,
          list_stats: bool, as_json: bool) -> None:
    """Precompute the statistics cache of benchmark NAME (a second run computes nothing), or list the catalogue."""
    from emq.stats import STATS
    from emq.stats.cache import load_or_compute

    if list_stats or not name:
        return _echo([dataclasses.asdict(i) for i in STATS.values()], "\n".join(
            f"{i.name:<16} {'(MQ only) ' if i.needs_bits else ''}{i.doc}{f' [{i.memory}]' if i.memory else ''}"
            for i in STATS.values()), as_json)
    bench_obj = _open(name, data_dir, batch_source)
    start = time.perf_counter()
    n = len(load_or_compute(bench_obj, bench_obj.candidates()[:limit], config, progress=True))
    seconds = time.perf_counter() - start
    _echo({"benchmark": name, "candidates": n, "seconds": round(seconds, 3), "stats": config.describe()},
          f"statistics of {n} candidates ready in {seconds:.1f} s", as_json)


@main.command()
@click.argument("name")
@_data_dir
@_proxy_options
@click.option("--baselines", "all_baselines", is_flag=True,
              help="Also score every baseline that applies to this benchmark, the trivial predictors included "
                   "(#params, FLOPs, bit counts, quantized loss, one `arch:<hyperparameter>` per numeric arch "
                   "setting).")
@click.option("--baseline", "baselines", multiple=True,
              help="Score this baseline (repeatable); --baselines scores every one that applies.")
@click.option("--split", type=_Names("emq.scoring:SPLITS"), default="all", show_default=True,
              help="Candidates to score: all, or the search / held-out half of the fixed split.")
@click.option("--targets", type=_Listed(), help="Comma-separated ground-truth columns (default: all).")
@_bootstrap
@click.option("--limit", type=click.IntRange(min=3),
              help="Only the first N candidates of the split (a quick look; a rank correlation needs at least 3).")
@_stats_options
@_json
@_out("a")
def score(name: str, data_dir: Path | None, proxy_files: tuple[Path, ...], formulas: tuple[str, ...],
          all_baselines: bool, baselines: tuple[str, ...], config: Any, batch_source: str | None, as_json: bool,
          out_file: Path | None, **options: Any) -> None:
    """Rank-correlate proxies and baselines with benchmark NAME's ground truth.

    Kendall tau and Spearman rho with bootstrap 95% intervals per ground-truth column, each
    model baseline's cost per candidate, and flags for degenerate scorers: nonfinite,
    constant, input_independent, trivial_equivalent(NAME) (ranks like a trivial predictor).
    Example: emq score mq-digits --baselines --split heldout
    """
    from emq.known import is_known_spec
    from emq.scoring import benchmark_offered_stats, score_benchmark
    from search.proxy_sources import load_proxies

    if not (proxy_files or formulas or baselines or all_baselines):
        raise click.UsageError("nothing to score: give --proxy FILE, --formula TEXT, --baseline NAME or --baselines")
    proxies = _proxies(proxy_files, formulas, out_file, required=False)
    bench_obj = _open(name, data_dir, batch_source)
    if any(is_known_spec(p) for p in proxy_files):  # `known`: the library proxies this benchmark can compute
        proxies = load_proxies(proxy_files, formulas, benchmark_offered_stats(bench_obj))
    _report(score_benchmark(bench_obj, proxies, list(baselines), config, all_baselines=all_baselines, **options),
            as_json, out_file)


@main.command()
@click.argument("name")
@_data_dir
@_setting("targets", help="Comma-separated ground-truth columns the proxy must rank (default: all).")
@_setting("joint")
@_setting("metric")
@_setting("population")
@_setting("generations")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="Seed of the search (same seed + config = same hall of fame).")
@_setting("seeds", help="Comma-separated search seeds for a study, e.g. 0,1,2: one run per seed x batch seed in "
          "--out, then study.md with the discovery verdict over all runs (overrides --seed).")
@_setting("batch_seeds", help="Comma-separated batch seeds for a study, e.g. 0,1 (overrides --batch-seed).")
@_setting("fitness")
@_setting("reject_input_independent")
@_setting("hof_size")
@_setting("max_search", help="Use at most N networks of the search split (bounds memory and time; 0 = all).")
@_setting("max_heldout")
@_setting("seed_proxies", multiple=True, type=click.Path(dir_okay=False, path_type=Path), default=(),
          help="Proxy JSON file(s) (e.g. exported from another search) placed in the first population; repeatable.")
@_setting("backend", help="Evaluation pool: the search candidates are sharded over its workers (one shard each); "
          "dask needs --scheduler or starts a LocalCluster.")
@_setting("scheduler")
@_setting("workers", help="Pool workers (default: usable CPU cores; more needs --force-workers).")
@click.option("--force-workers", is_flag=True, help="Allow more --workers than usable cores.")
@_setting("shard_memory_mb", help="MB of statistics a worker may keep resident; a larger shard is streamed from the "
          "cache files on every generation instead (slower; for caches larger than memory). Default: keep it.")
@click.option("--baseline", "baselines", multiple=True,
              help="Baselines to compare on held-out (repeatable; default: every cheap program baseline).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (default: runs/NAME-seedSEED).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@_stats_options
@_json
def search(name: str, seed: int, seeds: tuple[int, ...] | None, baselines: tuple[str, ...], config: Any,
           as_json: bool, **options: Any) -> None:
    """Evolve proxy programs that rank benchmark NAME's candidates like its ground truth.

    Programs are screened (op errors, NaN, more than 2% of scores infinite, constant, a
    trivial predictor in disguise, too slow; input-independent ones are flagged, or rejected
    with --reject-input-independent), scored on the search half of the candidates (plain
    Kendall by default; --fitness partial pays only beyond the best trivial predictor), and
    the hall of fame is compared with the baselines on the held-out half. The run folder (checkpointed every generation: --resume) gets log.jsonl,
    hall_of_fame.json, plots and summary.md, ending with the run's verdict. With --seeds /
    --batch-seeds, a study: one run per combination, and study.md with the verdict.

    \b
    Examples:
      emq search mq-digits                                  # defaults: < 10 min on 2 cores
      emq search mq-digits --seeds 0,1,2 --batch-seeds 0,1 --out runs/mq-study   # the discovery verdict
    """
    from search.session import SearchRequest, run_search_request

    outcome = run_search_request(SearchRequest(name, stats=config, seeds=seeds or (seed,), baselines=baselines or None,
                                               command=_command_line(), **options), notify=_note)
    if outcome.best_formula is None and not outcome.study:
        raise click.ClickException(f"no valid program survived screening; see {outcome.run_dir / 'log.jsonl'}")
    _echo(outcome.to_json(), outcome.to_text(), as_json)


@main.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
def run_job_command(job_file: Path, as_json: bool) -> None:
    """Run the batch job JOB_FILE (TOML, see examples/job-*.toml): a search or study, logged to OUT/job.jsonl.

    Exit codes: 0 done, 2 user error, 3 interrupted but resumable (SIGTERM checkpoints the
    current generation; run the same job again to resume).
    """
    from search.job import Job, run_job

    outcome = run_job(Job.load(job_file))
    _echo(outcome.to_json(), f"{outcome.status} (folder {outcome.out_dir})", as_json, indent=None)
    sys.exit(outcome.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_data_dir
@_bootstrap
@_stats_options
@_json
@click.option("--from-scores", is_flag=True,
              help="Recompute the verdict from RUN_DIR/heldout_scores.csv alone (no statistics); write nothing.")
def verdict(run_dir: Path, data_dir: Path | None, n_boot: int, config: Any, batch_source: str | None,
            as_json: bool, from_scores: bool) -> None:
    """Judge a finished search run under the honest bar and append the verdict to its summary.md.

    Its best program against the best trivial predictor (chosen on the search split), on the
    held-out split, by a paired bootstrap. Give the run's statistics settings; --stats may
    name only what the program reads. Writes RUN_DIR/verdict.json.

    With --from-scores, recompute the verdict of a run (or of a study: every run, then the
    median rule) from its committed heldout_scores.csv alone, write nothing, and say whether
    it agrees with the recorded one (exit 1 when it does not).
    """
    from search.benchmark import verdict_line
    from search.rescore import judge_run, study_verdict_from_scores, verdict_from_scores

    if from_scores:
        study = (run_dir / "study.json").is_file()
        record = study_verdict_from_scores(run_dir) if study else verdict_from_scores(run_dir)
        line = (f"Verdict (study, from {len(record['runs'])} score files): **{record['verdict']}**" if study
                else verdict_line(record["verdict"]))
        _echo(record, f"{line}\nagrees with the recorded verdict: {'yes' if record['agrees'] else 'NO'}", as_json)
        if not record["agrees"]:
            sys.exit(1)
        return
    record = judge_run(run_dir, config, data_dir, batch_source, n_boot=n_boot, notify=_note)
    _echo(record, verdict_line(record["verdict"]), as_json)


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--rank", default=1, show_default=True, type=click.IntRange(min=1),
              help="Which program of a run's hall of fame (1 = the best, as chosen by the search).")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Fitted proxy file (default: RUN/fitted-proxy.json or PROXY-fitted.json); a .md report beside it.")
@click.option("--mode", type=click.Choice(["type", "name"]), default="type", show_default=True,
              help="Layer keys: type = layer type + depth bucket (transfers across depths), name = exact layer name.")
@click.option("--buckets", default=3, show_default=True, type=click.IntRange(1, 64), help="Depth buckets (--mode type).")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Adam steps.")
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--temperature", default=0.25, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Smooth-Kendall temperature on standardised scores (smaller: closer to Kendall, rougher).")
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of the search split kept for early stopping (held-out candidates are never seen).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the validation split.")
@_bootstrap
@_data_dir
@click.option("--batch-source", default=None, help="The run's --batch-source, if it used one.")
@click.option("--device", default=None, help="torch device for statistics (default: cuda if present, else cpu).")
@_json
def fit(source: Path, rank: int, out_file: Path | None, mode: str, buckets: int, steps: int, lr: float,
        temperature: float, val_fraction: float, seed: int, n_boot: int, data_dir: Path | None,
        batch_source: str | None, device: str | None, as_json: bool) -> None:
    """Learn per-layer weights of a run's best program (or a proxy file's) with a smooth Kendall loss (ParZC-style).

    Fitted on the run's search split only, with the run's statistics settings; then the
    held-out split compares the fitted program with the unfitted one and with the best
    trivial predictor (paired bootstrap). The weights go into the proxy file, and
    `emq score` / `emq apply` use them.

    \b
    Examples:
      emq fit results/nas-bench-201/study-fp_acc-v2/seed0-batch0
      emq fit proxy.json --mode name --steps 500 -o proxy-fitted.json
    """
    from emq.fit import FitSettings
    from search.fit_run import fit_source, fit_summary

    settings = FitSettings(mode=mode, buckets=buckets, steps=steps, lr=lr, temperature=temperature,
                           val_fraction=val_fraction, seed=seed)
    record = fit_source(source, settings, out_file, _command_line(), rank, data_dir, batch_source, device, n_boot,
                        notify=_note)
    _echo(record, fit_summary(record), as_json)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many of the hall of fame's best programs to export.")
@click.option("-o", "--out", "out_file", default="proxy.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Output file; with --top > 1, files NAME-1.json, NAME-2.json, ... are written.")
@_json
def export(run_dir: Path, top: int, out_file: Path, as_json: bool) -> None:
    """Write the best program(s) of search RUN_DIR as reusable proxy JSON files (emq-proxy/1).

    Reuse them with `emq score`, `emq apply` (--proxy FILE) or `emq search --seed-proxies FILE`.
    """
    from search.hall_of_fame import export_run

    paths = [str(p) for p in export_run(run_dir, top=top, out=out_file)]
    _echo(paths, "\n".join(f"wrote {p}" for p in paths), as_json)


@main.group("apply", cls=_Group)
def apply_group() -> None:
    """Reuse an exported proxy: bit allocation under a size budget, ViT search under a parameter budget."""


@apply_group.command("mq")
@click.argument("name")
@_data_dir
@_proxy_options
@click.option("--budget", "budgets", type=_Listed(float), required=True,
              help="Size budget, or several comma-separated: megabytes of weights (sum bits x weights / 8e6) or, "
                   "with --budget-unit avg-bits, average bits per weight. Never exceeded.")
@click.option("--budget-unit", type=_Names("emq.apply.budget:BUDGET_UNITS"), default="mb", show_default=True,
              help="Unit of --budget.")
@click.option("--method", type=_Names("emq.apply.allocation:METHODS"), default="auto", show_default=True,
              help="milp: exact integer programming (proxies that are sums of per-layer terms); ga: genetic "
                   "algorithm (any proxy); auto: milp when possible.")
@click.option("--compare", is_flag=True,
              help="Also allocate with hawq, bparams, hawq_v2, qloss-greedy, uniform and random configurations and "
                   "measure every configuration's real PTQ test accuracy (benchmarks that can measure it); the "
                   "report ends with a reading that names every method beating each proxy.")
@click.option("--random", "random_configs", default=10, show_default=True, type=click.IntRange(min=0),
              help="Random feasible configurations measured by --compare.")
@click.option("--baseline", "baselines", multiple=True,
              help="Baseline allocated as an objective by --compare (repeatable; default: hawq and bparams).")
@click.option("--allocator", "allocators", multiple=True, type=_Names("emq.apply.mq:COMPARE_ALLOCATORS", "none"),
              help="Allocator compared by --compare besides the objectives (repeatable; default: both). hawq_v2: "
                   "HAWQ-v2 as published, solved exactly; qloss-greedy: greedy lowering by the quantized "
                   "network's calibration cross-entropy; none: neither.")
@_ga_options(population=30, generations=20, seed_help=" and of --compare's random configurations")
@click.option("--exact-stats", is_flag=True,
              help="GA only: measure every scored configuration's own quantized network (one statistics pass each) "
                   "instead of the per-layer separable model.")
@_stats_options
@_json
@_out("with --compare a")
def apply_mq(name: str, data_dir: Path | None, proxy_files: tuple[Path, ...], formulas: tuple[str, ...],
             baselines: tuple[str, ...], allocators: tuple[str, ...], config: Any, batch_source: str | None,
             as_json: bool, out_file: Path | None, **request: Any) -> None:
    """Find the per-layer weight bit-widths of MQ benchmark NAME's network that maximise a proxy within a size budget.

    A proxy that is a sum of per-layer terms is solved exactly by integer programming, any
    other by a seeded genetic algorithm (statistics model: emq/apply/bits.py). Example:
    emq apply mq mq-digits --proxy proxy.json --budget 3,4 --budget-unit avg-bits --compare
    """
    from emq.apply.requests import BitRequest, apply_bits

    proxies = _proxies(proxy_files, formulas, out_file)
    bits = BitRequest(baselines=baselines or None, allocators=allocators or None, **request)
    _report(apply_bits(_open(name, data_dir, batch_source), proxies, bits, config, notify=_note), as_json, out_file)


@apply_group.command("vit")
@click.argument("space", type=_Names("emq.apply.arch:ARCH_SPACES"))
@_proxy_options
@click.option("--max-params", "budgets", type=_Listed(int, 1), required=True,
              help="Parameter budget (trainable parameters), or several comma-separated. Never exceeded.")
@click.option("--train", is_flag=True,
              help="Train the found arch with the recipe of the space's benchmark (spaces that have one) and compare "
                   "it with the benchmark's archs under the same budget (best, median, most parameters, proxy's "
                   "top-1).")
@_ga_options(population=16, generations=6)
@_stats_options
@_json
@_out("with --train a")
def apply_vit(space: str, proxy_files: tuple[Path, ...], formulas: tuple[str, ...], config: Any,
              batch_source: str | None, as_json: bool, out_file: Path | None, **request: Any) -> None:
    """Search ViT space SPACE for the arch with the highest proxy score within a parameter budget.

    Candidates are randomly initialised (--init-seed) and scored on the space's fixed batch,
    as the benchmarks score theirs; archs print in the ground-truth files' format. Example:
    emq apply vit vit-digits --proxy proxy.json --max-params 60000 --train
    """
    from emq.apply.requests import ArchRequest, apply_arch

    proxies = _proxies(proxy_files, formulas, out_file)
    _report(apply_arch(proxies, ArchRequest(space, **request), config, batch_source=batch_source, notify=_note),
            as_json, out_file)


if __name__ == "__main__":
    sys.exit(main())
