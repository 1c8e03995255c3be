"""Score every known proxy as a program (emq/known) beside its independent reference, on one benchmark's split.

For each library proxy the benchmark can compute: Kendall and Spearman of the program and
of its reference baseline with the ground truth (bootstrap 95% intervals), the Kendall
between program and reference (does the program reproduce it?), the cost per candidate
(program: its own statistics computed alone, plus evaluation, measured on a sample;
reference: the seconds `emq.baselines` recorded per candidate) and the published figure.
Rank aggregates (AZ-NAS) are ranked over the candidates scored, like the fitness.

    python results/known_proxies.py nas-bench-201 --split heldout --limit 200 --targets fp_acc,ptq_acc \\
        --out results/known-proxies-nb201-200.md   (the reproduction check; its --note is in the table)
    python results/known_proxies.py vit-digits --split heldout --targets test_acc,test_acc_low_data,test_acc_kd \\
        --out results/known-proxies-vit-digits.md
    python results/known_proxies.py vit-bench-101-autoformer --data-dir ../shared/benchmarks --split heldout \\
        --limit 40 --batch-size 8 --batch-source digits --targets c100_base_acc,c100_kd_acc --cost-sample 5 \\
        --out results/known-proxies-autoformer.md

In chunks (the 5,000-cell NB201 table, accumulated across sessions or machines): each
`--chunk K` scores candidates [K * size, (K + 1) * size) of the split's first `--limit`,
writes their per-candidate values (truth, every program, every reference, the seconds
each cost) to `results/known-proxies-nb201/chunk-KKK.scores.csv` with the settings on its
first line, and deletes that chunk's statistics cache (`--keep-cache` keeps it), so the
disk holds one chunk's statistics at a time (about 6 GB at 23.4 MB per cell), and memory the
statistics of `--hold` candidates (default 64: a chunk of 250 NB201 cells peaked near 8 GB
instead of 18 GB, so two chunks run side by side on 2 cores). A chunk
whose file exists with the same settings is skipped, so rerunning a command resumes.
`--assemble` reads the chunks present and writes the table over the cells they cover,
headed "partial: N of 5,000 cells (chunks ...)" until all are there; rank aggregates
(AZ-NAS) are ranked over the cells assembled. A chunk of 250 cells took 22-31 minutes on
one CPU thread (chunks 0-3: statistics and programs 7-12 minutes, the rest the references
and the program costs measured on its first `--cost-sample` cells), and 33 MB per cell
of disk while it ran:

    python results/known_proxies.py nas-bench-201 --split heldout --limit 5000 --targets fp_acc,ptq_acc \\
        --chunk 0 --chunk-size 250           (then --chunk 1 ... --chunk 19, in any order, on any machine)
    python results/known_proxies.py nas-bench-201 --split heldout --limit 5000 --targets fp_acc,ptq_acc \\
        --chunk-size 250 --assemble --out results/known-proxies-nb201.md

The known bar (`emq verdict RUN --known-bar all --known-scores ...`, `emq.known_scores`) also
needs the library on the runs' search split, 1,000 cells in 4 chunks of their own folder:

    python results/known_proxies.py nas-bench-201 --split search --limit 1000 --targets fp_acc,ptq_acc \
        --chunk K --chunk-size 250 --chunk-dir results/known-proxies-nb201-search     (K = 0..3)

On another batch seed (a run's `--batch-seeds 1`) the known bar needs the library on that batch:
every program on the search split, then only the proxy chosen there on the held-out split
(`emq.known_scores` scores a proxy on the candidates whose files hold it; without references,
`--programs-only`, a search chunk takes about a third of the time):

    python results/known_proxies.py nas-bench-201 --split search --limit 1000 --targets fp_acc,ptq_acc \
        --batch-seed 1 --programs-only --cost-sample 2 --chunk K --chunk-size 250 \
        --chunk-dir results/known-proxies-nb201-search-batch1                        (K = 0..3)
    python results/known_proxies.py nas-bench-201 --split heldout --limit 5000 --targets fp_acc,ptq_acc \
        --batch-seed 1 --programs-only --cost-sample 2 --names CHOSEN --chunk K --chunk-size 1250 \
        --chunk-dir results/known-proxies-nb201-heldout-batch1-CHOSEN                (K = 0..3)

Statistics share one cache folder per (benchmark, batch, statistic set); the script
prints its size on disk. On NAS-Bench-201 at batch 16 that is 23.4 MB per candidate
with Fisher's `act` and `act_grad`, about 7.5 MB without (`--names` without fisher):
5,000 held-out cells are 117 GB or 38 GB unchunked (`--cache-root` puts them on a
scratch disk). On one CPU thread the statistics took 4.1 s and the references about 5 s
per cell (200 cells, CPU shared). On AutoFormer (224 x 224, batch 8) the statistics take
about 63 s per subnet on one thread (GraSP's `hessian_grad` 25 s alone, ZiCo's
`grad_batch_*` 12 s) and about 0.5 GB on disk, the references 77 s: 40 subnets were estimated
at 1.6 hours. Measured in chunks (`--chunk-size 10`, K = 0..3, two at a time, one thread each):
about 12 minutes per chunk (statistics 27-30 s per subnet), 0.4 GB per subnet on disk; a chunk
peaked near 12 GB of memory while its programs ran, so two side by side exceed 23 GB unless
`--hold 3` (statistics of 3 subnets in memory at once; the values do not change) is given.
"""
from __future__ import annotations

