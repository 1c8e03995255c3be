"""Architecture search on vit-digits, checked by training: the proxy's pick against the benchmark's archs.

Under each parameter budget, `compare_vit_digits` reports, for every ground-truth
column (test accuracy after the benchmark's fixed recipe):

- `search`: the arch the proxy's evolutionary search returns (`emq.apply.arch`),
  trained here with the benchmark's recipe. An arch that is one of the benchmark's
  takes its ground truth (the same recipe and training seed would give the same
  number); a new arch is trained with the seed the benchmark would give the next
  arch index, `train_seed(seed, number of archs)`;
- `proxy top-1`: the benchmark arch within the budget that the proxy scores highest
  (ground truth, no training: a pure ranking check);
- `#params`: the benchmark arch within the budget with the most parameters;
- `median`: the median accuracy of the benchmark archs within the budget (what a
  random pick gets, typically);
- `best (oracle)`: the best benchmark arch within the budget by `test_acc`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from emq.apply.arch import ArchObjective, arch_key, get_space, search_arch
from emq.fitness import kendall
from emq.proxy import Proxy


@dataclass
class ViTRow:
    """One way of picking an arch under one budget, with its accuracy per ground-truth column."""

    max_params: int
    method: str
    how: str
    params: int | None
    accuracy: dict[str, float]
    arch: dict[str, Any] | None = None
    arch_id: str | None = None
    score: float | None = None


@dataclass
class ViTComparison:
    """Every pick under every budget on vit-digits, plus what the numbers depend on."""

    space: str
    columns: list[str]
    budgets: list[int]
    proxies: dict[str, str]
    proxy_kendall: dict[str, dict[str, float]]
    search: dict[str, Any]
    batch: dict[str, Any]
    recipe: dict[str, Any]
    noise: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[ViTRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for r in data["rows"]:
            if r["score"] is not None and not math.isfinite(r["score"]):
                r["score"] = str(r["score"])
        return data

    def to_text(self) -> str:
        return self.to_markdown()

    def to_markdown(self, command: str = "") -> str:
        """Return the report: how to regenerate it, the setup, and the accuracy table."""
        lines = ["# Architecture search with exported proxies: `vit-digits`", ""]
        if command:
            lines += [f"Regenerate (deterministic given the seeds; {self.seconds:.0f} s wall-clock on 2 shared CPU "
                      "cores, mostly training):", "", f"    {command}", ""]
        s = self.search
        lines += [
            f"Search: seeded GA (tournament selection, elitism), population {s['population']}, "
            f"{s['generations']} generations, seed {s['seed']}, over the tiny-ViT space of the benchmark (embed dim, "
            "depth, per-layer heads and MLP ratio); networks "
            f"randomly initialised (init seed {s['init_seed']}), statistics on batch {self.batch.get('source')} "
            f"seed {self.batch.get('seed')} size {self.batch.get('size')}. Budget: trainable parameters.",
            "",
            "Training: the benchmark's recipe (" + ", ".join(f"{t['column']}: {t['train_images'] or 'all'} images, "
                                                             f"{t['epochs']} epochs" for t in self.recipe["tasks"])
            + f"); accuracies are on the {self.recipe.get('test_images', '?')} digits test images. A searched arch "
              "that is one of the benchmark's "
              "takes its ground truth; a new one is trained with the seed of the next arch index.",
            "",
        ]
        if self.noise:
            lines += ["Training noise (the benchmark's archs retrained with a second seed): mean |difference| "
                      + ", ".join(f"{c} {v['mean_abs_diff']:.4f}" for c, v in self.noise.items())
                      + "; single-arch differences below that are not meaningful.", ""]
        lines += [
            "How well each proxy ranks the benchmark's archs (Kendall tau, all archs):",
            "",
            "| proxy | formula | " + " | ".join(self.columns) + " |",
            "|---|---|" + "---|" * len(self.columns),
        ]
        for name, formula in self.proxies.items():
            taus = self.proxy_kendall.get(name, {})
            lines.append(f"| {name} | `{formula}` | " + " | ".join(f"{taus.get(c, math.nan):+.3f}" for c in self.columns)
                         + " |")
        lines += ["", "| max params | method | how | params | " + " | ".join(self.columns) + " | arch |",
                  "|---|---|---|---|" + "---|" * len(self.columns) + "---|"]
        for r in self.rows:
            arch = f"`{_short_arch(r.arch)}`" + (f" ({r.arch_id})" if r.arch_id else "") if r.arch else "-"
            lines.append(f"| {r.max_params} | {r.method} | {r.how} | {r.params if r.params is not None else '-'} | "
                         + " | ".join(f"{r.accuracy.get(c, math.nan):.4f}" for c in self.columns) + f" | {arch} |")
        lines.append("")
        return "\n".join(lines)


def _short_arch(arch: dict[str, Any]) -> str:
    ratios = "/".join(f"{r:g}" for r in arch["mlp_ratio"])
    heads = "/".join(str(h) for h in arch["num_heads"])
    return f"d{arch['hidden_dim']} L{arch['depth']} r{ratios} h{heads}"


def benchmark_recipe(gt: dict[str, Any]) -> Any:
    """Return the `Recipe` the benchmark's ground truth was trained with (read back from its file)."""
    from emq.bench.vit_digits_train import Recipe, Task

    r = gt["recipe"]
    return Recipe(lr=float(r["lr"]), weight_decay=float(r["weight_decay"]), betas=tuple(r["betas"]),
                  grad_clip=float(r["grad_clip"]), tasks=tuple(Task(**t) for t in r["tasks"]))


