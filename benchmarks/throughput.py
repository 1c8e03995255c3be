"""Programs per second and peak memory per process: recompute-per-program vs cached vs cached and sharded.

    python benchmarks/throughput.py --out benchmarks/throughput.md             # the table in benchmarks/README.md
    python benchmarks/throughput.py --sets mq-digits:160 --programs 12 --no-search   # a quick look
    python benchmarks/throughput.py --sets "" --no-search --nb201-cache "$EMQ_CACHE_DIR" --nb201-budget 100
                                                          # the NB201 search-loop rows

Modes, on the same random programs (seeded) and the same candidates:
- `recompute`: per program, build every network and compute the statistics it
  needs, then evaluate (what a naive implementation pays). It is measured on
  `--recompute-programs` programs and `--recompute-candidates` candidates, and its
  rate is scaled to the set's size (time grows linearly with candidates);
- `cached, 1 process`: the statistics stacked once in this process, then
  `emq.evaluate.evaluate_stacked` per program;
- `cached, sharded loky xN`: `search.pool.EvaluationPool` with N loky workers,
  each holding its shard of the cache files (timed warm: the second call);
- `search loop`: a short `emq search` run (loky, default settings), its log's
  evaluations / seconds over the generations after the first;
- NB201 `search loop` rows (with `--nb201-cache`): whole `emq search nas-bench-201`
  runs of `--nb201-budget` programs on 1,000 search cells, one process and thread
  (serial backend), with the study's settings and with every lever of issue 23
  (aging evolution, a 100-cell hurdle, sketches), and those levers with slices
  (`--sketch-slices`; the subprogram memo and the functional-equivalence cache are
  always on): evaluations / seconds over all generations;
- `gpu` (only when CUDA is present): cached, 1 process on `cuda`, and the largest
  score difference to the CPU.
`peak RSS` is the largest resident size of each process while its mode ran (the
parent for the in-process modes, the largest worker for the pool); `stats MiB` is
the statistics' size on disk, and `workers' growth` the pool workers' RSS growth
above an idle worker, summed: the memory the shards really cost.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from emq.evaluate import StackedStats, evaluate_stacked  # noqa: E402
from emq.proxy import Proxy  # noqa: E402
from search.generate import Grammar, random_program  # noqa: E402
from search.pool import EvaluationPool  # noqa: E402


class PeakRSS:
    """Largest RSS (MiB) of this process and of each of its child processes while the block runs."""

    def __init__(self) -> None:
        self.self_peak = 0.0
        self.children: dict[int, float] = {}
        self._stop = threading.Event()

    def sample(self) -> None:
        me = psutil.Process()
        self.self_peak = max(self.self_peak, me.memory_info().rss / 2**20)
        for child in me.children(recursive=True):
            try:
                self.children[child.pid] = max(self.children.get(child.pid, 0.0), child.memory_info().rss / 2**20)
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.02)

    def __enter__(self) -> "PeakRSS":
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def child_rss() -> dict[int, float]:
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            out[child.pid] = child.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def load_set(name: str, n: int):
    """Return (benchmark, candidates, stats, cache source, config) for the first n candidates of a benchmark."""
    from emq.bench.registry import get_benchmark
    from emq.stats.cache import load_or_compute
    from emq.stats.config import StatsConfig
    from search.benchmark_run import cache_source

    bench = get_benchmark(name)
    cands = bench.candidates()[:n]
    config = StatsConfig()
    stats = load_or_compute(bench, cands, config, progress=True)
    return bench, cands, stats, cache_source(bench, cands, config), config


def recompute_seconds(bench, cands, config, program: Proxy) -> float:
    """Return the seconds to rebuild `cands`' networks, compute the statistics `program` needs, and evaluate it."""
    from emq.stats.cache import calibration_inputs
    from emq.stats.compute import compute_stats

    t = time.perf_counter()
    batch = bench.batch(config.batch_seed, config.batch_size)
    calib = calibration_inputs(bench)
    needed = program.stats_needed
    stats = []
    for cand in cands:
        names = tuple(s for s in config.stats_for(cand, bench.family) if s in needed)
        model = bench.build_model(cand, init_seed=config.init_seed)
        stats.append(compute_stats(model, batch, cand.bits, names, act_bits=getattr(bench, "act_bits", 8),
                                   calib_inputs=calib, hessian_samples=config.hessian_samples, seed=config.batch_seed,
                                   device=config.resolved_device(), store_dtype=config.torch_dtype()))
    evaluate_stacked(program, StackedStats(stats))
    return time.perf_counter() - t


