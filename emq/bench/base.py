"""Benchmark contract: candidates, their ground truth, a model factory and a fixed batch."""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from emq.errors import EMQUserError, UnknownNameError

if TYPE_CHECKING:
    from emq.stats.teacher import Teacher


@dataclass(frozen=True)
class Candidate:
    """One network to rank: an id plus either a per-layer bit assignment (MQ) or an arch (ViT)."""

    id: str
    bits: dict[str, int] | None = None
    arch: dict[str, Any] | None = field(default=None, hash=False)

    def fingerprint(self) -> str:
        """Return a short hash of what defines the network (bits, arch), not of its id.

        Part of every cache key: two ground-truth files may reuse an id for another
        configuration, and a cache keyed by id alone would hand one the other's statistics.
        """
        text = json.dumps({"bits": self.bits, "arch": self.arch}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Batch:
    """The fixed input batch a benchmark scores every candidate on (recorded with every score)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    source: str
    seed: int

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "seed": self.seed, "size": int(self.inputs.shape[0]),
                "shape": list(self.inputs.shape[1:])}


class BenchmarkNotBuiltError(EMQUserError, RuntimeError):
    """Raised when an embedded benchmark's ground truth has not been built yet."""


class UnknownTargetError(UnknownNameError):
    """A ground-truth column the benchmark does not have; the message lists the columns it has."""


class Benchmark(ABC):
    """A set of candidates with ground-truth accuracies (higher is better)."""

    name: str = ""
    family: str = ""  # "mq" or "vit"
    description: str = ""
    #: Whether candidate networks carry trained weights (else: random init, seeded).
    trained_weights: bool = False
    #: Whether the real post-training-quantization test accuracy of any bit configuration can be measured here
    #: (its trained network, calibration and test images ship with it), as `emq apply mq --compare` does.
    measures_ptq_accuracy: bool = False

    @abstractmethod
    def candidates(self) -> list[Candidate]:
        """Return all candidates in a fixed order."""

    @abstractmethod
    def ground_truth(self) -> dict[str, np.ndarray]:
        """Return accuracy columns, each aligned with `candidates()` (NaN where missing)."""

    @abstractmethod
    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return the candidate's network in eval mode (fresh copy; callers may modify it)."""

    @abstractmethod
    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        """Return the deterministic input batch for `seed`."""

    @property
    def default_target(self) -> str:
        return next(iter(self.ground_truth()))

    def candidate_ids(self) -> list[str]:
        return [c.id for c in self.candidates()]

    def check_targets(self, targets: Sequence[str] | None) -> list[str] | None:
        """Return `targets` as a list (None: every column), or fail naming the unknown ones and the columns there are."""
        if not targets:
            return None
        columns = list(self.ground_truth())
        unknown = [t for t in targets if t not in columns]
        if unknown:
            raise UnknownTargetError(f"targets: unknown column(s) {', '.join(unknown)} for {self.name}; "
                                     f"available: {', '.join(columns)}")
        return list(targets)

    def arch_features(self, candidate: Candidate) -> dict[str, float]:
        """Return the candidate's numeric architecture hyperparameters (empty for bit configurations).

        These are trivial predictors: a proxy must beat each of them. The default reads
        `candidate.arch`: numbers as they are, numeric lists (per-layer settings) as their
        mean (`X_mean`) and their sum (`X_sum`, e.g. total depth over
        stages; it differs from the mean when the list length varies). Benchmarks may override it.
        """
        return arch_features(candidate.arch)

    def teacher(self) -> "Teacher | None":
        """Return the distillation teacher of the benchmark's KD columns (None: it has none)."""
        return None

    def calibration_batch(self) -> Batch | None:
        """Return the images (and labels) the benchmark calibrates quantization on, or None when it has none."""
        return None

    def function_class(self, candidate: Candidate) -> str | None:
        """Return a name shared by exactly the candidates that compute the same function (None: not known).

        Benchmarks whose candidates repeat a function with separately trained accuracies
        (NAS-Bench-201's isomorphic cells) define it; `emq.replicate_ceiling` uses it.
        """
        return None


def arch_features(arch: dict[str, Any] | None) -> dict[str, float]:
    """Return the numeric hyperparameters of an arch record: scalars, and mean and sum of numeric lists."""
    out: dict[str, float] = {}
    for key, value in sorted((arch or {}).items()):
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif isinstance(value, (list, tuple)) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[f"{key}_mean"] = float(np.mean(value))
            out[f"{key}_sum"] = float(np.sum(value))
    return out
