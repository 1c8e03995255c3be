"""Specification of the hand-designed baselines: program formulas equal their direct torch definitions."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import emq.baselines as baselines
import emq.baselines.model as baseline_models
from emq.baselines import (
    BASELINES, BaselineContext, baseline_cache_path, baseline_scores, get_baseline, list_baselines, register_baseline,
)
from emq.bench.base import Batch, Benchmark, Candidate
from emq.stats import BASE_STATS, BIT_STATS
from emq.stats.compute import compute_stats
from emq.stats.config import StatsConfig
from emq.stats.compute import prepare_network

LAYERS = ("conv1", "conv2", "fc")
BITS = {"conv1": 4, "conv2": 3, "fc": 8}


@pytest.fixture(autouse=True)
def grad_mode_on():
    """Reference computations below need autograd, whatever global grad mode earlier tests left behind."""
    with torch.enable_grad():
        yield


class TinyNet(nn.Module):
    """conv -> BN -> ReLU -> strided conv -> ReLU -> linear, on (n, 2, 6, 6) inputs."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def tiny_batch(seed: int = 0, size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(size, 2, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g), "random", seed)


class TinyBench(Benchmark):
    name = "tiny-mq"
    family = "mq"
    act_bits = 8

    def __init__(self, n: int = 5) -> None:
        self.n = n
        self.builds = 0
        self._model = TinyNet(0).eval()

    def candidates(self) -> list[Candidate]:
        widths = [2, 3, 4, 6, 8]
        return [Candidate(f"cfg-{i}", {name: widths[(i + j) % 5] for j, name in enumerate(LAYERS)}) for i in range(self.n)]

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {"acc": np.arange(self.n, dtype=float)}

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        self.builds += 1
        return copy.deepcopy(self._model)

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        return tiny_batch(seed, size)

    def calibration_inputs(self) -> torch.Tensor:
        return tiny_batch(99, 16).inputs


@pytest.fixture(scope="module")
def tiny_stats():
    return compute_stats(TinyNet().eval(), tiny_batch(), BITS, BASE_STATS + BIT_STATS)


def direct(name: str, stats) -> float:
    """The literature's definition of each program baseline, written directly in torch."""
    layers = stats.layers.values()
    total = {
        "params": lambda s: s["weight"].numel(),
        "flops": lambda s: float(s["flops"]),
        "bit_sum": lambda s: float(s["bits"].flatten()[0]),
        "bparams": lambda s: float(s["bits"].sum()),
        "bops": lambda s: float(s["flops"]) * float(s["bits"].flatten()[0]),
        "synflow": lambda s: float((s["weight"] * s["virtual_grad"]).abs().sum()),
        "snip": lambda s: float((s["weight"] * s["grad"]).abs().sum()),
        "grad_norm": lambda s: float(s["grad"].norm()),
        "hawq": lambda s: -float(s["hessian_diag"].mean() * s["quant_error"].pow(2).sum()),
    }[name]
    return float(sum(total(s) for s in layers))


PROGRAMS = ["params", "flops", "bit_sum", "bparams", "bops", "synflow", "snip", "grad_norm", "hawq"]


def test_registry_lists_program_and_model_baselines():
    assert set(PROGRAMS) <= set(BASELINES)
    assert {"nwot", "jacov", "grasp", "fisher"} <= {b.name for b in BASELINES.values() if b.kind == "model"}
    assert all(get_baseline(n).kind == "program" for n in PROGRAMS)
    vit = {b.name for b in list_baselines("vit")}
    assert "bit_sum" not in vit and "hawq" not in vit and "snip" in vit
    with pytest.raises(KeyError, match="valid: .*snip"):
        get_baseline("snipp")
    with pytest.raises(ValueError, match="twice"):
        register_baseline("snip", formula="sum_layers(l2(grad))")


@pytest.mark.parametrize("name", PROGRAMS)
def test_program_baseline_equals_its_direct_definition(name, tiny_stats):
    score = get_baseline(name).proxy().evaluate(tiny_stats)
    assert math.isclose(score, direct(name, tiny_stats), rel_tol=1e-4, abs_tol=1e-9)


def test_snip_is_sum_of_abs_weight_times_grad(tiny_stats):
    expected = sum(float((s["weight"] * s["grad"]).abs().sum()) for s in tiny_stats.layers.values())
    assert get_baseline("snip").proxy().evaluate(tiny_stats) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bits", [None, BITS])
