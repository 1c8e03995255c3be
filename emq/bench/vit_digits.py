"""The embedded tiny-ViT benchmark `vit-digits`: many small AutoFormer-style ViTs trained on the digits.

Build (`build_vit_digits`, CLI `emq bench build vit-digits --seed 0`):

1. Sample `num_archs` distinct archs from `TinyViTSpace`, a scaled-down AutoFormer
   space (embed dim 32 / 48 / 64, depth 2-5, per-layer heads 2 / 4 and MLP ratio
   1 / 2 / 3), deterministic given the seed. Networks are `emq.models.autoformer`
   AutoFormers at image 16, patch 4 (16 tokens + cls), 1 channel, 10 classes.
2. Train every arch from scratch with one fixed recipe (`Recipe`: AdamW, one-cycle
   cosine, gradient clipping) on two tasks that share the architecture and differ in
   data, each giving one ground-truth column (test accuracy on the digits test split,
   a fraction):
   - `test_acc`: the whole train split (1000 images), 20 epochs;
   - `test_acc_low_data`: a stratified 200-image subset of it (20 per class), 50 epochs.
     Small data favours different archs (regularisation matters more than capacity),
     so the two columns rank differently: a joint multi-target fitness is meaningful.
3. Retrain the first `repeat_archs` archs with a second training seed to measure how
   much of the ranking is training noise (the `repeat` block of the ground truth).

Each training run is single-threaded and seeded from (seed, arch index) with
deterministic kernels, so results do not depend on how many worker processes run
them. The results live in `results_dir()/vit-digits/` (`ground_truth.json`, `README.md`,
filled in from `templates/vit-digits.md`). The arch space is in
`emq.bench.vit_digits_space`, training in `emq.bench.vit_digits_train`, reading a
build back in `emq.bench.vit_digits_load`.

The benchmark's candidates are randomly initialised networks (`init_seed`), as the
published training-free ViT proxies use; the batch comes from the digits train split.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emq.atomic import write_json_atomic, write_text_atomic
from emq.bench import digits
from emq.bench.base import Batch, Benchmark, BenchmarkNotBuiltError, Candidate
from emq.bench.build_target import check_build_target
from emq.bench.readme import render_readme
from emq.bench.registry import register_benchmark, register_builder
from emq.fitness import kendall
from emq.bench.vit_digits_load import (
    BENCH_NAME, BUILD_COMMAND, GT_FILE, GT_FORMAT, README_FILE, column, default_out_dir, load_ground_truth,
    params_kendall, repeat_agreement,
)
from emq.bench.vit_digits_space import TinyViTSpace, sample_archs, space_from_json, tiny_vit
from emq.bench.vit_digits_train import Recipe, run_jobs, train_seed
from emq.models.autoformer import count_params
from emq.stats.teacher import Teacher

BATCH_SOURCE = "digits-train-16x16"
DEFAULT_NUM_ARCHS = 120
DEFAULT_REPEAT_ARCHS = 16


# ----------------------------------------------------------------------------- build


def build_vit_digits(seed: int = 0, num_archs: int = DEFAULT_NUM_ARCHS, out_dir: str | Path | None = None,
                     progress: bool = True, recipe: Recipe = Recipe(), workers: int | None = None,
                     repeat_archs: int = DEFAULT_REPEAT_ARCHS, space: TinyViTSpace = TinyViTSpace(),
                     overwrite: bool = False) -> dict[str, Any]:
    """Build the benchmark into `out_dir` (default `results_dir()/vit-digits`); return a short summary.

    `workers` processes (default: up to 2, one thread each) train archs in parallel;
    the result does not depend on it. Writes `ground_truth.json` and `README.md` atomically,
    after all the work; an existing build is replaced only with `overwrite=True`, and then
    its columns made with the same seed, space, archs and task settings are kept rather
    than retrained (training is deterministic, so they are what a retraining would give).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    check_build_target(out, (GT_FILE, README_FILE), num_archs, "archs", overwrite)
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    repeat_archs = max(0, min(repeat_archs, num_archs))
    archs = sample_archs(num_archs, seed, space)
    kept = reusable_columns(out / GT_FILE, seed, space, archs, recipe, repeat_archs) if overwrite else {}
    todo = replace(recipe, tasks=tuple(t for t in recipe.tasks if t.column not in kept))
    soft = teacher_logits(seed) if any(t.distill for t in todo.tasks) else None
    jobs = [(i, 0, a, todo, seed, train_seed(seed, i), space, soft) for i, a in enumerate(archs)]
    jobs += [(i, 1, archs[i], todo, seed, train_seed(seed, i, 1), space, soft) for i in range(repeat_archs)]
    if not todo.tasks:
        jobs = []
    # Largest first, so the pool does not end waiting on one big arch (results do not depend on order).
    size = [count_params(tiny_vit(a, space=space)) for a in archs]
    jobs.sort(key=lambda j: (-size[j[0]], j[0], j[1]))
    results: dict[tuple[int, int], dict[str, float]] = {
        (i, r): {c: kept[c][r][i] for c in kept} for r in (0, 1) for i in range(num_archs if r == 0 else repeat_archs)}
    worker_cpu = 0.0
    for index, repeat, accs, cpu in run_jobs(jobs, workers, progress):
        results[(index, repeat)].update(accs)
        worker_cpu += cpu

    candidates = []
    for i, arch in enumerate(archs):
        row: dict[str, Any] = {"id": f"vit-{i:03d}", "arch": arch}
        row.update({c: results[(i, 0)][c] for c in recipe.columns})
        row["params"] = size[i]
        candidates.append(row)
    repeat = {"train_seed_repeat": 1, "ids": [f"vit-{i:03d}" for i in range(repeat_archs)]}
    for col in recipe.columns:
        repeat[col] = [results[(i, 1)][col] for i in range(repeat_archs)]

    split = digits.digits_split(seed)
    seconds = round(time.perf_counter() - t0, 1)
    cpu_seconds = round(time.process_time() - cpu0 + (worker_cpu if workers > 1 else 0.0), 1)
    gt = {
        "format": GT_FORMAT,
        "seed": seed,
        "space": asdict(space),
        "recipe": {
            "optimizer": "AdamW", "lr": recipe.lr, "weight_decay": recipe.weight_decay, "betas": list(recipe.betas),
            "schedule": f"one-cycle cosine, {recipe.warmup_fraction:g} of the steps warm-up",
            "grad_clip": recipe.grad_clip, "augmentation": "none",
            "tasks": [asdict(t) for t in recipe.tasks],
            "train_seed": "numpy SeedSequence([seed, arch index, repeat]); it seeds both the initialisation "
                          "and the batch order",
            **({"distillation": {"teacher": TEACHER_DESCRIPTION, "alpha": recipe.kd_alpha,
                                 "temperature": recipe.kd_temperature,
                                 "loss": "(1 - alpha) CE + alpha T^2 KL(softmax(teacher/T) || softmax(student/T))"}}
               if any(t.distill for t in recipe.tasks) else {}),
        },
        "reused_columns": sorted(kept),
        "columns": recipe.columns,
        "data": {
            "source": "sklearn.datasets.load_digits, /16, bilinear 8x8 -> 16x16, train-split mean/std",
            "split_sizes": split.sizes(),
            "low_data": "stratified subset of the train split, train_images / 10 per class, numpy rng([seed, 0x10D])",
            "test": "the digits test split; accuracies are fractions",
        },
        "candidates": candidates,
        "repeat": repeat,
        "build_seconds": seconds,
        "build_cpu_seconds": cpu_seconds,
        "workers": workers,
        "command": f"{BUILD_COMMAND} --seed {seed}",
    }
    write_json_atomic(out / GT_FILE, gt)
    write_text_atomic(out / README_FILE, readme_text(gt))
    return {"out_dir": str(out), "num_archs": len(candidates), "build_seconds": seconds,
            "build_cpu_seconds": cpu_seconds, "columns": {c: _quantiles(column(gt, c)) for c in recipe.columns},
            "params_kendall": params_kendall(gt)}