import argparse
import math
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from emq.atomic import write_text_atomic  # noqa: E402
from emq.baselines import baseline_scores, baseline_seconds, get_baseline  # noqa: E402
from emq.baselines.structured import AGGREGATES  # noqa: E402
from emq.bench.registry import open_benchmark  # noqa: E402
from emq.errors import EMQUserError  # noqa: E402
from emq.evaluate import StackedStats, evaluate_stacked  # noqa: E402
from emq.fitness import bootstrap_interval, kendall, spearman  # noqa: E402
from emq.known import KnownProxy, get_known, known_proxies  # noqa: E402
from emq.known_scores import (  # noqa: E402
    CHUNK_FORMAT, ChunkError, chunk_path, library_of, named_values, part_columns, read_chunk,
)
from emq.paths import cache_dir, results_dir  # noqa: E402
from emq.population import Expansion  # noqa: E402
from emq.score_table import ScoreTable, score_table  # noqa: E402
from emq.scoring import benchmark_offered_stats, select_split, stream_scores  # noqa: E402
from emq.stats.cache import cache_folder  # noqa: E402
from emq.stats.config import StatsConfig  # noqa: E402
from emq.stats.compute import compute_stats  # noqa: E402

#: Published NAS-Bench-201 CIFAR-10 figures (Kendall, Spearman) quoted by the issue that asked for this table.
PUBLISHED_NB201 = {
    "naswot": "0.571 / 0.762", "synflow": "0.561 / 0.758", "jacov": "0.616 / 0.800", "zico": "0.607 / 0.802",
    "meco": "- / 0.89", "az_nas": "0.71-0.74 / 0.89-0.91 (all 4 terms)", "az_complexity": "0.623 / 0.799 (FLOPs)",
}
#: Candidates whose statistics are held in memory at once while the programs are scored (`--hold`).
HOLD = 64
#: Folder names of the chunk files, by benchmark (the names the committed tables already use).
SHORT_NAMES = {"nas-bench-201": "nb201", "vit-bench-101-autoformer": "autoformer"}


@dataclass
class Assembled:
    """Every column of the table over the candidates assembled: truth, programs, references, seconds per candidate."""

    n: int
    truth: dict[str, np.ndarray]
    programs: dict[str, np.ndarray]
    references: dict[str, np.ndarray]
    program_costs: dict[str, float]
    reference_costs: dict[str, float]


# ------------------------------------------------------------------ per-candidate values


def program_seconds(bench: Any, proxies: Mapping[str, Any], candidates: Sequence[Any],
                    config: StatsConfig) -> dict[str, np.ndarray]:
    """Return each program's seconds on each candidate: its statistics computed alone, plus its share of evaluation."""
    batch = bench.batch(config.batch_seed, config.batch_size)
    out = {}
    for name, proxy in proxies.items():
        seconds, stats = [], []
        for cand in candidates:
            model = bench.build_model(cand, init_seed=config.init_seed)
            start = time.perf_counter()
            stats.append(compute_stats(model, batch, cand.bits, sorted(proxy.stats_needed),
                                       act_bits=getattr(bench, "act_bits", 8),
                                       store_dtype=config.torch_dtype(), teacher=bench.teacher(),
                                       device=config.resolved_device()))
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        evaluate_stacked(proxy, StackedStats(stats))
        out[name] = np.asarray(seconds) + (time.perf_counter() - start) / len(candidates)
    return out


