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
them. The results live in `results_dir()/vit-digits/` (`ground_truth.json`, `README.md`).

The benchmark's candidates are randomly initialised networks (`init_seed`), as the
published training-free ViT proxies use; the batch comes from the digits train split.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emq.atomic import write_json_atomic, write_text_atomic
from emq.bench import digits
from emq.bench.base import Batch, Benchmark, BenchmarkNotBuiltError, Candidate
from emq.bench.gt_json import read_gt_json
from emq.bench.registry import register_benchmark, register_builder
from emq.bench.build_target import check_build_target
from emq.errors import InputFileError
from emq.models.autoformer import autoformer, count_params
from emq.paths import results_dir

BENCH_NAME = "vit-digits"
GT_FORMAT = "emq-vit-gt/1"
GT_FILE = "ground_truth.json"
README_FILE = "README.md"
BUILD_COMMAND = "emq bench build vit-digits"
BATCH_SOURCE = "digits-train-16x16"
DEFAULT_NUM_ARCHS = 120
DEFAULT_REPEAT_ARCHS = 16


@dataclass(frozen=True)
class TinyViTSpace:
    """The arch space: AutoFormer's per-layer heads / MLP ratios, scaled down to 16x16 digits."""

    hidden_dim: tuple[int, ...] = (32, 48, 64)
    depth: tuple[int, ...] = (2, 3, 4, 5)
    num_heads: tuple[int, ...] = (2, 4)
    mlp_ratio: tuple[float, ...] = (1.0, 2.0, 3.0)
    img_size: int = 16
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10


@dataclass(frozen=True)
class Task:
    """One way of training every arch; its test accuracy is one ground-truth column."""

    column: str
    train_images: int | None  # None: the whole train split; else a stratified subset of this size
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by every arch (AdamW, one-cycle cosine with warm-up, clipping)."""

    lr: float = 2e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    tasks: tuple[Task, ...] = field(default_factory=lambda: (
        Task("test_acc", None, 20, 64),
        Task("test_acc_low_data", 200, 50, 25),
    ))

    def with_epochs(self, epochs: int) -> Recipe:
        """Return this recipe with every task trained for `epochs` epochs (quick builds, tests)."""
        return replace(self, tasks=tuple(replace(t, epochs=epochs) for t in self.tasks))

    @property
    def columns(self) -> list[str]:
        return [t.column for t in self.tasks]


def default_out_dir() -> Path:
    return results_dir() / BENCH_NAME


# ----------------------------------------------------------------------------- archs


def sample_archs(num: int, seed: int = 0, space: TinyViTSpace = TinyViTSpace()) -> list[dict[str, Any]]:
    """Return `num` distinct archs: depth and width uniform, then heads and MLP ratio uniform per layer."""
    rng = np.random.default_rng([seed, 0x71F])
    seen: set[str] = set()
    archs: list[dict[str, Any]] = []
    attempts = 0
    while len(archs) < num:
        attempts += 1
        if attempts > 100 * num + 1000:
            raise ValueError(f"could not draw {num} distinct archs from {space}")
        depth = int(rng.choice(space.depth))
        arch = {
            "hidden_dim": int(rng.choice(space.hidden_dim)),
            "depth": depth,
            "mlp_ratio": [float(r) for r in rng.choice(space.mlp_ratio, size=depth)],
            "num_heads": [int(h) for h in rng.choice(space.num_heads, size=depth)],
        }
        key = json.dumps(arch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            archs.append(arch)
    return archs


def tiny_vit(arch: dict[str, Any], init_seed: int = 0, space: TinyViTSpace = TinyViTSpace()) -> nn.Module:
    """Return the tiny ViT of `arch` (AutoFormer layout at the space's image / patch size), in eval mode."""
    return autoformer(arch, init_seed, img_size=space.img_size, patch_size=space.patch_size,
                      in_chans=space.in_chans, num_classes=space.num_classes)


# ----------------------------------------------------------------------------- training


def train_seed(seed: int, index: int, repeat: int = 0) -> int:
    """Return the training seed of arch `index` (repeat 0: the ground truth; 1: the noise estimate)."""
    return int(np.random.SeedSequence([seed, index, repeat]).generate_state(1)[0])


def low_data_indices(n: int, seed: int = 0) -> np.ndarray:
    """Return sorted positions (into the train split) of a stratified subset of `n` images, n/10 per class."""
    _, labels = digits.train_split(seed)
    labels = labels.numpy()
    classes = np.unique(labels)
    if n % len(classes) or n // len(classes) > np.bincount(labels).min():
        raise ValueError(f"a stratified subset needs a multiple of {len(classes)} images, at most "
                         f"{np.bincount(labels).min() * len(classes)}; got {n}")
    rng = np.random.default_rng([seed, 0x10D])
    picks = [rng.permutation(np.flatnonzero(labels == c))[: n // len(classes)] for c in classes]
    return np.sort(np.concatenate(picks))


class _single_thread_deterministic:
    """Run a block on one thread with deterministic kernels, restoring the previous settings."""

    def __enter__(self) -> None:
        self._threads = torch.get_num_threads()
        self._det = torch.are_deterministic_algorithms_enabled()
        self._warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: Any) -> None:
        torch.use_deterministic_algorithms(self._det, warn_only=self._warn)
        torch.set_num_threads(self._threads)


def train_and_test(arch: dict[str, Any], task: Task, recipe: Recipe, split_seed: int, seed: int,
                   space: TinyViTSpace = TinyViTSpace()) -> float:
    """Return the test accuracy (fraction) of `arch` trained on `task` with `recipe`, from `seed`."""
    x_train, y_train = digits.train_split(split_seed)
    if task.train_images is not None:
        idx = torch.from_numpy(low_data_indices(task.train_images, split_seed))
        x_train, y_train = x_train[idx], y_train[idx]
    x_test, y_test = digits.test_split(split_seed)
    with _single_thread_deterministic(), torch.random.fork_rng(devices=[]):
        model = tiny_vit(arch, init_seed=seed, space=space)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                betas=recipe.betas)
        steps = task.epochs * math.ceil(len(x_train) / task.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps,
                                                    pct_start=recipe.warmup_fraction, anneal_strategy="cos")
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(task.epochs):
            perm = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(x_train), task.batch_size):
                batch = perm[i:i + task.batch_size]
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            correct = int((model(x_test).argmax(1) == y_test).sum())
    return correct / len(y_test)


