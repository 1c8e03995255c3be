"""The allocation verdict of issue 25: do the evolved separable proxies allocate bits better than the references?

Reads the JSON of `emq apply mq ... --compare --json` in which the evolved proxies are
the run folders of a study (one winner per search seed x batch seed). Per budget it
pairs each winner's real PTQ test accuracy with each reference allocator's, counts wins,
ties and losses over the winners (a tie: the same number of test images right), and
gives a two-sided sign test over the untied pairs: the paired comparison over seeds.

    python3 results/mq-separable/allocation_verdict.py results/mq-separable/allocation.json \
        --out results/mq-separable/allocation-verdict.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, when run as a script

from results.report import publish, reproduce_line  # noqa: E402

#: The allocators every evolved winner is paired with (those present in the comparison).
REFERENCES = ("hawq_v2", "qloss_layer_sum", "qloss-greedy", "uniform", "hawq", "bparams")


def verdict_lines(data: dict, winners: list[str]) -> list[str]:
    """Return the markdown of the paired comparison, one table per reference and a closing reading."""
    images = int(data["test_images"])
    accuracy = {(r["budget"], r["method"]): float(r["test_acc"]) for r in data["rows"] if r["test_acc"] is not None}
    budgets = list(dict.fromkeys(r["budget"] for r in data["rows"]))
    lines = [f"Evolved winners ({len(winners)}): {', '.join(f'`{w}`' for w in winners)}; each allocated by the exact "
             f"MILP over its per-(layer, bits) table. Test images: {images} (one image = {100 / images:.2f} points).",
             "", "| budget | reference | its test acc | winners' median | wins / ties / losses | median difference "
             "(images) | sign test p |", "|---|---|---|---|---|---|---|"]
    beaten: dict[str, list[str]] = {}
    for budget in budgets:
        mine = [accuracy[(budget, w)] for w in winners if (budget, w) in accuracy]
        for ref in REFERENCES:
            if (budget, ref) not in accuracy or not mine:
                continue
            theirs = accuracy[(budget, ref)]
            diffs = [round((a - theirs) * images) for a in mine]
            wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            ties = len(diffs) - wins - losses
            p = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
            lines.append(f"| {budget} | {ref} | {theirs:.4f} | {statistics.median(mine):.4f} | {wins} / {ties} / "
                         f"{losses} | {statistics.median(diffs):+g} | {p:.3f} |")
            if wins > losses and p < 0.05:
                beaten.setdefault(budget, []).append(ref)
    lines += ["", "Reading: " + ("; ".join(f"at {b} the winners beat {', '.join(r)} (sign test p < 0.05)"
                                          for b, r in beaten.items())
                                 if beaten else "at no budget do the evolved winners beat a reference allocator "
                                 "with a sign test p < 0.05 over the winners") + "."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="JSON written by emq apply mq ... --compare --json")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = json.loads(args.comparison.read_text(encoding="utf-8"))
    command = f"python3 results/mq-separable/allocation_verdict.py {args.comparison}"
    lines = ["# Allocation verdict: evolved separable proxies against the reference allocators", "",
             reproduce_line(command, args.out), "", *verdict_lines(data, list(data["proxies"]))]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