def reference_names(library: Mapping[str, KnownProxy]) -> list[str]:
    """Return the baselines computed per candidate: each reference, an aggregate's terms in its place."""
    # An aggregate reference brings every aggregate's terms (az_nas_3 beside az_nas_ec).
    aggregated = any(e.reference in AGGREGATES for e in library.values())
    return sorted({e.reference for e in library.values() if e.reference not in AGGREGATES}
                  | ({t for terms in AGGREGATES.values() for t in terms} if aggregated else set()))


def candidate_columns(bench: Any, library: Mapping[str, KnownProxy], candidates: Sequence[Any], config: StatsConfig,
                      cost_sample: int, cache_root: Path | None,
                      hold: int = HOLD, with_references: bool = True) -> tuple[dict[str, np.ndarray], float]:
    """Return the per-candidate columns of `candidates` (programs or their parts, references, seconds) and the
    seconds the programs' statistics took. `hold`: candidates whose statistics are held in memory at once (whole
    stacking blocks, so the scores do not depend on it). `with_references=False`: the programs only."""
    expansion = Expansion.of([e.proxy for e in library.values()])
    start = time.perf_counter()
    parts = stream_scores(expansion.parts, bench, candidates, config, chunk=hold, cache_root=cache_root)
    stats_seconds = time.perf_counter() - start
    columns = {name: scores for name, (scores, _) in zip(part_columns(library), parts)}
    references = reference_names(library) if with_references else []
    for name in references:
        get_baseline(name)  # an unknown reference fails here, before any work
    scores = baseline_scores(bench, references, config, candidates=candidates, cache_root=cache_root)
    columns.update({f"reference:{n}": s for n, s in scores.items()})
    sample = candidates[:cost_sample]
    for name, seconds in program_seconds(bench, {n: e.proxy for n, e in library.items()}, sample, config).items():
        columns[f"seconds:program:{name}"] = np.concatenate([seconds, np.full(len(candidates) - len(sample), np.nan)])
    for name, seconds in baseline_seconds(bench, references, config, candidates, cache_root).items():
        columns[f"seconds:reference:{name}"] = seconds
    return columns, stats_seconds


def assemble(tables: Sequence[ScoreTable], library: Mapping[str, KnownProxy]) -> Assembled:
    """Return the table's columns over the candidates of `tables`, in order; rank aggregates ranked over all of them."""
    truth = {t: np.concatenate([tab.truth[t] for tab in tables]) for t in tables[0].truth}
    columns = {c: np.concatenate([tab.scores[c] for tab in tables]) for c in tables[0].scores}
    programs, references = named_values(columns, library)
    program_costs = {n: _mean(columns[f"seconds:program:{n}"]) for n in library}
    reference_costs = {c[len("seconds:reference:"):]: _mean(v) for c, v in columns.items()
                       if c.startswith("seconds:reference:") and np.isfinite(v).any()}
    return Assembled(len(next(iter(truth.values()))), truth, programs, references, program_costs, reference_costs)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else math.nan


# ------------------------------------------------------------------ chunk files


def chunk_bounds(chunk: int, size: int, total: int) -> tuple[int, int]:
    """Return the [start, stop) of chunk `chunk` among `total` candidates, or fail naming the last chunk."""
    count = math.ceil(total / size)
    if not 0 <= chunk < count:
        raise ChunkError(f"--chunk {chunk}: the split's {total} candidates make chunks 0..{count - 1} of "
                         f"--chunk-size {size}")
    return chunk * size, min(total, (chunk + 1) * size)


def chunk_settings(args: argparse.Namespace, library: Mapping[str, KnownProxy], stats: Sequence[str],
                   batch: Mapping[str, Any], total: int) -> dict[str, Any]:
    """Return what makes two chunks parts of one table (their files must agree on all of it)."""
    return {"benchmark": args.benchmark, "split": args.split, "limit": args.limit, "total": total,
            "chunk_size": args.chunk_size, "targets": args.targets_list, "batch": dict(batch),
            "stats": list(stats), "cost_sample": args.cost_sample,
            "programs": {n: e.formula for n, e in library.items()},
            "references": [] if args.programs_only else reference_names(library)}


def chunk_ranges(chunks: Sequence[int]) -> str:
    """Return chunk numbers as runs: 0-3, 7."""
    runs: list[list[int]] = []
    for k in sorted(chunks):
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


# ------------------------------------------------------------------ the table


