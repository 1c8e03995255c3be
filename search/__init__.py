"""Evolutionary search for proxy programs.

Entry points:
- `search.benchmark_run.search_benchmark(bench, stats_config, search_config, run_dir, pool=...)`:
  a whole run on a benchmark (split, cached statistics, evolution, held-out
  comparison with baselines, summary.md).
- `search.engine.run_search(search_stats, probe_stats_other_batch, truth, config, run_dir, ...)`:
  the loop on plain inputs (lists of NetworkStats and truth arrays); `SearchConfig.strategy`
  "evolution" (default) or "random" (fresh random programs every generation: the control),
  `SearchConfig.equivalence_cache` (programs equal on the probe share one record).
- `search.hall_of_fame.export_proxies(run_dir, top)`: the best programs of a run as Proxy objects.
- `search.pool.EvaluationPool(backend, n_jobs, scheduler, max_shard_bytes=...)`: scoring on
  candidates sharded over workers, one shard each (serial, threading, loky, dask, ray).

Modules: `config` (SearchConfig, run-folder errors), `protocol` (the honest bar: split, best trivial
predictor, held-out scores, verdict), `run_folder` (RunFolder: every file of a run folder),
`benchmark_run` (one run on a benchmark, end to end), `engine` (the generation loop),
`checkpoint` (resumable state, log.jsonl), `hall_of_fame` (the hall_of_fame.json format,
held-out scores, export), `individual` (a program in the population),
`generate` (random programs as `emq.program.Node` trees),
`operators` (mutation, crossover), `screening` (cheap rejections with reasons, probe fingerprints),
`equivalence` (the functional-equivalence cache),
`niches` (behavioural niches, DEAP's tournament and hall of fame per niche), `emq.evaluate` (stacked,
vmapped evaluation), `pool` (the sharded scorer, parent side), `shard_worker` (a worker
holding its shard), `stats_source` (where a worker finds statistics), `rng` (checkpointable
random streams), `report` (plots, summary), `subexpressions` (common subexpressions of a
population, logged), `synthetic` (a problem with known answer for tests and demos).
"""
