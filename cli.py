"""`emq` command line: each command parses its options, calls one library function and prints a short summary.

Every command that reports something takes `--json`; option choices are read from the library's registries;
the work, and every check that needs more than an option's own value, is the library's.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli_apply import apply_group
from cli_options import (
    Group, Names, Listed, setting_option, stats_options, out_option, note, echo, report, command_line, open_bench, proxies_from, data_dir_option, bootstrap_option, json_option, proxy_options,
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@json_option
def ops(as_json: bool) -> None:
    """List the primitive ops proxy programs are built from, with type signatures.

    Types: T = per-layer tensor, S = per-layer scalar, N = one number per network.
    A program maps statistics (T) through ops to N, e.g. mean_layers(l2(mul(weight, grad))).
    """
    from primitives import list_ops

    found = list_ops()
    lines = [("" if i and op.group == found[i - 1].group else f"\n{op.group}:\n")
             + f"  {op.name:<20} {op.signature():<10} {op.doc}" for i, op in enumerate(found)]
    echo([{"name": o.name, "signature": o.signature(), "group": o.group, "doc": o.doc} for o in found],
          "\n".join(lines) + f"\n\n{len(found)} ops. Statistics (leaves of type T): see `emq stats --list`.", as_json)


@main.group(cls=Group)
def proxies() -> None:
    """The known-proxy library: the field's hand-designed proxies as programs (known:NAME)."""


@proxies.command("list")
@json_option
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
    echo([e.to_json() for e in found], "\n".join(lines) + f"\n\n{len(found)} known proxies.", as_json)


@main.group(cls=Group)
def bench() -> None:
    """List, build and inspect benchmarks (candidates + ground-truth accuracy)."""


@bench.command("list")
@json_option
def bench_list(as_json: bool) -> None:
    """List registered benchmarks: embedded ones are built here, public ones read from --data-dir."""
    from emq.bench.registry import list_benchmarks

    found = list_benchmarks()
    where = {True: "embedded (emq bench build)", False: "public file (--data-dir)"}
    echo([{"name": e.name, "family": e.family, "embedded": e.embedded, "doc": e.doc, "options": dict(e.options)}
           for e in found],
          "\n".join(f"{e.name:<28} {e.family:<4} {where[e.embedded]:<28} {e.doc}" for e in found), as_json)


@bench.command("build")
@click.argument("name")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of training, splits and sampled configurations.")
@click.option("--num-configs", type=click.IntRange(min=1), help="Candidates to measure (default: the benchmark's own).")
@click.option("--overwrite", is_flag=True, help="Replace an existing build (e.g. the committed results/NAME).")
@json_option
def bench_build(name: str, seed: int, num_configs: int | None, overwrite: bool, as_json: bool) -> None:
    """Build embedded benchmark NAME offline (train, then measure every candidate); deterministic given --seed.

    An existing build (such as the committed one under results/) is replaced only with --overwrite.
    """
    from emq.bench.registry import get_builder

    start = time.perf_counter()
    out = get_builder(name)(seed=seed, overwrite=overwrite, **({"num_configs": num_configs} if num_configs else {}))
    seconds = time.perf_counter() - start
    echo({"benchmark": name, "out": str(out), "seconds": round(seconds, 3)},
          f"built {name} in {seconds:.0f} s -> {out}", as_json)


@bench.command("show")
@click.argument("name")
@data_dir_option
@click.option("--limit", default=5, show_default=True, type=click.IntRange(min=1), help="Candidates to print.")
@json_option
def bench_show(name: str, data_dir: Path | None, limit: int, as_json: bool) -> None:
    """Summarise benchmark NAME: candidates, ground-truth columns and their spread."""
    from emq.bench.registry import open_benchmark
    from emq.bench.summary import benchmark_summary, summary_text

    summary = benchmark_summary(open_benchmark(name, data_dir, build=False), limit=limit)
    echo(summary, summary_text(summary), as_json)


