"""Training `vit-digits` archs: the fixed recipe, its tasks (one ground-truth column each), and the job runner.

Each training run is single-threaded and seeded from (seed, arch index) with
deterministic kernels, so results do not depend on how many worker processes run them.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emq.bench import digits
from emq.bench.vit_digits_space import TinyViTSpace, tiny_vit


@dataclass(frozen=True)
class Task:
    """One way of training every arch; its test accuracy is one ground-truth column."""

    column: str
    train_images: int | None  # None: the whole train split; else a stratified subset of this size
    epochs: int
    batch_size: int
    #: Distil from the teacher's logits (the trained mq-digits ResNet) instead of plain cross-entropy.
    distill: bool = False


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by every arch (AdamW, one-cycle cosine with warm-up, clipping)."""

    lr: float = 2e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    #: Knowledge distillation (Hinton et al. 2015): (1 - alpha) CE + alpha T^2 KL(teacher_T || student_T).
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    tasks: tuple[Task, ...] = field(default_factory=lambda: (
        Task("test_acc", None, 20, 64),
        Task("test_acc_low_data", 200, 50, 25),
        Task("test_acc_kd", None, 20, 64, distill=True),
    ))

    def with_epochs(self, epochs: int) -> Recipe:
        """Return this recipe with every task trained for `epochs` epochs (quick builds, tests)."""
        return replace(self, tasks=tuple(replace(t, epochs=epochs) for t in self.tasks))

    @property
    def columns(self) -> list[str]:
        return [t.column for t in self.tasks]


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
                   space: TinyViTSpace = TinyViTSpace(), teacher_logits: torch.Tensor | None = None) -> float:
    """Return the test accuracy (fraction) of `arch` trained on `task` with `recipe`, from `seed`.

    A distillation task needs `teacher_logits`, the teacher's logits on the whole train split.
    """
    x_train, y_train = digits.train_split(split_seed)
    soft = teacher_logits
    if task.distill and soft is None:
        raise ValueError(f"task {task.column!r} distils: give the teacher's logits on the train split")
    if task.train_images is not None:
        idx = torch.from_numpy(low_data_indices(task.train_images, split_seed))
        x_train, y_train = x_train[idx], y_train[idx]
        soft = soft[idx] if soft is not None else None
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
                logits = model(x_train[batch])
                loss = F.cross_entropy(logits, y_train[batch])
                if task.distill:
                    t = recipe.kd_temperature
                    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(soft[batch] / t, dim=1),
                                  reduction="batchmean", log_target=True)
                    loss = (1 - recipe.kd_alpha) * loss + recipe.kd_alpha * t * t * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            correct = int((model(x_test).argmax(1) == y_test).sum())
    return correct / len(y_test)


Job = tuple[int, int, dict[str, Any], Recipe, int, int, TinyViTSpace, "torch.Tensor | None"]
JobResult = tuple[int, int, dict[str, float], float]


def _train_job(job: Job) -> JobResult:
    """Train one arch on every task of the job's recipe; return (index, repeat, {column: accuracy}, CPU seconds)."""
    index, repeat, arch, recipe, split_seed, seed, space, teacher_logits = job
    start = time.process_time()
    accs = {t.column: train_and_test(arch, t, recipe, split_seed, seed, space, teacher_logits) for t in recipe.tasks}
    return index, repeat, accs, time.process_time() - start


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_jobs(jobs: list[Job], workers: int, progress: bool) -> Iterator[JobResult]:
    """Yield each job's result as it finishes: in this process, or in `workers` spawned single-thread processes."""
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