Job = tuple[int, int, dict[str, Any], Recipe, int, int, TinyViTSpace]
JobResult = tuple[int, int, dict[str, float], float]


def _train_job(job: Job) -> JobResult:
    """Train one arch on every task; return (index, repeat, {column: accuracy}, CPU seconds)."""
    index, repeat, arch, recipe, split_seed, seed, space = job
    start = time.process_time()
    accs = {t.column: train_and_test(arch, t, recipe, split_seed, seed, space) for t in recipe.tasks}
    return index, repeat, accs, time.process_time() - start


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_jobs(jobs: list[Job], workers: int, progress: bool) -> Iterator[JobResult]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="train tiny ViTs", unit="arch")
    try:
        if workers <= 1:
            for job in jobs:
                yield _train_job(job)
                if bar is not None:
                    bar.update()
            return
        import multiprocessing

        # spawn, not fork: a forked child of a process that already ran torch ops can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = [pool.submit(_train_job, job) for job in jobs]
            for fut in as_completed(futures):
                yield fut.result()
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()


# ----------------------------------------------------------------------------- build


def build_vit_digits(seed: int = 0, num_archs: int = DEFAULT_NUM_ARCHS, out_dir: str | Path | None = None,
                     progress: bool = True, recipe: Recipe = Recipe(), workers: int | None = None,
                     repeat_archs: int = DEFAULT_REPEAT_ARCHS, space: TinyViTSpace = TinyViTSpace(),
                     overwrite: bool = False) -> dict[str, Any]:
    """Build the benchmark into `out_dir` (default `results_dir()/vit-digits`); return a short summary.

    `workers` processes (default: up to 2, one thread each) train archs in parallel;
    the result does not depend on it. Writes `ground_truth.json` and `README.md` atomically,
    after all the work; an existing build is replaced only with `overwrite=True`.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    check_build_target(out, (GT_FILE, README_FILE), num_archs, "archs", overwrite)
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    repeat_archs = max(0, min(repeat_archs, num_archs))
    archs = sample_archs(num_archs, seed, space)
    jobs = [(i, 0, a, recipe, seed, train_seed(seed, i), space) for i, a in enumerate(archs)]
    jobs += [(i, 1, archs[i], recipe, seed, train_seed(seed, i, 1), space) for i in range(repeat_archs)]
    # Largest first, so the pool does not end waiting on one big arch (results do not depend on order).
    size = [count_params(tiny_vit(a, space=space)) for a in archs]
    jobs.sort(key=lambda j: (-size[j[0]], j[0], j[1]))
    results: dict[tuple[int, int], dict[str, float]] = {}
    worker_cpu = 0.0
    for index, repeat, accs, cpu in _run_jobs(jobs, workers, progress):
        results[(index, repeat)] = accs
        worker_cpu += cpu

    candidates = []
    for i, arch in enumerate(archs):
        row: dict[str, Any] = {"id": f"vit-{i:03d}", "arch": arch}
        row.update(results[(i, 0)])
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
        },
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
    write_text_atomic(out / README_FILE, _readme(gt))
    return {"out_dir": str(out), "num_archs": len(candidates), "build_seconds": seconds,
            "build_cpu_seconds": cpu_seconds, "columns": {c: _quantiles(_column(gt, c)) for c in recipe.columns},
            "params_kendall": params_kendall(gt)}


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


# ----------------------------------------------------------------------------- report


def _column(gt: dict[str, Any], col: str) -> np.ndarray:
    return np.array([c[col] for c in gt["candidates"]], dtype=np.float64)


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    if len(a) < 2:
        return float("nan")
    tau = kendalltau(a, b)[0]
    return float(tau) if np.isfinite(tau) else float("nan")


def params_kendall(gt: dict[str, Any]) -> dict[str, float]:
    """Return Kendall tau of #params with each accuracy column (near 1 would make the benchmark trivial)."""
    params = _column(gt, "params")
    return {col: round(_kendall(params, _column(gt, col)), 4) for col in gt["columns"]}


