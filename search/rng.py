"""The search's random streams (python, numpy, torch), seeded once and saved as plain data.

Nothing in the search reads a global random state: selection, variation and fresh
programs all draw from `SearchRNG.py` (tournaments through `emq.ga.tournament`), so
a saved stream resumes the run exactly.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emq.atomic import save_tensors_atomic
from emq.safe_read import read_bytes_limited


@dataclass
class SearchRNG:
    """Python `random.Random`, numpy `Generator` and torch `Generator`, all from one seed."""

    py: random.Random
    np: np.random.Generator
    torch: torch.Generator

    @classmethod
    def from_seed(cls, seed: int) -> "SearchRNG":
        # Three independent streams from one seed (numpy's SeedSequence spawns the children).
        children = np.random.SeedSequence(seed).spawn(3)
        py = random.Random(int(children[0].generate_state(1, np.uint64)[0]))
        gen = np.random.default_rng(children[1])
        tg = torch.Generator().manual_seed(int(children[2].generate_state(1, np.uint64)[0]) & ((1 << 63) - 1))
        return cls(py, gen, tg)

    # ------------------------------------------------------------ saving
    def state_json(self) -> dict[str, Any]:
        """Return the python and numpy states as JSON-ready data (torch is saved as a tensor file)."""
        version, internal, gauss = self.py.getstate()
        return {"python": {"version": version, "state": list(internal), "gauss": gauss},
                "numpy": _jsonable(self.np.bit_generator.state)}

    def save_torch(self, path: str | Path) -> Path:
        """Write the torch generator state (a uint8 tensor) atomically; read back with weights_only=True."""
        return save_tensors_atomic(path, {"torch_generator": self.torch.get_state()})

    @classmethod
    def restore(cls, state: dict[str, Any], torch_path: str | Path, max_bytes: int = 2**20) -> "SearchRNG":
        """Return the streams saved by `state_json` and `save_torch` (the torch file: a regular file of at most
        `max_bytes`, read with weights_only=True)."""
        p = state["python"]
        py = random.Random()
        py.setstate((p["version"], tuple(p["state"]), p["gauss"]))
        bit_gen = getattr(np.random, state["numpy"]["bit_generator"])()
        bit_gen.state = state["numpy"]
        tg = torch.Generator()
        blob = read_bytes_limited(torch_path, max_bytes, "random-state file")
        tg.set_state(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["torch_generator"])
        return cls(py, np.random.Generator(bit_gen), tg)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