def interval(scores: np.ndarray, truth: np.ndarray, metric: Callable, n_boot: int) -> str:
    value = metric(scores, truth)
    if not np.isfinite(value):
        return "n/a (constant)" if np.ptp(scores) == 0 else "n/a"
    low, high = bootstrap_interval(scores, truth, metric, n_boot)
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def agreement(mine: np.ndarray, theirs: np.ndarray | None) -> str:
    """Return the program-vs-reference Kendall, or say that both are the same constant (no ranking to compare)."""
    if theirs is None:
        return "n/a"
    value = kendall(mine, theirs)
    if np.isfinite(value):
        return f"{value:+.3f}"
    if np.allclose(mine, theirs, rtol=1e-5, atol=1e-12, equal_nan=True):
        return f"equal (all {float(np.nanmean(mine)):g})" if np.ptp(mine) == 0 else "equal"
    return "n/a"


def render(benchmark: str, library: Mapping[str, KnownProxy], table: Assembled, preamble: Sequence[str],
           n_boot: int) -> str:
    """Return the markdown report: `preamble` (how it was made), then one table per target and the programs."""
    published = PUBLISHED_NB201 if benchmark == "nas-bench-201" else {}
    lines = [f"# Known proxies as programs beside their references on `{benchmark}`", "", *preamble]
    programs, refs = table.programs, table.references
    for target, column in table.truth.items():
        lines += [f"## `{target}`", "",
                  "| proxy | program Kendall [95% CI] | program Spearman [95% CI] | reference | reference Kendall | "
                  "reference Spearman | Kendall program vs reference | s / candidate: program / reference | "
                  "published (Kendall / Spearman) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, entry in library.items():
            mine, theirs = programs[name], refs.get(entry.reference)
            ref_cost = table.reference_costs.get(entry.reference)
            lines.append(
                f"| {name} | {interval(mine, column, kendall, n_boot)} | "
                f"{interval(mine, column, spearman, n_boot)} | {entry.reference} | "
                f"{interval(theirs, column, kendall, n_boot) if theirs is not None else 'n/a'} | "
                f"{interval(theirs, column, spearman, n_boot) if theirs is not None else 'n/a'} | "
                f"{agreement(mine, theirs)} | {table.program_costs[name]:.2f} / "
                f"{f'{ref_cost:.2f}' if ref_cost is not None else '-'} | {published.get(name, '-')} |")
        lines.append("")
    lines += ["Programs (`emq proxies list` gives each one's paper and fidelity):", ""]
    lines += [f"- {n}: `{e.formula}` (reference `{e.reference}`)" for n, e in library.items()]
    if "az_nas" in library and "az_nas_3" in refs:
        lines += ["", "AZ-NAS with progressivity (`az_nas_3`: expressivity + progressivity + FLOPs, the reference "
                  "terms): " + ", ".join(f"`{t}` Kendall {kendall(refs['az_nas_3'], c):+.3f}"
                                         for t, c in table.truth.items())
                  + f"; the program's Kendall with it {kendall(programs['az_nas'], refs['az_nas_3']):+.3f}."]
    return "\n".join(lines) + "\n"


def cost_sentence(cost_sample: int, where: str, per: str = "") -> str:
    """Return the sentence saying how the costs column was measured."""
    return (f"Program cost: its statistics alone plus evaluation, mean over {cost_sample} candidates{per}, "
            f"{where}. Reference cost: as recorded by its baseline, mean over the candidates "
            "(aggregates: not a per-network cost).")


# ------------------------------------------------------------------ commands


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("--split", default="heldout", choices=("all", "search", "heldout"))
    parser.add_argument("--limit", type=int, help="only the first N candidates of the split")
    parser.add_argument("--targets", help="comma-separated ground-truth columns (default: the first)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-seed", type=int, default=0, help="seed of the input batch (a run's batch seed)")
    parser.add_argument("--programs-only", action="store_true",
                        help="skip the references (about 2/3 of the time on NB201): values for the known bar only")
    parser.add_argument("--batch-source", default=None)
    parser.add_argument("--names", help="comma-separated known proxies (default: every one the benchmark offers)")
    parser.add_argument("--cost-sample", type=int, default=20,
                        help="candidates the program costs are measured on (per chunk with --chunk)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-root", type=Path, default=None,
                        help="statistics cache folder (default: the usual one); it may be deleted afterwards")
    parser.add_argument("--out", type=Path, help="markdown report")
    parser.add_argument("--note", default="", help="a paragraph printed under the command (e.g. what a sample stands for)")
    parser.add_argument("--chunk", type=int, help="score only candidates [K * size, (K + 1) * size) into a chunk file")
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--chunk-dir", type=Path,
                        help="folder of the chunk files (default: results/known-proxies-<benchmark's short name>)")
    parser.add_argument("--hold", type=int, default=HOLD,
                        help=f"candidates whose statistics are held in memory at once (default {HOLD}: about 2 GB on "
                             "NAS-Bench-201; the scores do not depend on it)")
    parser.add_argument("--keep-cache", action="store_true", help="keep a chunk's statistics after writing its file")
    parser.add_argument("--assemble", action="store_true", help="write the table from the chunk files present")
    args = parser.parse_args(argv)
    if args.chunk is not None and args.assemble:
        parser.error("--chunk computes one chunk, --assemble reads them all: give one")
    if args.chunk_size < 1:
        parser.error("--chunk-size must be >= 1")
    if args.batch_seed < 0:
        parser.error("--batch-seed must be >= 0")
    if args.chunk_dir is None:
        args.chunk_dir = results_dir() / f"known-proxies-{SHORT_NAMES.get(args.benchmark, args.benchmark)}"
    return args


