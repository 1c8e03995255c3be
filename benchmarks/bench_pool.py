"""Programs per second: cached statistics (loop / stacked evaluator / pool) vs recomputing them per program.

    python benchmarks/bench_pool.py                         # mq-digits, 32 candidates
    python benchmarks/bench_pool.py --candidates 250 --programs 64 --backend loky --workers 2
    python benchmarks/bench_pool.py --synthetic             # no benchmark needed

Modes, all on the same candidates and the same random programs:
- `recompute`: per program, build each network and compute the statistics it needs
  (what evaluating without a cache costs; measured on `--recompute-programs` programs);
- `loop`: `emq.scoring.proxy_scores` on cached statistics (Proxy.evaluate per network);
- `stacked`: `emq.evaluate.evaluate_stacked` (statistics stacked once, ops vmapped);
- `pool`: `search.pool.EvaluationPool.score` with the chosen backend, workers reading the
  cache files once (timed warm: the second of two calls).
Peak memory is the largest resident size (this process plus its children) seen while
the mode ran, sampled every 20 ms.
"""
from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from emq.scoring import proxy_scores  # noqa: E402
from emq.evaluate import StackedStats, evaluate_stacked  # noqa: E402
from emq.proxy import Proxy  # noqa: E402
from search.generate import Grammar, random_program  # noqa: E402
from search.pool import EvaluationPool, StatsSource  # noqa: E402


class PeakMemory:
    """Largest RSS (MiB) of this process and its children while the block runs."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def _rss(self) -> float:
        try:
            import psutil

            proc = psutil.Process()
            procs = [proc] + proc.children(recursive=True)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2**20
        except ImportError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __enter__(self) -> "PeakMemory":
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="mq-digits")
    parser.add_argument("--synthetic", action="store_true", help="use search.synthetic networks instead of a benchmark")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--programs", type=int, default=48)
    parser.add_argument("--recompute-programs", type=int, default=4)
    parser.add_argument("--backend", default="loky")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the in-process modes (default: torch's own choice)")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="bench-pool-")
    t0 = time.perf_counter()
    if args.synthetic:
        from search.synthetic import SyntheticNetworks

        nets = SyntheticNetworks(args.candidates, seed=args.seed)
        stats = [nets.stats(i) for i in range(args.candidates)]
        source = StatsSource.spill(stats, Path(tmp.name) / "stats")
        recompute = lambda needed: [nets.stats(i) for i in range(args.candidates)]  # noqa: E731
        label = f"synthetic ({args.candidates} networks)"
    else:
        from emq.bench.registry import get_benchmark
        from emq.stats_cache import StatsConfig, calibration_inputs, load_or_compute
        from emq.stats_compute import compute_stats
        from search.benchmark import cache_source

        bench = get_benchmark(args.bench)
        cands = bench.candidates()[: args.candidates]
        config = StatsConfig()
        stats = load_or_compute(bench, cands, config, progress=True)
        source = cache_source(bench, cands, config)
        batch = bench.batch(config.batch_seed, config.batch_size)
        calib = calibration_inputs(bench)
        device = config.resolved_device()

        def recompute(needed):
            out = []
            for cand in cands:
                names = tuple(n for n in config.stats_for(cand) if n in needed)
                model = bench.build_model(cand, init_seed=config.init_seed)
                out.append(compute_stats(model, batch, cand.bits, names, act_bits=getattr(bench, "act_bits", 8),
                                         calib_inputs=calib, hessian_samples=config.hessian_samples,
                                         seed=config.batch_seed, device=device, store_dtype=config.torch_dtype()))
            return out

        label = f"{args.bench} ({len(cands)} candidates, {len(stats[0].layers)} layers)"
    load_s = time.perf_counter() - t0

    rng = random.Random(args.seed)
    grammar = Grammar(sorted(stats[0].available()))
    programs = [Proxy(random_program(rng, grammar)) for _ in range(args.programs)]
    rows = []

    def record(mode: str, n: int, seconds: float, mem: PeakMemory, note: str = "", each: list[float] | None = None) -> None:
        median = statistics.median(each) * 1e3 if each else float("nan")
        rows.append((mode, n, seconds, n / seconds if seconds > 0 else float("inf"), median, mem.peak, note))

    def timed(fn, items) -> list[float]:
        out = []
        for item in items:
            t = time.perf_counter()
            fn(item)
            out.append(time.perf_counter() - t)
        return out

    with PeakMemory() as mem:
        each = timed(lambda p: proxy_scores(p, recompute(p.stats_needed)), programs[: args.recompute_programs])
        record("recompute", len(each), sum(each), mem, "statistics rebuilt per program (only those it needs)", each)

    with PeakMemory() as mem:
        each = timed(lambda p: proxy_scores(p, stats), programs)
        record("loop (cached)", len(each), sum(each), mem, "Proxy.evaluate per network", each)

    with PeakMemory() as mem:
        t = time.perf_counter()
        stacked = StackedStats(stats)
        stack_s = time.perf_counter() - t
        each = timed(lambda p: evaluate_stacked(p, stacked), programs)
        record("stacked (cached)", len(each), sum(each), mem, f"vmap over networks; stacking once took {stack_s:.2f} s",
               each)
    del stacked

    with PeakMemory() as mem, EvaluationPool(args.backend, n_jobs=args.workers) as pool:
        t = time.perf_counter()
        pool.score(source, programs)  # first call: workers start and load the statistics once
        cold = time.perf_counter() - t
        start = time.perf_counter()
        pool.score(source, programs)
        record(f"pool {args.backend} x{args.workers} (cached)", len(programs), time.perf_counter() - start, mem,
               f"warm; first call incl. worker start + load {cold:.1f} s")

    print(f"\n{label}; cached statistics loaded in {load_s:.1f} s; {len(programs)} random programs "
          f"(seed {args.seed}); torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}\n")
    print("| mode | programs | seconds | programs/s | median ms/program | peak RSS MiB | note |")
    print("|---|---|---|---|---|---|---|")
    for mode, n, s, rate, median, peak, note in rows:
        print(f"| {mode} | {n} | {s:.2f} | {rate:.2f} | {median:.1f} | {peak:.0f} | {note} |")
    base = rows[0][3]
    print("\nthroughput over recompute: " + ", ".join(f"{m} x{r / base:.1f}" for m, _, _, r, _, _, _ in rows[1:]))
    print(f"\ncommand: {command}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
