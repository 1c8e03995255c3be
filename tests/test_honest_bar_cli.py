"""The honest bar on the embedded benchmarks: trivial baselines listed and measured, disguised programs flagged."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emq.paths import results_dir


def _needs(name: str) -> None:
    if not (results_dir() / name / "ground_truth.json").exists():
        pytest.skip(f"results/{name} is not built (run: emq bench build {name})")


def test_vit_digits_lists_arch_hyperparameter_baselines_and_width_alone_ranks_like_the_old_winner(run):
    _needs("vit-digits")
    result = run("score", "vit-digits", "--baseline", "arch:hidden_dim", "--baseline", "arch:depth",
                 "--split", "heldout", "--targets", "test_acc", "--bootstrap", "20", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["rows"]}
    assert rows["arch:hidden_dim"]["trivial"] and rows["arch:hidden_dim"]["seconds"] == 0.0
    # The committed vit-digits winner `max_layers(l2(act))` claimed +0.735 held-out: the width alone gives it.
    assert rows["arch:hidden_dim"]["kendall"] == pytest.approx(0.735, abs=0.0015)


def test_old_vit_digits_winner_is_flagged_trivial_equivalent(run):
    _needs("vit-digits")
    result = run("score", "vit-digits", "--formula", "max_layers(l2(act))", "--limit", "48", "--bootstrap", "10",
                 "--stats", "weight,act,params,flops")
    assert result.exit_code == 0, result.output
    assert "trivial_equivalent(arch:hidden_dim)" in result.output


def test_baselines_flag_lists_trivial_and_arch_baselines():
    from emq.baselines import benchmark_baselines, trivial_baselines
    from emq.bench.registry import get_benchmark

    _needs("vit-digits")
    _needs("mq-digits")
    vit = get_benchmark("vit-digits")
    assert {"arch:hidden_dim", "arch:depth", "arch:mlp_ratio_mean", "arch:num_heads_mean"} <= set(trivial_baselines(vit))
    mq = get_benchmark("mq-digits")
    assert {"qloss", "qloss_calib", "bit_sum", "bparams", "bops", "params"} <= set(trivial_baselines(mq))
    assert "hawq_v2" in benchmark_baselines(mq) and "hawq_v2" not in trivial_baselines(mq)


def test_quantized_loss_baselines_and_hawq_v2_on_mq_digits(tmp_path):
    from emq.baselines import baseline_scores, model_baseline_cost, get_baseline
    from emq.bench.registry import get_benchmark
    from emq.stats.config import StatsConfig

    _needs("mq-digits")
    bench = get_benchmark("mq-digits")
    cands = bench.candidates()[:6]
    config = StatsConfig()
    scores = baseline_scores(bench, ["qloss", "qloss_calib", "hawq_v2"], config, candidates=cands, progress=False,
                             cache_root=tmp_path)
    for name, values in scores.items():
        assert values.shape == (6,) and np.all(np.isfinite(values)), name
    assert np.all(scores["qloss"] <= 0) and np.all(scores["hawq_v2"] <= 0)
    assert len(set(np.round(scores["qloss_calib"], 9))) > 1  # the configurations differ in their calibration loss
    assert model_baseline_cost(bench, get_baseline("qloss_calib"), config, tmp_path) > 0


def test_hutchinson_traces_settle_and_match_the_exact_trace_of_a_tiny_network():
    from torch import nn

    from emq.stats.hessian_trace import hessian_traces

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    running = hessian_traces(net, x, y, samples=3000, seed=0)
    # Exact trace of the first layer's Hessian block, by double differentiation.
    w = net[0].weight

    def loss_of(weight):
        h = torch.tanh(x @ weight.T + net[0].bias)
        return torch.nn.functional.cross_entropy(net[2](h), y)

    hess = torch.autograd.functional.hessian(loss_of, w.detach())
    exact = float(hess.reshape(w.numel(), w.numel()).diagonal().sum())
    assert running["0"][-1] == pytest.approx(exact, rel=0.15)  # Hutchinson is unbiased, slow on a tiny net
    assert [p.requires_grad for p in net.parameters()] == [True] * 4  # the model was not touched