def library_for(args: argparse.Namespace, offered: Sequence[str]) -> dict[str, KnownProxy]:
    """Return the known proxies the benchmark offers statistics for (those of --names, if given)."""
    names = args.names.split(",") if args.names else None
    for name in names or []:
        get_known(name)  # a misspelt name fails listing the library
    return {n: e for n, e in known_proxies().items() if set(e.stats) <= set(offered) and (not names or n in names)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2: a chunk file or setting that cannot be used, one line)."""
    args = parse_args(argv)
    try:
        if args.assemble:
            assemble_command(args)
        else:
            score_command(args, list(argv) if argv is not None else sys.argv[1:])
    except EMQUserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def score_command(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Score the split (or one chunk of it): write the table, or the chunk's per-candidate file."""
    bench = open_benchmark(args.benchmark, args.data_dir, batch_source=args.batch_source)
    library = library_for(args, benchmark_offered_stats(bench))
    needed = sorted(set().union(*(e.proxy.stats_needed for e in library.values())))
    config = StatsConfig(batch_seed=args.batch_seed, batch_size=args.batch_size, stat_names=tuple(needed),
                         device=args.device)
    index = select_split(bench, args.split)[: args.limit]
    all_truth = bench.ground_truth()
    args.targets_list = args.targets.split(",") if args.targets else [next(iter(all_truth))]
    batch = bench.batch(config.batch_seed, config.batch_size).describe()
    command = "python results/known_proxies.py " + " ".join(shlex.quote(a) for a in argv)
    cache_root = args.cache_root
    if args.chunk is not None:
        settings = chunk_settings(args, library, needed, batch, len(index))
        start, stop = chunk_bounds(args.chunk, args.chunk_size, len(index))
        path = chunk_path(args.chunk_dir, args.chunk)
        if path.exists():
            read_chunk(path, settings)
            print(f"chunk {args.chunk} is already in {path} (same settings): skipped")
            return
        index = index[start:stop]
        # The chunk's own cache folder: deleting it frees this chunk's statistics and nothing else.
        cache_root = (args.cache_root or cache_dir()) / f"known-proxies-chunk-{args.chunk:03d}"
    candidates = [bench.candidates()[i] for i in index]
    truth = {t: np.asarray(all_truth[t], dtype=np.float64)[index] for t in args.targets_list}
    columns, stats_seconds = candidate_columns(bench, library, candidates, config, args.cost_sample, cache_root,
                                               args.hold, with_references=not args.programs_only)
    folder = cache_folder(bench, config, cache_root)
    threads = str(torch.get_num_threads())
    if args.chunk is not None:
        disk = sum(p.stat().st_size for p in cache_root.rglob("*") if p.is_file())
        template = re.sub(rf"--chunk[ =]{args.chunk}(?!\d)", "--chunk K", command)  # one command for every chunk
        meta = {"format": CHUNK_FORMAT, "settings": settings, "chunk": args.chunk, "start": start, "stop": stop,
                "command": template, "stats_seconds": round(stats_seconds, 3), "disk_bytes": disk,
                "threads": threads, "device": args.device, "init_seed": config.init_seed}
        score_table(candidates, truth, columns, meta).write(path)
        if not args.keep_cache:
            shutil.rmtree(cache_root, ignore_errors=True)
        print(f"chunk {args.chunk}: candidates {start}..{stop - 1} written to {path} "
              f"(statistics {stats_seconds:.0f} s, {disk / len(candidates) / 1e6:.2f} MB per candidate on disk"
              f"{'' if args.keep_cache else ', cache deleted'})")
        return
    disk = sum(p.stat().st_size for p in folder.glob("*.pt")) if folder.exists() else 0
    table = assemble([score_table(candidates, truth, columns)], library)
    preamble = [f"Reproduce: `{command}`", "", *([args.note, ""] if args.note else []),
                f"Split `{args.split}`, {len(candidates)} candidates, batch {batch}; "
                f"statistics `{','.join(needed)}` ({disk / len(candidates) / 1e6:.2f} MB per candidate on disk, "
                f"cache key `{folder.parent.name}/{folder.name}`); scoring every program took {stats_seconds:.0f} s "
                "(statistics computed or read once). " + cost_sentence(min(args.cost_sample, len(candidates)),
                                                                      f"{threads} torch thread(s)"), ""]
    text = render(args.benchmark, library, table, preamble, args.bootstrap)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


