"""Shared fixtures: tiny synthetic statistics so unit tests need no benchmark."""
from __future__ import annotations

import pytest
import torch

from emq.stats import NetworkStats


def make_stats(seed: int = 0, layers: tuple[tuple[str, tuple[int, ...]], ...] = (("conv", (4, 3, 3, 3)), ("fc", (10, 4)))) -> NetworkStats:
    """Return random statistics for a two-layer network (weight, grad, act, bits...)."""
    g = torch.Generator().manual_seed(seed)
    data = {}
    params = {}
    for name, shape in layers:
        w = torch.randn(shape, generator=g)
        data[name] = {
            "weight": w,
            "grad": torch.randn(shape, generator=g),
            "act": torch.randn((2, shape[0]), generator=g),
            "act_grad": torch.randn((2, shape[0]), generator=g),
            "bits": torch.full(shape, float(2 + seed % 3)),
            "quant_error": torch.randn(shape, generator=g) * 0.01,
            "params": torch.tensor(float(w.numel())),
        }
        params[name] = w.numel()
    return NetworkStats(data, params, {k: 1 for k in params})


@pytest.fixture
def stats() -> NetworkStats:
    return make_stats(0)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Return `invoke(*args)`: the `emq` CLI run in-process, with its statistics cache in a fresh folder."""
    from click.testing import CliRunner

    from cli import main

    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: many small statistics passes only add contention on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_verdict(differences) -> str:
    """Return the verdict the recorded paired differences imply (median lower end above 0), computed here.

    Tests compare a run's or study's stated verdict with this, so a verdict that ignored
    its numbers (or always said one thing) would fail.
    """
    import numpy as np

    lows = [d["low"] if d else float("nan") for d in differences]
    if not lows or not all(np.isfinite(lows)):
        return "no discovery"
    return "discovery" if float(np.median(lows)) > 0 else "no discovery"


#: Log-row fields that depend on the clock; runs are compared without them.
TIMING = ("seconds", "time", "programs_per_s")


def without_timing(log):
    """Return a run's log rows without the clock-dependent fields (what two equal runs share exactly)."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in log]


def search_synthetic(problem, run_dir, config, **kwargs):
    """Run the search on a `search.synthetic` problem (its probe networks on a second batch), quietly."""
    from search.engine import run_search

    return run_search(problem.search, problem.probe_other, problem.truth, config, run_dir, progress=False,
                      probe_index=problem.probe_index, **kwargs)