@main.command()
@click.argument("name", required=False)
@data_dir_option
@stats_options
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N candidates.")
@click.option("--list", "list_stats", is_flag=True, help="List the statistics catalogue and exit.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Local processes computing missing files (CPU only; each about 300 MB plus one network).")
@json_option
def stats(name: str | None, data_dir: Path | None, config: Any, batch_source: str | None, limit: int | None,
          list_stats: bool, workers: int, as_json: bool) -> None:
    """Precompute the statistics cache of benchmark NAME (a second run computes nothing), or list the catalogue.

    Files are read back one at a time (memory: one network's statistics), so the whole
    of a large benchmark can be cached.
    """
    from emq.stats import STATS
    from emq.stats.cache import iter_stats
    from emq.stats.fill import fill_cache

    if list_stats or not name:
        return echo([dataclasses.asdict(i) for i in STATS.values()], "\n".join(
            f"{i.name:<16} {'(MQ only) ' if i.needs_bits else ''}{i.doc}{f' [{i.memory}]' if i.memory else ''}"
            f"{f' [cost: {i.cost}]' if i.cost else ''}"
            for i in STATS.values()), as_json)
    bench_obj = open_bench(name, data_dir, batch_source)
    start = time.perf_counter()
    cands = bench_obj.candidates()[:limit]
    in_workers = fill_cache(bench_obj, cands, config, workers)
    n = sum(1 for _ in iter_stats(bench_obj, cands, config, progress=True))
    seconds = time.perf_counter() - start
    echo({"benchmark": name, "candidates": n, "computed_in_workers": in_workers, "seconds": round(seconds, 3),
          "stats": config.describe()},
          f"statistics of {n} candidates ready in {seconds:.1f} s", as_json)


@main.command()
@click.argument("name")
@data_dir_option
@proxy_options
@click.option("--baselines", "all_baselines", is_flag=True,
              help="Also score every baseline that applies to this benchmark, the trivial predictors included "
                   "(#params, FLOPs, bit counts, quantized loss, one `arch:<hyperparameter>` per numeric arch "
                   "setting).")
@click.option("--baseline", "baselines", multiple=True,
              help="Score this baseline (repeatable); --baselines scores every one that applies.")
@click.option("--split", type=Names("emq.scoring:SPLITS"), default="all", show_default=True,
              help="Candidates to score: all, or the search / held-out half of the fixed split.")
@click.option("--targets", type=Listed(), help="Comma-separated ground-truth columns (default: all).")
@bootstrap_option
@click.option("--limit", type=click.IntRange(min=3),
              help="Only the first N candidates of the split (a quick look; a rank correlation needs at least 3).")
@stats_options
@json_option
@out_option("a")
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
    proxies = proxies_from(proxy_files, formulas, out_file, required=False)
    bench_obj = open_bench(name, data_dir, batch_source)
    if any(is_known_spec(p) for p in proxy_files):  # `known`: the library proxies this benchmark can compute
        proxies = load_proxies(proxy_files, formulas, benchmark_offered_stats(bench_obj))
    report(score_benchmark(bench_obj, proxies, list(baselines), config, all_baselines=all_baselines, **options),
            as_json, out_file)


@main.command()
@click.argument("name")
@data_dir_option
@setting_option("targets", help="Comma-separated ground-truth columns the proxy must rank (default: all).")
@setting_option("joint")
@setting_option("metric")
@setting_option("population")
@setting_option("generations")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="Seed of the search (same seed + config = same hall of fame).")
@setting_option("seeds", help="Comma-separated search seeds for a study, e.g. 0,1,2: one run per seed x batch seed in "
          "--out, then study.md with the discovery verdict over all runs (overrides --seed).")
@setting_option("batch_seeds", help="Comma-separated batch seeds for a study, e.g. 0,1 (overrides --batch-seed).")
@setting_option("fitness")
@setting_option("strategy")
@setting_option("evolution")
@setting_option("offspring")
@setting_option("budget")
@setting_option("hurdle_size")
@setting_option("hurdle_quantile")
@setting_option("sketch")
@setting_option("sketch_slices")
@setting_option("separable")
@setting_option("reject_input_independent")
@setting_option("hof_size")
@setting_option("max_search", help="Use at most N networks of the search split (bounds memory and time; 0 = all).")
@setting_option("max_heldout")
@setting_option("seed_proxies", multiple=True, type=click.Path(dir_okay=False, path_type=Path), default=(),
          help="Proxy JSON file(s) (e.g. exported from another search) placed in the first population; repeatable.")