#: The distillation teacher of the `_kd` columns (its trained weights: results/mq-digits/model.safetensors).
TEACHER_DESCRIPTION = "the trained mq-digits ResNet (results/mq-digits/model.safetensors), BatchNorm folded"


def trained_teacher() -> nn.Module:
    """Return the trained digits ResNet of the embedded mq-digits build (the `_kd` columns' teacher), in eval mode."""
    from emq.bench.mq_digits import MQDigitsBenchmark

    bench = MQDigitsBenchmark()  # raises BenchmarkNotBuiltError naming `emq bench build mq-digits`
    return bench.build_model(bench.candidates()[0])


def teacher_logits(split_seed: int) -> torch.Tensor:
    """Return the teacher's logits on the whole digits train split (the soft targets of distillation)."""
    x_train, _ = digits.train_split(split_seed)
    with torch.no_grad():
        return trained_teacher()(x_train).detach()


def reusable_columns(path: Path, seed: int, space: TinyViTSpace, archs: list[dict[str, Any]], recipe: Recipe,
                     repeat_archs: int) -> dict[str, tuple[list[float], list[float]]]:
    """Return {column: (accuracies, repeat accuracies)} of an existing build made exactly as `recipe` asks now.

    A column is kept when the seed, space, archs, the recipe's shared settings and the
    column's own task settings are all unchanged; anything else is retrained.
    """
    try:
        gt = load_ground_truth(path)
    except Exception:  # no build, or a damaged one: nothing to keep
        return {}
    r = gt.get("recipe", {})
    same = (gt.get("seed") == seed and gt.get("space") == as_json(asdict(space))
            and [c["arch"] for c in gt["candidates"]] == as_json(archs)
            and (r.get("lr"), r.get("weight_decay"), list(r.get("betas", [])), r.get("grad_clip"))
            == (recipe.lr, recipe.weight_decay, list(recipe.betas), recipe.grad_clip)
            and len(gt.get("repeat", {}).get("ids", [])) == repeat_archs)
    if not same:
        return {}
    old_tasks = {t["column"]: {**t, "distill": t.get("distill", False)} for t in r.get("tasks", [])}
    kd = r.get("distillation", {})
    kept = {}
    for task in recipe.tasks:
        if old_tasks.get(task.column) != asdict(task):
            continue
        if task.distill and (kd.get("alpha"), kd.get("temperature")) != (recipe.kd_alpha, recipe.kd_temperature):
            continue
        kept[task.column] = ([c[task.column] for c in gt["candidates"]], list(gt["repeat"][task.column]))
    return kept


