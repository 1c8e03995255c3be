"""Benchmarks registered by name (`emq bench list`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emq.bench.base import Benchmark
from emq.errors import EMQUserError
from primitives.errors import UnknownNameError
from primitives.registry import Registry

BenchmarkFactory = Callable[..., Benchmark]


@dataclass(frozen=True)
class BenchmarkEntry:
    """A registered benchmark: `factory(data_dir, **options)`; `options` maps each option it takes to its choices."""

    name: str
    family: str
    factory: BenchmarkFactory
    doc: str
    embedded: bool
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()


class UnknownBenchmarkError(UnknownNameError):
    """A benchmark name that is not registered (or has no builder); the message lists valid names."""


BENCHMARKS: Registry[BenchmarkEntry] = Registry("benchmark", UnknownBenchmarkError)


def register_benchmark(name: str, family: str, doc: str, embedded: bool = False,
                       options: dict[str, tuple[str, ...]] | None = None
                       ) -> Callable[[BenchmarkFactory], BenchmarkFactory]:
    """Return a decorator registering a factory `f(data_dir, **options) -> Benchmark` under `name`.

    `options` names the keyword options the factory takes, with their allowed values
    (e.g. {"batch_source": ("photos", "digits", "gaussian")}).
    """

    def decorator(factory: BenchmarkFactory) -> BenchmarkFactory:
        BENCHMARKS.add(name, BenchmarkEntry(name, family, factory, doc, embedded,
                                            tuple((k, tuple(v)) for k, v in (options or {}).items())))
        return factory

    return decorator


class BenchmarkOptionError(EMQUserError, ValueError):
    """An option the benchmark does not take, or a value it does not allow; the message lists what it takes."""


BenchmarkBuilder = Callable[..., Path]
BUILDERS: Registry[BenchmarkBuilder] = Registry("buildable (embedded) benchmark",
                                                UnknownBenchmarkError)


def register_builder(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Register `build(seed=..., progress=..., **options) -> output folder` for an embedded benchmark."""

    def decorator(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        return BUILDERS.add(name, builder)

    return decorator


def get_builder(name: str) -> BenchmarkBuilder:
    """Return the builder of embedded benchmark `name`, or fail naming those that can be built."""
    return BUILDERS[name]


def list_benchmarks() -> list[BenchmarkEntry]:
    return sorted(BENCHMARKS.values(), key=lambda e: e.name)


def get_benchmark(name: str, data_dir: Path | None = None, **options: str | None) -> Benchmark:
    """Instantiate benchmark `name` with its `options` (None values are left out), or fail naming what is valid."""
    entry = BENCHMARKS[name]
    allowed = dict(entry.options)
    given = {k: v for k, v in options.items() if v is not None}
    for key, value in given.items():
        if key not in allowed:
            takes = ", ".join(f"{k} ({'|'.join(v)})" for k, v in allowed.items()) or "no options"
            raise BenchmarkOptionError(f"benchmark {name} does not take option {key!r} (it takes {takes})")
        if value not in allowed[key]:
            raise BenchmarkOptionError(f"benchmark {name}: {key} {value!r} is not one of {', '.join(allowed[key])}")
    return entry.factory(data_dir, **given)


def open_benchmark(name: str, data_dir: Path | None = None, build: bool = True,
                   notify: Callable[[str], None] | None = None, **options: str | None) -> Benchmark:
    """Return benchmark `name` (with `options`), building it first (once) when it is embedded and not built yet.

    `data_dir` None is resolved as `emq.paths.data_dir` does (EMQ_DATA_DIR, else ../shared/benchmarks), so the
    CLI and batch jobs find public ground truth in the same place.
    """
    from emq.bench.base import BenchmarkNotBuiltError
    from emq.paths import data_dir as resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    try:
        return get_benchmark(name, data_dir, **options)
    except BenchmarkNotBuiltError:
        if not build or not BENCHMARKS[name].embedded:
            raise
        if notify is not None:
            notify(f"{name} is not built yet: building it now (once; see `emq bench build --help`)")
        get_builder(name)()
        return get_benchmark(name, data_dir, **options)