@setting_option("backend", help="Evaluation pool: the search candidates are sharded over its workers (one shard each); "
          "dask needs --scheduler or starts a LocalCluster.")
@setting_option("scheduler")
@setting_option("workers", help="Pool workers (default: usable CPU cores; more needs --force-workers).")
@click.option("--force-workers", is_flag=True, help="Allow more --workers than usable cores.")
@setting_option("shard_memory_mb", help="MB of statistics a worker may keep resident; a larger shard is streamed from the "
          "cache files on every generation instead (slower; for caches larger than memory). Default: keep it.")
@setting_option("screen_in", help="Where new programs are screened on the probe networks: the pool's worker "
          "processes (default; every core screens and scores; with serial or threading the search process screens "
          "anyway) or the search's own process (for comparisons: benchmarks/screen_in_workers.py). Same results.")
@click.option("--baseline", "baselines", multiple=True,
              help="Baselines to compare on held-out (repeatable; default: every cheap program baseline).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (default: runs/NAME-seedSEED).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@stats_options
@json_option
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
      emq search mq-digits --strategy random --budget 720   # the control: random programs, same budget
      emq search mq-digits --max-search 0 --hurdle-size 100 --generations 1000 --budget 20000   # at scale
      emq search mq-digits --evolution aging --population 200 --offspring 50 --budget 2000   # regularized
      emq search mq-digits --separable   # sum_layers(f(lb_*)): one table, exact bit allocation
    """
    from search.session import SearchRequest, run_search_request

    outcome = run_search_request(SearchRequest(name, stats=config, seeds=seeds or (seed,), baselines=baselines or None,
                                               command=command_line(), **options), notify=note)
    if outcome.best_formula is None and not outcome.study:
        raise click.ClickException(f"no valid program survived screening; see {outcome.run_dir / 'log.jsonl'}")
    echo(outcome.to_json(), outcome.to_text(), as_json)


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
    echo(outcome.to_json(), f"{outcome.status} (folder {outcome.out_dir})", as_json, indent=None)
    sys.exit(outcome.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@data_dir_option
@bootstrap_option
@stats_options
@json_option
@click.option("--from-scores", is_flag=True,
              help="Recompute the verdict from RUN_DIR/heldout_scores.csv alone (no statistics); write nothing.")
@click.option("--known-bar", "known_bar", multiple=True,
              help="Add the second bar: judge the run (or every run of a study folder) against the best of these "
                   "known-proxy baselines, chosen on its search split (repeatable, e.g. --known-bar nwot "
                   "--known-bar jacov); reads the programs' committed held-out scores. With --known-scores, "
                   "`known:NAME` names a library program and `all` every proxy the files hold.")
@click.option("--known-scores", "known_scores", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Read the known proxies' values from these folders of chunk files (results/known_proxies.py "
                   "--chunk K: one for the search split, one for the held-out) instead of computing them; they "
                   "must hold every candidate of the run's split, on its batch (repeatable).")
def verdict(run_dir: Path, data_dir: Path | None, n_boot: int, config: Any, batch_source: str | None,
            as_json: bool, from_scores: bool, known_bar: tuple[str, ...], known_scores: tuple[Path, ...]) -> None:
    """Judge a finished search run under the honest bar and append the verdict to its summary.md.

    Its best program against the best trivial predictor (chosen on the search split), on the
    held-out split, by a paired bootstrap. Give the run's statistics settings; --stats may
    name only what the program reads. Writes RUN_DIR/verdict.json.

    With --from-scores, recompute the verdict of a run (or of a study: every run, then the
    median rule) from its committed heldout_scores.csv alone, write nothing, and say whether
    it agrees with the recorded one (exit 1 when it does not).

    With --known-bar, add the comparison with the best known proxy to a finished run (or to
    every run of a study, then rewrite study.md): the run's hall of fame, heldout_scores.csv
    and summary get it, and the claim becomes "discovery over known proxies", "discovery
    over trivial predictors" or "no discovery". --known-scores reads the known proxies'
    committed per-candidate values (the chunk files of results/known_proxies.py) instead of
    recomputing them, e.g. --known-bar all --known-scores results/known-proxies-nb201-search
    --known-scores results/known-proxies-nb201. Folders of several batch seeds may be given
    at once: each run reads those computed on its own batch.
    """
    from search.protocol import verdict_line
    from search.rescore import judge_run, study_verdict_from_scores, verdict_from_scores

    if known_bar:
        if from_scores:
            raise click.UsageError("--known-bar writes the run; --from-scores only reads: give one of them")
        _add_known_bar(run_dir, known_bar, config, data_dir, batch_source, as_json, known_scores)
        return
    if known_scores:
        raise click.UsageError("--known-scores is read by --known-bar: give the known proxies to judge against")

    if from_scores:
        study = (run_dir / "study.json").is_file()
        record = study_verdict_from_scores(run_dir) if study else verdict_from_scores(run_dir)
        line = (f"Verdict (study, from {len(record['runs'])} score files): **{record['verdict']}**" if study
                else verdict_line(record["verdict"]))
        echo(record, f"{line}\nagrees with the recorded verdict: {'yes' if record['agrees'] else 'NO'}", as_json)
        if not record["agrees"]:
            sys.exit(1)
        return
    record = judge_run(run_dir, config, data_dir, batch_source, n_boot=n_boot, notify=note)
    echo(record, verdict_line(record["verdict"]), as_json)


def _add_known_bar(run_dir: Path, names: tuple[str, ...], config: Any, data_dir: Path | None,
                   batch_source: str | None, as_json: bool, known_scores: tuple[Path, ...] = ()) -> None:
    """Add the known-proxy bar to one run folder, or to each run of a study folder and then its study.md."""
    from emq.bench.registry import open_benchmark
    from search.known_bar import add_known_bar
    from search.protocol import verdict_line
    from search.run_folder import read_run
    from search.study import load_study, refresh_study

    study = (run_dir / "study.json").is_file()
    folders = [run_dir / r["folder"] for r in load_study(run_dir)["runs"]] if study else [run_dir]
    bench = open_benchmark(read_run(folders[0]).benchmark, data_dir, notify=note, batch_source=batch_source)
    outcomes = {str(f): add_known_bar(bench, f, list(names), config, scores_from=known_scores) for f in folders}
    if study:
        record = refresh_study(run_dir)
        echo(record, f"Verdict (study): **{record['verdict']}**; over known proxies: "
                     f"**{record.get('verdict_known', 'n/a')}**; claim: **{record.get('claim', 'n/a')}**", as_json)
    else:
        echo(outcomes[str(run_dir)], verdict_line(outcomes[str(run_dir)]), as_json)


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
@bootstrap_option
@data_dir_option
@click.option("--batch-source", default=None, help="The run's --batch-source, if it used one.")
@click.option("--device", default=None, help="torch device for statistics (default: cuda if present, else cpu).")
@json_option
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
      emq fit results/nas-bench-201/study-fp_acc-uniform/seed0-batch0
      emq fit proxy.json --mode name --steps 500 -o proxy-fitted.json
    """
    from emq.fit import FitSettings
    from search.fit_run import fit_source, fit_summary

    settings = FitSettings(mode=mode, buckets=buckets, steps=steps, lr=lr, temperature=temperature,
                           val_fraction=val_fraction, seed=seed)
    record = fit_source(source, settings, out_file, command_line(), rank, data_dir, batch_source, device, n_boot,
                        notify=note)
    echo(record, fit_summary(record), as_json)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many of the hall of fame's best programs to export.")
@click.option("-o", "--out", "out_file", default="proxy.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Output file; with --top > 1, files NAME-1.json, NAME-2.json, ... are written.")
@json_option
def export(run_dir: Path, top: int, out_file: Path, as_json: bool) -> None:
    """Write the best program(s) of search RUN_DIR as reusable proxy JSON files (emq-proxy/1).

    Reuse them with `emq score`, `emq apply` (--proxy FILE) or `emq search --seed-proxies FILE`.
    """
    from search.hall_of_fame import export_run

    paths = [str(p) for p in export_run(run_dir, top=top, out=out_file)]
    echo(paths, "\n".join(f"wrote {p}" for p in paths), as_json)


main.add_command(apply_group)

if __name__ == "__main__":
    sys.exit(main())
