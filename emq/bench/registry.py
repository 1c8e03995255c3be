"""Benchmarks registered by name (`emq bench list`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emq.bench.base import Benchmark
from emq.errors import EMQUserError

BenchmarkFactory = Callable[[Path | None], Benchmark]


@dataclass(frozen=True)
class BenchmarkEntry:
    name: str
    family: str
    factory: BenchmarkFactory
    doc: str
    embedded: bool


BENCHMARKS: dict[str, BenchmarkEntry] = {}


def register_benchmark(name: str, family: str, doc: str, embedded: bool = False) -> Callable[[BenchmarkFactory], BenchmarkFactory]:
    """Return a decorator registering a factory `f(data_dir) -> Benchmark` under `name`."""

    def decorator(factory: BenchmarkFactory) -> BenchmarkFactory:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = BenchmarkEntry(name, family, factory, doc, embedded)
        return factory

    return decorator


class UnknownBenchmarkError(EMQUserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


BenchmarkBuilder = Callable[..., Path]
BUILDERS: dict[str, BenchmarkBuilder] = {}


def register_builder(name: str) -> Callable[[BenchmarkBuilder], BenchmarkBuilder]:
    """Register `build(seed=..., progress=..., **options) -> output folder` for an embedded benchmark."""

    def decorator(builder: BenchmarkBuilder) -> BenchmarkBuilder:
        BUILDERS[name] = builder
        return builder

    return decorator


def get_builder(name: str) -> BenchmarkBuilder:
    """Return the builder of embedded benchmark `name`, or fail naming those that can be built."""
    _load_all()
    if name not in BUILDERS:
        raise UnknownBenchmarkError(
            f"benchmark {name!r} has no builder (it is read from public files); buildable: {', '.join(sorted(BUILDERS))}"
        )
    return BUILDERS[name]


def list_benchmarks() -> list[BenchmarkEntry]:
    _load_all()
    return sorted(BENCHMARKS.values(), key=lambda e: e.name)


def get_benchmark(name: str, data_dir: Path | None = None) -> Benchmark:
    """Instantiate benchmark `name`, or fail listing the registered names."""
    _load_all()
    if name not in BENCHMARKS:
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}; registered: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name].factory(data_dir)


def open_benchmark(name: str, data_dir: Path | None = None, build: bool = True,
                   notify: Callable[[str], None] | None = None) -> Benchmark:
    """Return benchmark `name`, building it first (once) when it is embedded and not built yet and `build` is set."""
    from emq.bench.base import BenchmarkNotBuiltError

    try:
        return get_benchmark(name, data_dir)
    except BenchmarkNotBuiltError:
        if not build or not BENCHMARKS[name].embedded:
            raise
        if notify is not None:
            notify(f"{name} is not built yet: building it now (once; see `emq bench build --help`)")
        get_builder(name)()
        return get_benchmark(name, data_dir)


def _load_all() -> None:
    """Nothing to load: importing `emq.bench` (which this module's import implies) registered every benchmark."""
