"""A benchmark's distillation teacher: how to build it and how it sees the benchmark's batch.

Benchmarks whose ground truth includes students distilled from a teacher (ViT-Bench-101's
`_kd` columns) name that teacher, so teacher-aware baselines (DisWOT) and statistics can
run it on the same batch as each student. The teacher is built randomly initialised
from a documented seed, as DisWOT scores teacher-student pairs without training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Teacher:
    """A named teacher network: `build(init_seed)`, the input side it runs at, and its seed."""

    name: str
    build: Callable[[int], nn.Module]
    #: Side length the batch is resized to for the teacher (its native resolution), None: as given.
    resolution: int | None = None
    init_seed: int = 0

    def model(self, device: torch.device | str = "cpu") -> nn.Module:
        """Return the teacher in eval mode on `device`."""
        return self.build(self.init_seed).to(device).eval()

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Return the batch as the teacher sees it (area-resized to its resolution)."""
        if self.resolution is None or images.shape[-1] == self.resolution:
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="area")

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "init_seed": self.init_seed, "resolution": self.resolution}