@pytest.mark.parametrize("name", ["nwot", "jacov", "grasp", "fisher"])
def test_model_baselines_are_finite_on_a_tiny_net(name, bits):
    model = TinyNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = tiny_batch(size=12)
    net = prepare_network(model, bits, act_bits=8, fallback_calib=batch.inputs)
    score = get_baseline(name).fn(net, batch, bits, BaselineContext(torch.device("cpu"), 0, 8))
    assert isinstance(score, float) and math.isfinite(score)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["nwot", "jacov", "grasp", "fisher"])
def test_model_baselines_do_not_depend_on_the_global_grad_mode(name):
    batch = tiny_batch()
    ctx = BaselineContext(torch.device("cpu"), 0, 8)
    ref = get_baseline(name).fn(prepare_network(TinyNet().eval(), BITS, fallback_calib=batch.inputs), batch, BITS, ctx)
    with torch.no_grad():
        got = get_baseline(name).fn(prepare_network(TinyNet().eval(), BITS, fallback_calib=batch.inputs), batch, BITS, ctx)
    assert got == ref


def test_nwot_is_log_det_of_the_activation_code_kernel():
    model = TinyNet().eval()
    batch = tiny_batch(size=6)
    net = prepare_network(model, None)
    ref = copy.deepcopy(model)
    ref.relu.inplace = False
    x1 = ref.relu(ref.bn(ref.conv1(batch.inputs)))
    x2 = ref.relu(ref.conv2(x1))
    kernel = torch.zeros(6, 6, dtype=torch.float64)
    for a in (x1, x2):
        c = (a.reshape(6, -1) > 0).double()
        kernel += c @ c.T + (1 - c) @ (1 - c).T
    expected = float(torch.linalg.slogdet(kernel)[1])
    score = baseline_models.nwot(net, batch, None, BaselineContext(torch.device("cpu"), 0, None))
    assert score == pytest.approx(expected)


def test_fisher_matches_per_channel_definition():
    model = TinyNet().eval()
    batch = tiny_batch()
    stats = compute_stats(model, batch, None, ["act", "act_grad"])
    expected = 0.0
    for s in stats.layers.values():
        prod = (s["act"] * s["act_grad"]).double()
        per = prod.sum(dim=(2, 3)) if prod.dim() == 4 else prod
        expected += float(0.5 * per.pow(2).mean(0).sum())
    score = baseline_models.fisher(prepare_network(model, None), batch, None, BaselineContext(torch.device("cpu"), 0, None))
    assert score == pytest.approx(expected, rel=1e-5)


def test_grasp_is_minus_weight_times_hessian_gradient_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    batch = Batch(torch.randn(10, 4), torch.randint(0, 3, (10,)), "random", 0)
    w = model[0].weight.detach().clone()

    def loss_of(weight):
        return F.cross_entropy(F.linear(batch.inputs, weight, model[0].bias.detach()), batch.labels)

    g = torch.autograd.grad(loss_of(w.requires_grad_(True)), w)[0]
    hessian = torch.autograd.functional.hessian(loss_of, w.detach()).reshape(12, 12)
    expected = float(-(w.detach().reshape(-1) * (hessian @ g.reshape(-1))).sum())
    score = baseline_models.grasp(prepare_network(model, None), batch, None, BaselineContext(torch.device("cpu"), 0, None))
    assert score == pytest.approx(expected, rel=1e-4)


def test_baseline_scores_align_with_candidates_and_cache_model_baselines(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8)
    scores = baseline_scores(bench, ["nwot", "fisher"], config, progress=False, cache_root=tmp_path)
    assert list(scores) == ["nwot", "fisher"]
    assert all(v.shape == (5,) and np.all(np.isfinite(v)) for v in scores.values())
    assert bench.builds == 10
    path, _ = baseline_cache_path(bench, get_baseline("nwot"), config, tmp_path)
    assert path.is_file()
    again = baseline_scores(bench, ["fisher", "nwot"], config, progress=False, cache_root=tmp_path)
    assert bench.builds == 10
    assert np.array_equal(again["nwot"], scores["nwot"]) and np.array_equal(again["fisher"], scores["fisher"])
    subset = baseline_scores(bench, ["nwot"], config, progress=False, candidates=bench.candidates()[3:],
                             cache_root=tmp_path)
    assert np.array_equal(subset["nwot"], scores["nwot"][3:]) and bench.builds == 10


