"""Programs per second of one NAS-Bench-201 search screened in the pool's workers vs in the search's own process.

    EMQ_CACHE_DIR=/path/to/cache python3 benchmarks/screen_in_workers.py --budget 1500 --out benchmarks/screen_in_workers.md

Both runs are the same `emq search nas-bench-201` command (the study-10k settings:
loky x2, aging 64/32, a 100-cell hurdle, 1024-entry sketches with slices, 1,000 uniform
search cells) but for `--screen-in`; they run one after the other, in both orders
(`--repeats` pairs), so a drift of the machine shows as a difference between pairs.
Each run's rate is its log's evaluations / seconds; the table gives each pair's ratio
and checks that the two runs found the same programs (the same log but for timings,
the same hall of fame). Needs the search cells' statistics in the cache.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emq.atomic import write_text_atomic  # noqa: E402

OPTIONS = ["nas-bench-201", "--targets", "fp_acc", "--max-search", "1000", "--max-heldout", "64",
           "--stats", "weight,grad,virtual_grad,params,flops", "--backend", "loky", "--workers", "2",
           "--evolution", "aging", "--population", "64", "--offspring", "32", "--generations", "100000",
           "--hurdle-size", "100", "--hurdle-quantile", "0.75", "--sketch", "1024", "--sketch-slices"]
TIMINGS = ("seconds", "time", "programs_per_s")


def run(where: str, budget: int, seed: int) -> tuple[float, int, float, dict, list]:
    """Run the search once; return (programs/s, evaluations, seconds, screening share, comparable log + hall)."""
    with tempfile.TemporaryDirectory(prefix="screen-in-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "cli.py"), "search", *OPTIONS, "--budget", str(budget), "--seed",
               str(seed), "--screen-in", where, "--out", str(out)]
        subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        hall = json.loads((out / "hall_of_fame.json").read_text())
    evaluations = sum(r["evaluations"] for r in log)
    seconds = sum(r["seconds"] for r in log)
    phases = {k: sum(r["time"][k] for r in log) / seconds for k in log[0]["time"]}
    same = [{k: v for k, v in r.items() if k not in TIMINGS} for r in log]
    programs = [(e["formula"], e["fitness"]) for e in hall["programs"]]
    return evaluations / seconds, evaluations, seconds, phases, [same, programs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1500, help="programs per run")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, each pair in both orders")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [f"Budget {args.budget} programs, seed {args.seed}; command: `python3 benchmarks/screen_in_workers.py "
             f"--budget {args.budget} --seed {args.seed} --repeats {args.repeats}`", "",
             "| pair | screen in | programs | loop s | programs/s | screening share | evaluation share |"
             " workers / search |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    identical = True
    for pair in range(args.repeats):
        order = ["workers", "search"] if pair % 2 == 0 else ["search", "workers"]
        got = {where: run(where, args.budget, args.seed) for where in order}
        identical &= got["workers"][4] == got["search"][4]
        ratio = got["workers"][0] / got["search"][0]
        for where in order:
            rate, n, s, phases, _ = got[where]
            lines.append(f"| {pair + 1} | {where} | {n} | {s:.0f} | {rate:.2f} | {phases['screening']:.0%} | "
                         f"{phases['evaluation']:.0%} | {ratio:.2f}x |")
    lines += ["", f"Same programs, log and hall of fame in both modes: {'yes' if identical else 'NO'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