def trained_accuracy(bench: Any, arch: dict[str, Any]) -> tuple[dict[str, float], str, str | None]:
    """Return (accuracy per column, where it came from, benchmark id or None) of `arch` after the benchmark's recipe."""
    from emq.bench.vit_digits_train import train_and_test, train_seed

    gt = bench.gt
    keys = [arch_key(c["arch"]) for c in gt["candidates"]]
    key = arch_key(arch)
    if key in keys:
        i = keys.index(key)
        cand = gt["candidates"][i]
        return {c: float(cand[c]) for c in gt["columns"]}, "ground truth", cand["id"]
    recipe = benchmark_recipe(gt)
    seed = train_seed(gt["seed"], len(keys))
    accs = {t.column: train_and_test(arch, t, recipe, gt["seed"], seed, bench.space) for t in recipe.tasks}
    return accs, "trained here", None


def compare_vit_digits(
    bench: Any,
    proxies: dict[str, Proxy],
    budgets: Sequence[int],
    *,
    seed: int = 0,
    population: int = 16,
    generations: int = 6,
    init_seed: int = 0,
    batch_seed: int = 0,
    batch_size: int = 16,
    hessian_samples: int = 2,
    device: str = "cpu",
    store_dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> ViTComparison:
    """Return, per budget, the proxy's searched arch (trained) against the benchmark's archs (see the module docstring)."""
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    space = get_space("vit-digits")
    gt = bench.gt
    columns = list(gt["columns"])
    cands = gt["candidates"]
    params = np.array([c["params"] for c in cands])
    truth = {c: np.array([cand[c] for cand in cands], dtype=np.float64) for c in columns}
    objectives = {name: ArchObjective(p, space, init_seed=init_seed, batch_seed=batch_seed, batch_size=batch_size,
                                      hessian_samples=hessian_samples, device=device, store_dtype=store_dtype)
                  for name, p in proxies.items()}
    bench_scores: dict[str, np.ndarray] = {}
    taus: dict[str, dict[str, float]] = {}
    for name, obj in objectives.items():
        say(f"scoring the benchmark's {len(cands)} archs with {name}")
        scores = np.array([obj.score(c["arch"]) for c in cands])
        bench_scores[name] = scores
        ok = np.isfinite(scores)  # an arch the objective cannot score is left out, not ranked at an end
        taus[name] = {c: kendall(scores[ok], truth[c][ok]) for c in columns}
    recipe = benchmark_recipe(gt)
    comparison = ViTComparison(
        space="vit-digits", columns=columns, budgets=list(budgets), proxies={n: p.formula() for n, p in proxies.items()},
        proxy_kendall=taus,
        search={"population": population, "generations": generations, "seed": seed, "init_seed": init_seed},
        batch=space.batch(batch_seed, batch_size).describe(),
        recipe={"lr": recipe.lr, "tasks": [asdict(t) for t in recipe.tasks],
                "test_images": gt.get("data", {}).get("split_sizes", {}).get("test")},
        noise=_noise(gt))
    for budget in budgets:
        within = np.flatnonzero(params <= budget)
        for name, obj in objectives.items():
            say(f"max params {budget}: searching with {name}")
            found = search_arch(obj, budget, population=population, generations=generations, seed=seed)
            say(f"max params {budget}: training {_short_arch(found.arch)}")
            accs, source, arch_id = trained_accuracy(bench, found.arch)
            comparison.rows.append(ViTRow(budget, f"search: {name}", f"GA, {found.evaluations} archs scored; {source}",
                                          found.params, accs, found.arch, arch_id, found.score))
            if len(within):
                scores = bench_scores[name][within]
                pick = int(within[np.nanargmax(np.where(np.isfinite(scores), scores, -np.inf))])
                comparison.rows.append(_bench_row(budget, f"proxy top-1: {name}", "benchmark arch, ground truth",
                                                  cands[pick], columns, float(bench_scores[name][pick])))
        if not len(within):
            continue
        biggest = int(within[np.argmax(params[within])])
        comparison.rows.append(_bench_row(budget, "#params", "largest benchmark arch within budget", cands[biggest],
                                          columns))
        comparison.rows.append(ViTRow(budget, "median", f"median of {len(within)} benchmark archs within budget",
                                      None, {c: float(np.median(truth[c][within])) for c in columns}))
        best = int(within[np.argmax(truth[columns[0]][within])])
        comparison.rows.append(_bench_row(budget, "best (oracle)", f"best benchmark arch by {columns[0]}",
                                          cands[best], columns))
    comparison.seconds = time.perf_counter() - start
    return comparison


def _noise(gt: dict[str, Any]) -> dict[str, dict[str, float]]:
    from emq.bench.vit_digits_load import repeat_agreement

    try:
        return repeat_agreement(gt) if gt.get("repeat", {}).get("ids") else {}
    except (KeyError, ValueError):  # a ground truth without a usable repeat block
        return {}


def _bench_row(budget: int, method: str, how: str, cand: dict[str, Any], columns: list[str],
               score: float | None = None) -> ViTRow:
    return ViTRow(budget, method, how, int(cand["params"]), {c: float(cand[c]) for c in columns}, cand["arch"],
                  cand["id"], score)
