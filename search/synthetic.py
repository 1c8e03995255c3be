"""A small synthetic mixed-precision problem: statistics and ground truth without any benchmark.

Networks share their weights and differ in per-layer bits, like a mixed-precision
benchmark; the gradient-type statistics are redrawn on a "second batch", so
programs reading only weights, bits or quantization error are input independent.
The ground truth is a known, Hessian-weighted quantization error plus noise, so a
search has something real to find. Used by the tests, demos and `benchmarks/`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emq.stats import NetworkStats

LAYERS: tuple[tuple[str, tuple[int, ...]], ...] = (("conv1", (8, 3, 3, 3)), ("conv2", (8, 8, 3, 3)), ("fc", (10, 8)))
BITS = (2, 3, 4, 8)


@dataclass
class SyntheticProblem:
    """Search networks, their probe on a second batch, ground truth, and a disjoint held-out set."""

    search: list[NetworkStats]
    probe_other: list[NetworkStats]
    probe_index: list[int]
    truth: dict[str, np.ndarray]
    heldout: list[NetworkStats]
    heldout_truth: dict[str, np.ndarray]


def _network(bits: dict[str, int], weights: dict[str, torch.Tensor], batch: torch.Generator) -> NetworkStats:
    layers, params = {}, {}
    for name, shape in LAYERS:
        w = weights[name]
        b = bits[name]
        scale = w.abs().amax() / (2 ** (b - 1) - 1)
        qw = torch.round(w / scale) * scale
        grad = torch.randn(shape, generator=batch)
        layers[name] = {
            "weight": w,
            "grad": grad,
            "act": torch.randn((4, shape[0]), generator=batch),
            "act_grad": torch.randn((4, shape[0]), generator=batch) * 0.1,
            "hessian_diag": grad.square() * (1 + 0.1 * torch.rand(shape, generator=batch)),
            "bits": torch.full(shape, float(b)),
            "quant_weight": qw,
            "quant_error": qw - w,
            "params": torch.tensor(float(w.numel())),
            "flops": torch.tensor(float(w.numel() * 4)),
        }
        params[name] = w.numel()
    return NetworkStats(layers, params, {k: 4 * v for k, v in params.items()})


def _truth(stats: NetworkStats, noise: float, rng: np.random.Generator) -> float:
    sens = sum(float(t["hessian_diag"].mean() * t["quant_error"].square().sum()) for t in stats.layers.values())
    return -np.log(sens + 1e-6) + noise * rng.standard_normal()


class SyntheticNetworks:
    """`n` networks (shared weights, random per-layer bits) whose statistics exist on any batch seed."""

    def __init__(self, n: int, seed: int = 0, noise: float = 0.3) -> None:
        g = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.weights = {name: torch.randn(shape, generator=g) for name, shape in LAYERS}
        self.configs = [{name: int(rng.choice(BITS)) for name, _ in LAYERS} for _ in range(n)]
        truth_rng = np.random.default_rng(seed + 1)
        self.truth = {
            "test_acc": np.array([_truth(self.stats(i, 0), noise, truth_rng) for i in range(n)]),
            "bit_total": np.array([sum(c.values()) for c in self.configs], dtype=np.float64)
            + truth_rng.standard_normal(n),
        }

    def __len__(self) -> int:
        return len(self.configs)

    def stats(self, index: int, batch_seed: int = 0) -> NetworkStats:
        """Return network `index`'s statistics on batch `batch_seed` (same call, same tensors)."""
        batch = torch.Generator().manual_seed((batch_seed + 1) * 100003 + index)
        return _network(self.configs[index], self.weights, batch)


def synthetic_problem(n_search: int = 48, n_heldout: int = 32, probe_size: int = 12, seed: int = 0,
                      noise: float = 0.3) -> SyntheticProblem:
    """Return a synthetic problem: the first `n_search` networks search, the rest are held out."""
    nets = SyntheticNetworks(n_search + n_heldout, seed, noise)
    main = [nets.stats(i, 0) for i in range(len(nets))]
    probe_index = list(range(min(probe_size, n_search)))
    return SyntheticProblem(
        search=main[:n_search], probe_other=[nets.stats(i, 1) for i in probe_index], probe_index=probe_index,
        truth={k: v[:n_search] for k, v in nets.truth.items()},
        heldout=main[n_search:], heldout_truth={k: v[n_search:] for k, v in nets.truth.items()},
    )
