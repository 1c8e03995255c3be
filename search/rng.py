"""The search's random streams (python, DEAP's, numpy, torch), seeded once and saved as plain data.

Variation and fresh programs draw from `SearchRNG.py`. DEAP's selection draws from the
global `random` module; the run lends it `SearchRNG.deap` for each of those draws
(`emq.ga.drawing_from`), so the saved state of `deap` is `random.getstate()` as DEAP
left it, and the caller's global state is untouched between draws. A saved set of
streams resumes the run exactly.
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
    """Python `random.Random` (variation), numpy and torch `Generator`s and DEAP's stream, all from one seed."""

    py: random.Random
    np: np.random.Generator
    torch: torch.Generator
    #: What DEAP's selection draws from the global `random` module (lent to it for each draw).
    deap: random.Random

    @classmethod
    def from_seed(cls, seed: int) -> "SearchRNG":
        # Independent streams from one seed (numpy's SeedSequence spawns the children; the first three are
        # those spawn(3) gave before DEAP's stream was added, so variation draws as it did).
        children = np.random.SeedSequence(seed).spawn(4)
        py = random.Random(int(children[0].generate_state(1, np.uint64)[0]))
        gen = np.random.default_rng(children[1])
        tg = torch.Generator().manual_seed(int(children[2].generate_state(1, np.uint64)[0]) & ((1 << 63) - 1))
        deap = random.Random(int(children[3].generate_state(1, np.uint64)[0]))
        return cls(py, gen, tg, deap)

    # ------------------------------------------------------------ saving
    def state_json(self) -> dict[str, Any]:
        """Return the python, DEAP and numpy states as JSON-ready data (torch is saved as a tensor file)."""
        return {"python": _python_state(self.py), "deap": _python_state(self.deap),
                "numpy": _jsonable(self.np.bit_generator.state)}

    def save_torch(self, path: str | Path) -> Path:
        """Write the torch generator state (a uint8 tensor) atomically; read back with weights_only=True."""
        return save_tensors_atomic(path, {"torch_generator": self.torch.get_state()})

    @classmethod
    def restore(cls, state: dict[str, Any], torch_path: str | Path, max_bytes: int = 2**20) -> "SearchRNG":
        """Return the streams saved by `state_json` and `save_torch` (the torch file: a regular file of at most
        `max_bytes`, read with weights_only=True)."""
        bit_gen = getattr(np.random, state["numpy"]["bit_generator"])()
        bit_gen.state = state["numpy"]
        tg = torch.Generator()
        blob = read_bytes_limited(torch_path, max_bytes, "random-state file")
        tg.set_state(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)["torch_generator"])
        return cls(_python_stream(state["python"]), np.random.Generator(bit_gen), tg, _python_stream(state["deap"]))


def _python_state(stream: random.Random) -> dict[str, Any]:
    version, internal, gauss = stream.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def _python_stream(saved: dict[str, Any]) -> random.Random:
    stream = random.Random()
    stream.setstate((saved["version"], tuple(saved["state"]), saved["gauss"]))
    return stream


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