def as_json(value: Any) -> Any:
    """Return `value` as its ground-truth JSON holds it (tuples become lists), to compare with a read build."""
    return json.loads(json.dumps(value))


@register_builder(BENCH_NAME)
def _build(seed: int = 0, progress: bool = True, num_configs: int | None = None, **options: Any) -> Path:
    """Registry entry: `num_configs` (the CLI's --num-configs) is the number of archs."""
    if num_configs is not None:
        options.setdefault("num_archs", num_configs)
    epochs = options.pop("epochs", None)
    if epochs is not None:
        options["recipe"] = options.get("recipe", Recipe()).with_epochs(int(epochs))
    summary = build_vit_digits(seed=seed, progress=progress, **options)
    return Path(summary["out_dir"])


# ----------------------------------------------------------------------------- README


def _quantiles(v: np.ndarray) -> dict[str, float]:
    if v.size == 0:
        return {}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(["min", "q25", "median", "q75", "max"], (round(float(x), 4) for x in q)))


def readme_text(gt: dict[str, Any]) -> str:
    """Return the build's README.md, filled in from its ground truth (`templates/vit-digits.md`)."""
    cols = gt["columns"]
    taus = params_kendall(gt)
    rep = repeat_agreement(gt)
    tasks = {t["column"]: t for t in gt["recipe"]["tasks"]}
    r = gt["recipe"]
    s = gt["space"]
    spread_rows = "\n".join(
        f"| `{c}` | " + " | ".join(f"{v:.4f}" for v in _quantiles(column(gt, c)).values()) + " |" for c in cols)
    tau_rows = "\n".join(f"| `{c}` | {taus[c]:.3f} | {rep[c]['kendall']:.3f} | {rep[c]['mean_abs_diff']:.4f} |"
                         for c in cols)
    sizes = gt["data"]["split_sizes"]

    def images(t: dict[str, Any]) -> str:
        text = f"all {sizes['train']}" if t["train_images"] is None else f"{t['train_images']} (stratified)"
        return text + (", distilled" if t.get("distill") else "")

    kd = r.get("distillation")
    distillation = "" if not kd else (
        f"\n\n  Distilled columns (`{'`, `'.join(c for c, t in tasks.items() if t.get('distill'))}`) train on the "
        f"same images with the loss {kd['loss']}, alpha {kd['alpha']}, T {kd['temperature']}; the teacher is "
        f"{kd['teacher']}, whose logits on the train split are computed once. They are the offline ground truth "
        "of distillation-aware proxies (DisWOT, teacher statistics).")
    if gt.get("reused_columns"):
        distillation += (f" This build kept the columns `{'`, `'.join(gt['reused_columns'])}` of the build before it "
                         "(same seed, space, archs and settings; training is deterministic) and trained the others: "
                         "the times above cover those only.")

    task_rows = "\n".join(f"| `{c}` | {images(t)} | {t['epochs']} | {t['batch_size']} |" for c, t in tasks.items())
    cross = kendall(column(gt, cols[0]), column(gt, cols[1])) if len(cols) > 1 else float("nan")
    params = column(gt, "params")
    useless = [c for c in cols if taus[c] > 0.8]
    width = np.array([c["arch"]["hidden_dim"] for c in gt["candidates"]], dtype=np.float64)
    depth = np.array([c["arch"]["depth"] for c in gt["candidates"]], dtype=np.float64)
    verdict = (f"**Warning**: #params ranks {', '.join(useless)} almost perfectly (tau > 0.8); change the space."
               if useless else "#params does not rank any column almost perfectly (all tau <= 0.8), so "
                               "a proxy has to capture more than size.")
    return render_readme(BENCH_NAME, {
        "build_seconds": gt["build_seconds"], "build_cpu_seconds": gt["build_cpu_seconds"], "workers": gt["workers"],
        "command": gt["command"], "seed": gt["seed"], "num_archs": len(gt["candidates"]),
        "train_images": sizes["train"], "calib_images": sizes["calib"], "test_images": sizes["test"],
        "space_hidden_dim": s["hidden_dim"], "space_depth": s["depth"], "space_num_heads": s["num_heads"],
        "space_mlp_ratio": s["mlp_ratio"], "img_size": s["img_size"], "patch_size": s["patch_size"],
        "tokens": (s["img_size"] // s["patch_size"]) ** 2, "in_chans": s["in_chans"], "num_classes": s["num_classes"],
        "params_min": int(params.min()), "params_max": int(params.max()),
        "optimizer": r["optimizer"], "lr": r["lr"], "weight_decay": r["weight_decay"], "betas": r["betas"],
        "schedule": r["schedule"], "grad_clip": r["grad_clip"],
        "task_rows": task_rows, "cross_kendall": f"{cross:.3f}", "distillation": distillation,
        "spread_rows": spread_rows,
        "num_repeated": len(gt["repeat"]["ids"]), "tau_rows": tau_rows, "verdict": verdict,
        "width_kendall": ", ".join(f"`{c}` {kendall(width, column(gt, c)):.3f}" for c in cols),
        "depth_kendall": ", ".join(f"`{c}` {kendall(depth, column(gt, c)):.3f}" for c in cols),
        "gt_format": GT_FORMAT,
    })


# ----------------------------------------------------------------------------- the benchmark


class ViTDigitsBenchmark(Benchmark):
    """Tiny AutoFormer-style ViTs with their digits test accuracy after a fixed training recipe."""

    name = BENCH_NAME
    family = "vit"
    description = ("tiny AutoFormer-style ViTs (embed 32-64, depth 2-5, per-layer heads / MLP ratio) trained on "
                   "the digits: test accuracy on the full train split, on 200 images, and distilled from the trained "
                   "digits ResNet; random-init networks")
    trained_weights = False

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_out_dir()
        gt_path = self.root / GT_FILE
        if not gt_path.is_file():
            raise BenchmarkNotBuiltError(
                f"benchmark {BENCH_NAME!r} is not built: {gt_path} not found; "
                f"run `{BUILD_COMMAND} --seed 0` (about 10-15 minutes on 2 CPU cores)")
        self.gt = load_ground_truth(gt_path)
        self.seed: int = self.gt["seed"]
        self.space = space_from_json(self.gt["space"])
        # The stats cache keys on this: a rebuilt ground truth maps ids to other archs.
        self.cache_token = hashlib.sha256(gt_path.read_bytes()).hexdigest()[:16]
        self._candidates = [Candidate(c["id"], arch=c["arch"]) for c in self.gt["candidates"]]
        self._truth = {col: column(self.gt, col) for col in self.gt["columns"]}

    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {c: v.copy() for c, v in self._truth.items()}

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return the candidate's tiny ViT, randomly initialised from `init_seed`, in eval mode."""
        if candidate.arch is None:
            raise ValueError(f"candidate {candidate.id!r} carries no arch")
        return tiny_vit(candidate.arch, init_seed=init_seed, space=self.space)

    def teacher(self) -> Teacher | None:
        """The `_kd` column's teacher, the trained mq-digits ResNet (trained weights: used as they are), if built."""
        from emq.bench.mq_digits_load import default_out_dir as mq_dir

        if not (mq_dir() / "model.safetensors").is_file():
            return None
        return Teacher("mq-digits-resnet-trained", lambda _seed: trained_teacher(), None, 0)

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        x, y = digits.batch(seed, size, split_seed=self.seed, resolution=self.space.img_size,
                            channels=self.space.in_chans)
        return Batch(inputs=x, labels=y, source=BATCH_SOURCE, seed=seed)

    def describe_models(self, limit: int = 3) -> str:
        """Return a few lines: where the ground truth is, #params Kendall per column, first archs' sizes."""
        taus = params_kendall(self.gt)
        lines = [f"  built: {self.root / GT_FILE} (seed {self.seed}; {self.gt.get('command', BUILD_COMMAND)})",
                 "  Kendall tau of #params: " + ", ".join(f"{c}={t:.3f}" for c, t in taus.items())]
        for c in self.gt["candidates"][:limit]:
            lines.append(f"  {c['id']}: {c['params']} parameters")
        return "\n".join(lines)


@register_benchmark(BENCH_NAME, "vit", ViTDigitsBenchmark.description, embedded=True)
def _make_vit_digits(data_dir: Path | None = None) -> Benchmark:
    # Embedded: lives under results_dir(), whatever the public data folder is.
    return ViTDigitsBenchmark()