def programs_for(stats, count: int, seed: int) -> list[Proxy]:
    rng = random.Random(seed)
    grammar = Grammar(sorted(set.intersection(*(s.available() for s in stats))))
    return [Proxy(random_program(rng, grammar)) for _ in range(count)]


def measure_set(name: str, n: int, args, rows: list[dict]) -> None:
    bench, cands, stats, source, config = load_set(name, n)
    label = f"{name} ({len(cands)} candidates)"
    stats_mib = source.nbytes() / 2**20
    programs = programs_for(stats, args.programs, args.seed)

    few = programs[: args.recompute_programs]
    sub = cands[: args.recompute_candidates]
    with PeakRSS() as mem:
        seconds = sum(recompute_seconds(bench, sub, config, p) for p in few)
    per_program = seconds / len(few) * len(cands) / len(sub)
    base = 1 / per_program
    rows.append(dict(set=label, mode="recompute per program", rate=base, ratio=1.0, peak=mem.self_peak,
                     stats=stats_mib, note=f"{len(few)} programs on {len(sub)} candidates, scaled to {len(cands)}"))

    torch.set_grad_enabled(False)
    with PeakRSS() as mem:
        t = time.perf_counter()
        stacked = StackedStats(stats)
        stack_s = time.perf_counter() - t
        t = time.perf_counter()
        cpu_scores = [evaluate_stacked(p, stacked)[0] for p in programs]
        rate = len(programs) / (time.perf_counter() - t)
    rows.append(dict(set=label, mode="cached, 1 process", rate=rate, ratio=rate / base, peak=mem.self_peak,
                     stats=stats_mib, note=f"stacking once: {stack_s:.1f} s"))
    if torch.cuda.is_available():
        gpu = StackedStats(stats, "cuda")
        evaluate_stacked(programs[0], gpu)  # CUDA context and kernels warm
        t = time.perf_counter()
        gpu_scores = [evaluate_stacked(p, gpu)[0] for p in programs]
        torch.cuda.synchronize()
        grate = len(programs) / (time.perf_counter() - t)
        diff = max((float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
                    for a, b in zip(cpu_scores, gpu_scores) if np.isfinite(a).any()), default=0.0)
        rows.append(dict(set=label, mode="gpu: cached, 1 process (cuda)", rate=grate, ratio=grate / base,
                         peak=psutil.Process().memory_info().rss / 2**20, stats=stats_mib,
                         note=f"largest relative score difference to CPU {diff:.1e}; "
                              f"{torch.cuda.get_device_name()}"))
        del gpu
    del stacked, stats

    with EvaluationPool("loky", n_jobs=args.workers) as pool:
        pool.worker_loads()  # start the workers, idle
        idle = child_rss()
        with PeakRSS() as mem:
            data = pool.attach(source=source)
            t = time.perf_counter()
            first = pool.score(data, programs)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            pool.score(data, programs)
            rate = len(programs) / (time.perf_counter() - t)
        growth = sum(max(0.0, mem.children.get(pid, rss) - rss) for pid, rss in idle.items())
        same = all(np.array_equal(a, b, equal_nan=True) for a, (b, _) in zip(cpu_scores, first))
    rows.append(dict(set=label, mode=f"cached, sharded loky x{args.workers}", rate=rate, ratio=rate / base,
                     peak=max(mem.children.values(), default=0.0), stats=stats_mib,
                     note=f"workers' growth {growth:.0f} MiB = {growth / stats_mib:.2f} x stats; first call incl. "
                          f"load {cold:.1f} s; scores {'bit-identical to' if same else 'DIFFER from'} 1 process"))