def repeat_agreement(gt: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Return, per column, Kendall tau and mean |difference| between the two training seeds of the repeated archs."""
    rep = gt["repeat"]
    by_id = {c["id"]: c for c in gt["candidates"]}
    out = {}
    for col in gt["columns"]:
        first = np.array([by_id[i][col] for i in rep["ids"]], dtype=np.float64)
        second = np.array(rep[col], dtype=np.float64)
        out[col] = {"kendall": round(_kendall(first, second), 4),
                    "mean_abs_diff": round(float(np.abs(first - second).mean()), 4) if len(first) else float("nan")}
    return out


def _quantiles(v: np.ndarray) -> dict[str, float]:
    if v.size == 0:
        return {}
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(["min", "q25", "median", "q75", "max"], (round(float(x), 4) for x in q)))


def _readme(gt: dict[str, Any]) -> str:
    cols = gt["columns"]
    taus = params_kendall(gt)
    rep = repeat_agreement(gt)
    tasks = {t["column"]: t for t in gt["recipe"]["tasks"]}
    r = gt["recipe"]
    s = gt["space"]
    spread_rows = "\n".join(
        f"| `{c}` | " + " | ".join(f"{v:.4f}" for v in _quantiles(_column(gt, c)).values()) + " |" for c in cols)
    tau_rows = "\n".join(f"| `{c}` | {taus[c]:.3f} | {rep[c]['kendall']:.3f} | {rep[c]['mean_abs_diff']:.4f} |"
                         for c in cols)
    sizes = gt["data"]["split_sizes"]

    def images(t: dict[str, Any]) -> str:
        return f"all {sizes['train']}" if t["train_images"] is None else f"{t['train_images']} (stratified)"

    task_rows = "\n".join(f"| `{c}` | {images(t)} | {t['epochs']} | {t['batch_size']} |" for c, t in tasks.items())
    cross = _kendall(_column(gt, cols[0]), _column(gt, cols[1])) if len(cols) > 1 else float("nan")
    params = _column(gt, "params")
    useless = [c for c in cols if taus[c] > 0.8]
    width = np.array([c["arch"]["hidden_dim"] for c in gt["candidates"]], dtype=np.float64)
    depth = np.array([c["arch"]["depth"] for c in gt["candidates"]], dtype=np.float64)
    dims = ", ".join(f"`{c}` {_kendall(width, _column(gt, c)):.3f}" for c in cols)
    depths = ", ".join(f"`{c}` {_kendall(depth, _column(gt, c)):.3f}" for c in cols)
    verdict = (f"**Warning**: #params ranks {', '.join(useless)} almost perfectly (tau > 0.8); change the space."
               if useless else "#params does not rank any column almost perfectly (all tau <= 0.8), so "
                               "a proxy has to capture more than size.")
    return f"""# vit-digits: embedded tiny-ViT ranking benchmark

Ground truth made by this project, offline, from data inside the scikit-learn wheel.
Rebuild (deterministic given the seed; {gt['build_seconds']} s wall, {gt['build_cpu_seconds']} s CPU
with {gt['workers']} worker process(es) on the machine that made these files; the CPU seconds divided
by the number of free cores is the time to expect, wall time grows when the cores are shared):

    {gt['command']}

(library call: `emq.bench.vit_digits.build_vit_digits(seed={gt['seed']}, num_archs={len(gt['candidates'])})`).

## How it was made

- Data: `sklearn.datasets.load_digits` (1797 grey 8x8 digits), scaled to [0, 1],
  upsampled bilinearly to 16x16, normalised with the train split's mean/std
  (emq/bench/digits.py). Stratified split (seed {gt['seed']}): {sizes['train']} train,
  {sizes['calib']} calibration (unused here), {sizes['test']} test images.
- Space: {len(gt['candidates'])} distinct archs of a scaled-down AutoFormer space: embed dim
  {s['hidden_dim']}, depth {s['depth']}, per-layer heads {s['num_heads']} and MLP ratio
  {s['mlp_ratio']} (depth and width uniform, then each layer's heads and ratio uniform).
  Networks: `emq.models.autoformer.AutoFormer` (the ViT-Bench-101 AutoFormer layout:
  conv patch embedding, cls token, learned position embedding, pre-norm blocks, attention
  width = embed dim split across the heads, mean-pooled patch tokens) at image
  {s['img_size']}, patch {s['patch_size']} ({(s['img_size'] // s['patch_size']) ** 2} tokens + cls),
  {s['in_chans']} channel, {s['num_classes']} classes; {int(params.min())}-{int(params.max())} parameters.
- Recipe (every arch, every task): {r['optimizer']} lr {r['lr']}, weight decay {r['weight_decay']},
  betas {r['betas']}, {r['schedule']}, gradient-norm clipping {r['grad_clip']}, no augmentation;
  one training seed per arch (from the build seed and the arch index) for both the
  initialisation and the batch order; one thread, deterministic kernels.
- Tasks (one ground-truth column each; top-1 accuracy on the {sizes['test']} test images, a fraction):

| column | train images | epochs | batch size |
|--------|--------------|--------|------------|
{task_rows}

  The second task (20 images per class) is a clearly different regime: with little data,
  capacity pays less (see tau(#params) below) and the ranking changes.
  Kendall tau between the two columns: {cross:.3f}.

## Accuracy spread

| column | min | 25% | median | 75% | max |
|--------|-----|-----|--------|-----|-----|
{spread_rows}

## How hard it is, and how noisy

Kendall tau of each column with the number of parameters, and, for the first
{len(gt['repeat']['ids'])} archs retrained with a second training seed, the Kendall tau between the two
seeds' accuracies and their mean absolute difference (the training noise a perfect
proxy cannot beat):

| column | tau(#params) | tau(seed 1 vs seed 2) | mean abs diff |
|--------|--------------|-----------------------|---------------|
{tau_rows}

{verdict}
Other single knobs (Kendall tau-b, many ties): embed dim {dims}; depth {depths}.

## Files

- `ground_truth.json` — format `{GT_FORMAT}`: seed, space, recipe, candidates (`id`, `arch`,
  one accuracy per column, `params`), `repeat` (second-seed accuracies of the first archs),
  build time and the command.

Candidates are scored as randomly initialised networks (seeded `init_seed`), as the
published training-free ViT proxies do; the batch is drawn from the digits train split.
"""


# ----------------------------------------------------------------------------- load


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Return the validated content of an `emq-vit-gt/1` ground_truth.json."""
    path = Path(path)
    gt = read_gt_json(path, GT_FORMAT, ("space", "columns", "candidates"), InputFileError,
                      f"rebuild with `{BUILD_COMMAND} --seed 0`")

    def fail(name: str, why: str) -> InputFileError:
        return InputFileError(f"{path}: field {name!r} {why}")

    try:
        space_from_json(gt["space"])
    except (TypeError, AttributeError) as exc:
        raise fail("space", f"does not describe a TinyViTSpace ({exc})") from exc
    cols = gt["columns"]
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
        raise fail("columns", "must be a non-empty list of column names")
    cands = gt["candidates"]
    if not isinstance(cands, list) or not cands:
        raise fail("candidates", "must be a non-empty list")
    ids: set[str] = set()
    for i, c in enumerate(cands):
        where = f"candidates[{i}]"
        if not isinstance(c, dict):
            raise fail(where, "must be an object with 'id', 'arch', the accuracy columns and 'params'")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid or cid in ids:
            raise fail(f"{where}.id", f"must be a distinct non-empty string, got {cid!r}")
        ids.add(cid)
        arch = c.get("arch")
        if not _valid_arch(arch):
            raise fail(f"{where}.arch", f"(id {cid!r}) must hold hidden_dim, depth and per-layer mlp_ratio / "
                                        f"num_heads lists of depth entries, got {arch!r}")
        for col in cols:
            v = c.get(col)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
                raise fail(f"{where}.{col}", f"(id {cid!r}) must be an accuracy in [0, 1], got {v!r}")
        if not isinstance(c.get("params"), int) or c["params"] < 1:
            raise fail(f"{where}.params", f"(id {cid!r}) must be a positive integer")
    return gt


def space_from_json(data: dict[str, Any]) -> TinyViTSpace:
    """Return the TinyViTSpace that `asdict(space)` was written from (lists back to tuples)."""
    return TinyViTSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _valid_arch(arch: Any) -> bool:
    if not isinstance(arch, dict):
        return False
    dim, depth = arch.get("hidden_dim"), arch.get("depth")
    if not isinstance(dim, int) or not isinstance(depth, int) or dim < 1 or depth < 1:
        return False
    heads, ratios = arch.get("num_heads"), arch.get("mlp_ratio")
    return (isinstance(heads, list) and isinstance(ratios, list) and len(heads) == len(ratios) == depth
            and all(isinstance(h, int) and h >= 1 and dim % h == 0 for h in heads)
            and all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in ratios))


class ViTDigitsBenchmark(Benchmark):
    """Tiny AutoFormer-style ViTs with their digits test accuracy after a fixed training recipe."""

    name = BENCH_NAME
    family = "vit"
    description = ("tiny AutoFormer-style ViTs (embed 32-64, depth 2-5, per-layer heads / MLP ratio) trained on "
                   "the digits: test accuracy on the full train split and on 200 images; random-init networks")
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
        self._truth = {col: _column(self.gt, col) for col in self.gt["columns"]}

    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {c: v.copy() for c, v in self._truth.items()}

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return the candidate's tiny ViT, randomly initialised from `init_seed`, in eval mode."""
        if candidate.arch is None:
            raise ValueError(f"candidate {candidate.id!r} carries no arch")
        return tiny_vit(candidate.arch, init_seed=init_seed, space=self.space)

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
