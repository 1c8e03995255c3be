"""The `emq` command line's shared pieces: parameter types, option groups built from `search.settings`, output.

`cli.py` and `cli_apply.py` declare commands with these, so every command spells an
option, a registry choice, a user error and its --json output the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import click


class UserError(click.ClickException):
    """A user or environment error as the CLI reports it: one line on stderr, exit code 2 (like a bad option)."""

    exit_code = 2


class Group(click.Group):
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


class Names(click.Choice):
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


class Listed(click.ParamType):
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


class BatchSourceOption(click.Option):
    """--batch-source, whose help lists each benchmark's sources from the registry when shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from emq.bench.registry import list_benchmarks

        offered = [f"{e.name} ({'|'.join(dict(e.options)['batch_source'])})" for e in list_benchmarks()
                   if "batch_source" in dict(e.options)]
        self.help = ("Input batch of benchmarks whose datasets are not offline (recorded with every score): "
                     + "; ".join(offered) + ". Default: the benchmark's own.")
        return super().get_help_record(ctx)


def device_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Fail on a --device torch does not know, or one this machine does not have (CUDA without a GPU)."""
    from emq.errors import DeviceError
    from emq.stats.cache import check_device

    try:
        return None if value is None else check_device(value)
    except DeviceError as err:
        raise click.BadParameter(str(err)) from None


def with_options(options: Iterable[Callable[..., Any]]) -> Callable[..., Any]:
    """Return one decorator applying a group of options in order."""
    return lambda fn: functools.reduce(lambda f, option: option(f), reversed(list(options)), fn)


def setting_option(name: str, show_default: bool = True, **overrides: Any) -> Callable[..., Any]:
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
        kind = Listed(int, s.low if s.low is not None else -math.inf)
    elif s.kind == "names":
        kind = Listed()
    elif s.choices is not None:
        kind = Names(s.choices) if isinstance(s.choices, str) else click.Choice(list(s.choices))
    else:
        kind = str
    default = None if s.kind in ("ints", "names") else s.default
    attrs = dict(type=kind, default=default, show_default=show_default and default is not None, help=s.help)
    return click.option(s.cli, name, **{**attrs, **overrides})


def stats_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the statistics options; the command receives them as one `StatsConfig`, `config`, and `batch_source`."""

    @functools.wraps(fn)
    def command(*args: Any, stat_names: tuple[str, ...] | None, batch_seed: int, batch_size: int, init_seed: int,
                store_dtype: str, hessian_samples: int, device: str | None, **kwargs: Any) -> Any:
        from emq.stats.config import StatsConfig

        config = StatsConfig(batch_seed=batch_seed, batch_size=batch_size, init_seed=init_seed, stat_names=stat_names,
                             hessian_samples=hessian_samples, store_dtype=store_dtype, device=device)
        return fn(*args, config=dataclasses.replace(config, device=config.resolved_device()), **kwargs)

    return with_options([
        setting_option("stat_names", help="Comma-separated statistics to compute and cache, e.g. weight,grad,virtual_grad "
                 "(default: every applicable one; on 224x224 ViTs name a few: see `emq stats --list` and README 'ViT "
                 "statistics and memory'). Baselines add what they need."),
        click.option("--batch-seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
                     help="Seed of the fixed input batch (recorded with every score)."),
        setting_option("batch_size"),
        setting_option("init_seed"),
        setting_option("store_dtype"),
        setting_option("hessian_samples"),
        setting_option("device", callback=device_callback),
        click.option("--batch-source", cls=BatchSourceOption),
    ])(command)


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Folder of public ground-truth files (default: $EMQ_DATA_DIR, else ../shared/benchmarks "
                              "beside the repo).")
bootstrap_option = click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(10, 1_000_000),
                          help="Bootstrap resamples for the 95% intervals (paired ones for the verdict).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
proxy_options = with_options([
    click.option("--proxy", "proxy_files", multiple=True, type=click.Path(path_type=Path),
                 help="Proxy JSON file (emq-proxy/1, e.g. from `emq export`), a search run folder (its best "
                      "program), known:NAME[,NAME...] from the known-proxy library (emq proxies list), or known "
                      "(all of it the benchmark can compute); repeatable."),
    click.option("--formula", "formulas", multiple=True,
                 help="Proxy formula, e.g. 'sum_layers(l2(grad))', optionally named: NAME=FORMULA; repeatable."),
])


def ga_options(population: int, generations: int, seed_help: str = "") -> Callable[..., Any]:
    return with_options([
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
                     help=f"Seed of the genetic search{seed_help}."),
        setting_option("population", default=population, help="Genetic search population."),
        setting_option("generations", default=generations, help="Genetic search generations."),
    ])


def out_option(what: str) -> Callable[..., Any]:
    return click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
                        help=f"Also write the result, atomically: .json, or {what} .md report headed by this command.")


def note(line: str) -> None:
    click.echo(line, err=True)


def echo(data: Any, text: str, as_json: bool, indent: int | None = 2) -> None:
    """Print `data` as JSON with --json, else `text`: the one place the CLI writes machine-readable output."""
    click.echo(json.dumps(data, indent=indent) if as_json else text)


def report(result: Any, as_json: bool, out_file: Path | None = None) -> None:
    """Print a library result (`to_json`, `to_text`) and write it to --out: .json, or its `to_markdown` report."""
    echo(result.to_json(), result.to_text(), as_json)
    if out_file is None:
        return
    from emq.atomic import write_json_atomic, write_text_atomic

    if out_file.suffix == ".json":
        write_json_atomic(out_file, result.to_json())
    elif not hasattr(result, "to_markdown"):
        raise click.UsageError("--out: without --compare / --train the output is JSON; give a .json file")
    else:
        write_text_atomic(out_file, result.to_markdown(command_line()))
    click.echo(f"wrote {out_file}", err=True)
    if getattr(result, "table", None) is not None:  # per-candidate scores, so the table can be re-checked
        table = result.table
        table.meta["command"] = command_line()
        from emq.score_table import scores_path

        click.echo(f"wrote {table.write(scores_path(out_file))}", err=True)


def command_line() -> str:
    """Return this invocation as a shell line a reader can paste (recorded beside every result)."""
    return "emq " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def open_bench(name: str, data_dir: Path | None, batch_source: str | None = None) -> Any:
    """Return benchmark `name`, building it first when it is embedded and not built yet."""
    from emq.bench.registry import open_benchmark

    return open_benchmark(name, data_dir, notify=note, batch_source=batch_source)


def proxies_from(files: tuple[Path, ...], formulas: tuple[str, ...], out_file: Path | None, required: bool = True) -> Any:
    """Return the proxies of --proxy / --formula, parsed (and --out checked) before any heavy work."""
    from search.proxy_sources import check_report_path, load_proxies

    if required and not files and not formulas:
        raise click.UsageError("give the proxy to apply: --proxy FILE (emq-proxy/1 JSON) or --formula TEXT")
    check_report_path(out_file, files)
    return load_proxies(files, formulas)