def run_search_log(options: list[str], env: dict[str, str] | None = None) -> tuple[list[dict], float]:
    """Run `emq search OPTIONS --out <temporary folder>`; return its log.jsonl rows and the largest RSS (MiB) of
    the run's processes."""
    with tempfile.TemporaryDirectory(prefix="throughput-search-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "cli.py"), "search", *options, "--out", str(out)]
        with PeakRSS() as mem:
            subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return log, max([mem.self_peak, *mem.children.values()])


def loop_figures(log: list[dict]) -> tuple[int, float, str]:
    """Return the evaluations, the seconds and the time by phase ("variation 0%, ...") of some log rows."""
    evaluations = sum(r["evaluations"] for r in log)
    seconds = sum(r["seconds"] for r in log)
    phases = ", ".join(f"{k} {sum(r['time'][k] for r in log) / seconds:.0%}" for k in log[0]["time"])
    return evaluations, seconds, phases


def measure_search(args, rows: list[dict]) -> None:
    log, peak = run_search_log(["mq-digits", "--generations", str(args.search_generations), "--max-heldout", "24"])
    evaluations, seconds, phases = loop_figures(log[1:])
    rows.append(dict(set="mq-digits (160 search candidates)", mode="search loop, loky x2", rate=evaluations / seconds,
                     ratio=None, peak=peak, stats=None,
                     note=f"{evaluations} evaluations in {seconds:.1f} s over generations 1-{len(log) - 1}; time: "
                          + phases))


#: The NB201 search-loop configurations compared in one run: the study's (issue 21) and the one with every lever.
NB201_CONFIGS = {
    "study settings (generational, full statistics)": ["--population", "32", "--generations", "1000"],
    "aging + hurdle 100 @ q0.75 + sketch 1024": ["--evolution", "aging", "--population", "64", "--offspring", "16",
                                                  "--generations", "1000", "--hurdle-size", "100",
                                                  "--hurdle-quantile", "0.75", "--sketch", "1024"],
    "aging + hurdle 100 @ q0.75 + sketch 1024 + slices": ["--evolution", "aging", "--population", "64", "--offspring",
                                                          "16", "--generations", "1000", "--hurdle-size", "100",
                                                          "--hurdle-quantile", "0.75", "--sketch", "1024",
                                                          "--sketch-slices"],
}


def measure_nb201_search(args, rows: list[dict]) -> None:
    """Add a row per NB201 search configuration: programs/s over a whole run of `--nb201-budget` programs on
    `--nb201-cells` search cells read from the cache at `--nb201-cache` (one process and thread: the serial backend)."""
    for label, options in NB201_CONFIGS.items():
        env = {**os.environ, "EMQ_CACHE_DIR": str(args.nb201_cache), "OMP_NUM_THREADS": "1"}
        log, peak = run_search_log(["nas-bench-201", "--targets", "fp_acc", "--max-search", str(args.nb201_cells),
                                    "--max-heldout", "64", "--backend", "serial",
                                    "--stats", "weight,grad,virtual_grad,params,flops",
                                    "--budget", str(args.nb201_budget), *options], env)
        evaluations, seconds, phases = loop_figures(log)
        stopped = sum(r.get("hurdle", {}).get("stopped", 0) for r in log)
        passed = sum(r.get("hurdle", {}).get("passed", 0) for r in log)
        hits = sum(r.get("equivalent_hits", 0) for r in log)
        rows.append(dict(set=f"nas-bench-201 ({args.nb201_cells} search cells)", mode=f"search loop, serial: {label}",
                         rate=evaluations / seconds, ratio=None, peak=peak, stats=None,
                         note=f"{evaluations} evaluations in {seconds:.0f} s over {len(log)} generations; hurdle "
                              f"stopped {stopped}, passed {passed}; {hits} functional-equivalence hits; time: "
                              + phases))


def table(rows: list[dict]) -> str:
    lines = ["| set | mode | programs/s | x recompute | peak RSS MiB / process | stats MiB | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.0f}" if r["ratio"] is not None else "-"
        stats = f"{r['stats']:.0f}" if r["stats"] is not None else "-"
        lines.append(f"| {r['set']} | {r['mode']} | {r['rate']:.2f} | {ratio} | {r['peak']:.0f} | {stats} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="mq-digits:160,mq-digits:500,vit-digits:120",
                        help="benchmark:candidates list (the first candidates of each benchmark)")
    parser.add_argument("--programs", type=int, default=24)
    parser.add_argument("--recompute-programs", type=int, default=2)
    parser.add_argument("--recompute-candidates", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-generations", type=int, default=6)
    parser.add_argument("--no-search", action="store_true", help="skip the search-loop measurement")
    parser.add_argument("--nb201-cache", type=Path, default=None,
                        help="statistics cache of the NB201 search cells (weight,grad,virtual_grad,params,flops at "
                             "batch seed 0): adds the NB201 search-loop rows (the first run computes what is missing, "
                             "which then counts in no rate: rates are the loop's own seconds)")
    parser.add_argument("--nb201-cells", type=int, default=1000)
    parser.add_argument("--nb201-budget", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    rows: list[dict] = []
    for spec in filter(None, args.sets.split(",")):
        name, n = spec.rsplit(":", 1)
        measure_set(name, int(n), args, rows)
    if not args.no_search:
        measure_search(args, rows)
    if args.nb201_cache is not None:
        measure_nb201_search(args, rows)
    text = (f"{table(rows)}\n\n{args.programs} random programs (seed {args.seed}); {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}.\n\ncommand: `{command}`\n")
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
