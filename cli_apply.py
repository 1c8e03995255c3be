"""`emq apply`: reuse an exported proxy (bit allocation under a size budget, ViT search under a parameter budget).

Registered on the `emq` group by `cli.py`; the options and output helpers are `cli_options`'.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli_options import (
    Group, Names, Listed, stats_options, ga_options, out_option, note, report, open_bench, proxies_from, data_dir_option, json_option, proxy_options,
)


@click.group("apply", cls=Group)
def apply_group() -> None:
    """Reuse an exported proxy: bit allocation under a size budget, ViT search under a parameter budget."""


@apply_group.command("mq")
@click.argument("name")
@data_dir_option
@proxy_options
@click.option("--budget", "budgets", type=Listed(float), required=True,
              help="Size budget, or several comma-separated: megabytes of weights (sum bits x weights / 8e6) or, "
                   "with --budget-unit avg-bits, average bits per weight. Never exceeded.")
@click.option("--budget-unit", type=Names("emq.apply.budget:BUDGET_UNITS"), default="mb", show_default=True,
              help="Unit of --budget.")
@click.option("--method", type=Names("emq.apply.allocation:METHODS"), default="auto", show_default=True,
              help="milp: exact integer programming (proxies that are sums of per-layer terms); ga: genetic "
                   "algorithm (any proxy); auto: milp when possible.")
@click.option("--compare", is_flag=True,
              help="Also allocate with hawq, bparams, hawq_v2, qloss-greedy, uniform and random configurations and "
                   "measure every configuration's real PTQ test accuracy (benchmarks that can measure it); the "
                   "report ends with a reading that names every method beating each proxy.")
@click.option("--random", "random_configs", default=10, show_default=True, type=click.IntRange(min=0),
              help="Random feasible configurations measured by --compare.")
@click.option("--baseline", "baselines", multiple=True,
              help="Baseline allocated as an objective by --compare (repeatable; default: hawq, bparams and qloss_layer_sum, the separable quantized loss).")
@click.option("--allocator", "allocators", multiple=True, type=Names("emq.apply.mq:COMPARE_ALLOCATORS", "none"),
              help="Allocator compared by --compare besides the objectives (repeatable; default: both). hawq_v2: "
                   "HAWQ-v2 as published, solved exactly; qloss-greedy: greedy lowering by the quantized "
                   "network's calibration cross-entropy; none: neither.")
@ga_options(population=30, generations=20, seed_help=" and of --compare's random configurations")
@click.option("--exact-stats", is_flag=True,
              help="GA only: measure every scored configuration's own quantized network (one statistics pass each) "
                   "instead of the per-layer separable model.")
@stats_options
@json_option
@out_option("with --compare a")
def apply_mq(name: str, data_dir: Path | None, proxy_files: tuple[Path, ...], formulas: tuple[str, ...],
             baselines: tuple[str, ...], allocators: tuple[str, ...], config: Any, batch_source: str | None,
             as_json: bool, out_file: Path | None, **request: Any) -> None:
    """Find the per-layer weight bit-widths of MQ benchmark NAME's network that maximise a proxy within a size budget.

    A proxy that is a sum of per-layer terms is solved exactly by integer programming, any
    other by a seeded genetic algorithm (statistics model: emq/apply/bits.py). Example:
    emq apply mq mq-digits --proxy proxy.json --budget 3,4 --budget-unit avg-bits --compare
    """
    from emq.apply.requests import BitRequest, apply_bits

    proxies = proxies_from(proxy_files, formulas, out_file)
    bits = BitRequest(baselines=baselines or None, allocators=allocators or None, **request)
    report(apply_bits(open_bench(name, data_dir, batch_source), proxies, bits, config, notify=note), as_json, out_file)


@apply_group.command("vit")
@click.argument("space", type=Names("emq.apply.arch:ARCH_SPACES"))
@proxy_options
@click.option("--max-params", "budgets", type=Listed(int, 1), required=True,
              help="Parameter budget (trainable parameters), or several comma-separated. Never exceeded.")
@click.option("--train", is_flag=True,
              help="Train the found arch with the recipe of the space's benchmark (spaces that have one) and compare "
                   "it with the benchmark's archs under the same budget (best, median, most parameters, proxy's "
                   "top-1).")
@ga_options(population=16, generations=6)
@stats_options
@json_option
@out_option("with --train a")
def apply_vit(space: str, proxy_files: tuple[Path, ...], formulas: tuple[str, ...], config: Any,
              batch_source: str | None, as_json: bool, out_file: Path | None, **request: Any) -> None:
    """Search ViT space SPACE for the arch with the highest proxy score within a parameter budget.

    Candidates are randomly initialised (--init-seed) and scored on the space's fixed batch,
    as the benchmarks score theirs; archs print in the ground-truth files' format. Example:
    emq apply vit vit-digits --proxy proxy.json --max-params 60000 --train
    """
    from emq.apply.requests import ArchRequest, apply_arch

    proxies = proxies_from(proxy_files, formulas, out_file)
    report(apply_arch(proxies, ArchRequest(space, **request), config, batch_source=batch_source, notify=note),
            as_json, out_file)

