"""`StatsConfig`, the one record of how statistics are computed and stored: the cache key, the settings a
proxy was found with (stored in exported proxies, reused by `Proxy.score`), and what `emq apply` passes on.

`to_json` / `from_json` are its only serialised form; `from_json` checks every field and
names the first bad one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from emq.bench.base import Candidate
from emq.stats.catalogue import STATS, check_stat_names
from emq.stats.compute import applicable_stats

STORE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class StatsConfig:
    """How statistics are computed and stored; every field but `device` is part of the cache key.

    `stat_names=None` means every applicable statistic (BASE_STATS, plus BIT_STATS for
    candidates with bits, plus TRANSFORMER_STATS on "vit" benchmarks). On a ViT at
    224x224 that is several hundred MB per candidate: name a smaller set there (README,
    "ViT statistics and memory"). `store_dtype` "float16" is 16-bit storage (float16,
    or bfloat16 for tensors float16 cannot represent); "float32" keeps full precision.
    `device=None` picks CUDA when available.
    """

    batch_seed: int = 0
    batch_size: int = 16
    init_seed: int = 0
    stat_names: tuple[str, ...] | None = None
    hessian_samples: int = 2
    store_dtype: str = "float16"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.stat_names is not None:
            names = tuple(dict.fromkeys(self.stat_names))
            check_stat_names(names)
            # Catalogue order: the same set is the same cache whatever order --stats named it in.
            order = {n: i for i, n in enumerate(STATS)}
            object.__setattr__(self, "stat_names", tuple(sorted(names, key=order.__getitem__)))
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.hessian_samples < 1:
            raise ValueError(f"hessian_samples must be >= 1, got {self.hessian_samples}")

    def stats_for(self, candidate: Candidate, family: str | None = None) -> tuple[str, ...]:
        """Return the statistic names computed for `candidate` of a benchmark of `family`."""
        if self.stat_names is not None:
            return self.stat_names
        return applicable_stats(candidate.bits is not None, family)

    def torch_dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.store_dtype]

    def resolved_device(self) -> str:
        if self.device is not None:
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def describe(self) -> dict[str, Any]:
        """Return the config as people read it (and the cache key hashes it): `to_json`, "all applicable" for null."""
        data = self.to_json()
        if data["stat_names"] is None:
            data["stat_names"] = "all applicable"
        return data

    def key_fields(self) -> dict[str, Any]:
        """Return the fields that change the statistics (all but `device`)."""
        data = self.describe()
        data.pop("device")
        return data

    def to_json(self) -> dict[str, Any]:
        """Return every field as JSON-ready data (`stat_names` null for "every applicable statistic")."""
        data = dataclasses.asdict(self)
        data["stat_names"] = list(self.stat_names) if self.stat_names is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StatsConfig":
        """Return the config `to_json` wrote; unknown or ill-typed fields raise ValueError naming the field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"stats settings must be an object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"stats settings: unknown field {unknown[0]!r} (known: {', '.join(fields)})")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name == "stat_names":
                if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                    raise ValueError("stats settings: field 'stat_names' must be a list of names or null")
                kwargs[name] = tuple(value) if value is not None else None
            elif name in ("store_dtype", "device"):
                if not (isinstance(value, str) or (name == "device" and value is None)):
                    raise ValueError(f"stats settings: field {name!r} must be a string")
                kwargs[name] = value
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"stats settings: field {name!r} must be an integer, got {value!r}")
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except KeyError as err:  # an unknown statistic name
            raise ValueError(f"stats settings: field 'stat_names': {err.args[0] if err.args else err}") from None