def test_model_baseline_cache_is_shared_by_configs_differing_only_in_stat_options(tmp_path):
    bench = TinyBench()
    baseline_scores(bench, ["jacov"], StatsConfig(batch_size=8), progress=False, cache_root=tmp_path)
    baseline_scores(bench, ["jacov"], StatsConfig(batch_size=8, store_dtype="float32", hessian_samples=5),
                    progress=False, cache_root=tmp_path)
    assert bench.builds == 5
    baseline_scores(bench, ["jacov"], StatsConfig(batch_size=8, batch_seed=1), progress=False, cache_root=tmp_path)
    assert bench.builds == 10


def test_corrupt_model_baseline_cache_is_recomputed(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8)
    first = baseline_scores(bench, ["grasp"], config, progress=False, cache_root=tmp_path)
    path, _ = baseline_cache_path(bench, get_baseline("grasp"), config, tmp_path)
    path.write_text("{oops")
    with pytest.warns(UserWarning, match="unreadable"):
        again = baseline_scores(bench, ["grasp"], config, progress=False, cache_root=tmp_path)
    assert np.allclose(again["grasp"], first["grasp"])


def test_program_baselines_score_every_candidate_from_the_stats_cache(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8, stat_names=("weight", "grad"))
    scores = baseline_scores(bench, ["snip", "bit_sum", "params"], config, progress=False, cache_root=tmp_path)
    expected_bits = [sum(c.bits.values()) for c in bench.candidates()]
    assert np.allclose(scores["bit_sum"], expected_bits)
    assert np.ptp(scores["params"]) == 0  # one full-precision network: weight-only baselines are constant
    assert np.all(np.isfinite(scores["snip"])) and np.ptp(scores["snip"]) > 0
    builds = bench.builds
    baseline_scores(bench, ["snip", "bit_sum", "params"], config, progress=False, cache_root=tmp_path)
    assert bench.builds == builds


def test_family_mismatch_is_an_error_naming_applicable_baselines(tmp_path):
    bench = TinyBench()
    bench.family = "vit"
    with pytest.raises(ValueError, match="do not apply.*applicable: .*snip"):
        baseline_scores(bench, ["bit_sum"], StatsConfig(batch_size=8), progress=False, cache_root=tmp_path)


class _TinyCNN(nn.Module):
    """Conv-BN-ReLU twice, global pooling, linear head; `ignore_input` zeroes the input (a degenerate cell)."""

    def __init__(self, ignore_input: bool = False) -> None:
        super().__init__()
        self.ignore_input = ignore_input
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ignore_input:
            x = torch.zeros_like(x)
        return self.head(self.pool(self.body(x)).flatten(1))


def test_zen_score_is_finite_seeded_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = _TinyCNN().eval()
    before = copy.deepcopy(net.state_dict())
    batch = Batch(torch.randn(6, 3, 8, 8), torch.zeros(6, dtype=torch.long), "test", 0)
    ctx = BaselineContext(torch.device("cpu"), 0, None)
    score = get_baseline("zen").fn(net, batch, None, ctx)
    assert math.isfinite(score)
    assert get_baseline("zen").fn(net, batch, None, ctx) == score
    assert not net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    wider = _TinyCNN()
    wider.body[3] = nn.Conv2d(8, 8, 3, padding=1)  # same shape: the score depends on the structure, not the weights
    assert get_baseline("zen").fn(wider, batch, None, ctx) == pytest.approx(score)
    # a network whose output ignores its input has no expressivity: log 0 ranks it last
    assert get_baseline("zen").fn(_TinyCNN(ignore_input=True), batch, None, ctx) == -math.inf


def test_a_baseline_outside_the_callers_statistics_computes_only_what_it_reads(tmp_path):
    from emq.stats.cache import cache_folder

    bench = TinyBench()
    config = StatsConfig(batch_size=8, stat_names=("weight",))
    scores = baseline_scores(bench, ["grad_norm"], config, progress=False, cache_root=tmp_path)
    alone = baseline_scores(bench, ["grad_norm"], StatsConfig(batch_size=8, stat_names=("grad",)), progress=False,
                            cache_root=tmp_path / "alone")
    assert np.array_equal(scores["grad_norm"], alone["grad_norm"])
    # The gradient norm read a folder of the gradient alone, not weight + grad computed under a new cache key.
    assert cache_folder(bench, StatsConfig(batch_size=8, stat_names=("grad",)), tmp_path).is_dir()
    assert not cache_folder(bench, StatsConfig(batch_size=8, stat_names=("weight", "grad")), tmp_path).exists()