def assemble_command(args: argparse.Namespace) -> None:
    """Write the table over the chunk files present in --chunk-dir (labelled partial until every chunk is there)."""
    paths = sorted(args.chunk_dir.glob("chunk-*.scores.csv"))
    if not paths:
        raise ChunkError(f"{args.chunk_dir}: no chunk-KKK.scores.csv file; compute one first with --chunk K")
    tables = [read_chunk(paths[0])]
    settings = tables[0].meta["settings"]
    tables += [read_chunk(p, settings) for p in paths[1:]]
    for flag, value in (("benchmark", args.benchmark), ("split", args.split), ("limit", args.limit),
                        ("chunk_size", args.chunk_size)):
        if settings[flag] != value:
            raise ChunkError(f"{paths[0]}: its chunks were computed with {flag} {settings[flag]!r}, not {value!r}; "
                             f"give the same --{flag.replace('_', '-')} (or another --chunk-dir)")
    library = library_of(settings["programs"], paths[0])
    chunks = {t.meta["chunk"]: t for t in tables}
    total, size = settings["total"], settings["chunk_size"]
    for k, t in chunks.items():
        start, stop = chunk_bounds(k, size, total)
        if len(t.candidates) != stop - start:
            raise ChunkError(f"{chunk_path(args.chunk_dir, k)}: {len(t.candidates)} candidates, chunk {k} has "
                             f"{stop - start}; delete it and rerun its --chunk command")
    ordered = [chunks[k] for k in sorted(chunks)]
    table = assemble(ordered, library)
    expected = math.ceil(total / size)
    coverage = (f"all {total:,} cells ({expected} chunks)" if len(chunks) == expected else
                f"**partial: {table.n:,} of {total:,} cells (chunks {chunk_ranges(chunks)} of 0-{expected - 1})**")
    first = ordered[0].meta
    seconds = sum(t.meta["stats_seconds"] for t in ordered)
    disk = sum(t.meta["disk_bytes"] for t in ordered)
    devices = sorted({f"{t.meta['device']} with {t.meta['threads']} torch thread(s)" for t in ordered})
    preamble = [f"Reproduce: `{first['command']}` for each chunk K = 0..{expected - 1}, then "
                f"`python results/known_proxies.py {args.benchmark} --split {args.split}"
                f"{f' --limit {args.limit}' if args.limit else ''} --chunk-size {size} --assemble"
                f"{f' --out {args.out}' if args.out else ''}`", "",
                *([args.note, ""] if args.note else []),
                f"Split `{settings['split']}`, {coverage}, batch {settings['batch']}; statistics "
                f"`{','.join(settings['stats'])}` ({disk / table.n / 1e6:.2f} MB per candidate on disk while its "
                f"chunk ran); scoring every program took {seconds:.0f} s over the chunks (statistics computed once). "
                "Rank aggregates (AZ-NAS: `az_nas`, `az_nas_ec`, `az_nas_3`) are ranked over the "
                f"{table.n:,} cells assembled. "
                + cost_sentence(settings["cost_sample"], ", ".join(devices), per=" of each chunk"), ""]
    text = render(args.benchmark, library, table, preamble, args.bootstrap)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    sys.exit(main())
