"""Specification of statistics computation (`compute_stats`) and of the on-disk statistics cache."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import emq.stats.cache as stats_cache
from emq.bench.base import Batch, Benchmark, Candidate
from emq.quant.fake_quant import quantize_weight, quantized_model
from emq.stats import BASE_STATS, BIT_STATS
from emq.stats.compute import compute_stats
from emq.stats.cache import cache_folder, config_key, load_or_compute, stats_nbytes
from emq.stats.config import StatsConfig

ALL = BASE_STATS + BIT_STATS
LAYERS = ("conv1", "conv2", "fc")


class TinyNet(nn.Module):
    """conv -> BN -> in-place ReLU -> strided conv -> ReLU -> linear, on (n, 2, 6, 6) inputs."""

    def __init__(self, seed: int = 0, batchnorm: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(36, 3)
        if batchnorm:  # non-trivial running statistics, so eval vs train mode differ
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def tiny_batch(seed: int = 0, size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(size, 2, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g), "random", seed)


BITS = {"conv1": 4, "conv2": 3, "fc": 8}


@pytest.fixture(autouse=True)
def grad_mode_on():
    """Reference computations below need autograd, whatever global grad mode earlier tests left behind."""
    with torch.enable_grad():
        yield


class TinyBench(Benchmark):
    """A mixed-precision benchmark over TinyNet that counts how often it builds a model."""

    name = "tiny-mq"
    family = "mq"
    act_bits = 8

    def __init__(self, n: int = 4) -> None:
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


# ------------------------------------------------------------ compute_stats
def test_every_layer_gets_each_statistic_with_its_shape():
    model = TinyNet().eval()
    stats = compute_stats(model, tiny_batch(), BITS, ALL)
    assert stats.layer_names() == list(LAYERS)
    act_shapes = {"conv1": (8, 4, 6, 6), "conv2": (8, 4, 3, 3), "fc": (8, 3)}
    for name in LAYERS:
        s = stats.layers[name]
        w = dict(model.named_modules())[name].weight
        assert set(s) == set(ALL)
        for stat in ("weight", "grad", "hessian_diag", "virtual_grad", "bits", "quant_weight", "quant_error"):
            assert s[stat].shape == w.shape, stat
        assert s["act"].shape == act_shapes[name] == s["act_grad"].shape
        assert s["params"].shape == () and float(s["params"]) == w.numel() == stats.params[name]
        assert torch.all(s["bits"] == BITS[name])
        for t in s.values():
            assert t.device.type == "cpu" and not t.requires_grad and bool(torch.isfinite(t).all())


def test_flops_are_macs_per_single_input():
    stats = compute_stats(TinyNet().eval(), tiny_batch(), None, ["flops"])
    assert stats.flops == {"conv1": 6 * 6 * 4 * 2 * 9, "conv2": 3 * 3 * 4 * 4 * 9, "fc": 36 * 3}
    assert {n: float(s["flops"]) for n, s in stats.layers.items()} == {n: float(v) for n, v in stats.flops.items()}


class TokenMLP(nn.Sequential):
    """Linear layers over (n, tokens, features) inputs, logits averaged over tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).mean(1)


def test_linear_flops_count_every_token_of_a_3d_input():
    model = TokenMLP(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    batch = Batch(torch.randn(3, 4, 5), torch.zeros(3, dtype=torch.long), "random", 0)
    stats = compute_stats(model, batch, None, ["params"])
    assert stats.flops == {"0": 4 * 5 * 7, "2": 4 * 7 * 2}


def test_callers_model_is_unchanged():
    model = TinyNet().train()
    for p in model.fc.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_stats(model, tiny_batch(), BITS, ALL, hessian_samples=3)
    compute_stats(model, tiny_batch(), None, BASE_STATS)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.relu.inplace
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bits_are_keyed_by_layer_name_and_must_cover_every_layer():
    model = TinyNet().eval()
    with pytest.raises(ValueError, match="missing layers.*fc"):
        compute_stats(model, tiny_batch(), {"conv1": 4, "conv2": 4}, ["weight"])
    with pytest.raises(ValueError, match="unknown layers.*'head'"):
        compute_stats(model, tiny_batch(), {**BITS, "head": 4}, ["weight"])
    with pytest.raises(ValueError, match="need a bit assignment"):
        compute_stats(model, tiny_batch(), None, ["quant_error"])


def test_unknown_statistic_is_rejected_listing_the_catalogue():
    with pytest.raises(KeyError, match="known statistics"):
        compute_stats(TinyNet().eval(), tiny_batch(), None, ["weigth"])


def test_only_requested_statistics_are_computed_without_backward(monkeypatch):
    def no_backward(*args, **kwargs):
        raise AssertionError("a backward pass ran although no gradient statistic was asked for")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    stats = compute_stats(TinyNet().eval(), tiny_batch(), BITS, ["weight", "act", "bits", "flops"])
    assert all(set(s) == {"weight", "act", "bits", "flops"} for s in stats.layers.values())


def test_grad_and_act_match_direct_autograd_in_eval_mode():
    model = TinyNet().eval()
    batch = tiny_batch()
    stats = compute_stats(model, batch, None, ["grad", "act", "act_grad"])
    ref = copy.deepcopy(model).eval()
    ref.relu.inplace = False
    conv1_out = ref.conv1(batch.inputs)
    conv1_out.retain_grad()
    x = ref.relu(ref.bn(conv1_out))
    logits = ref.fc(torch.flatten(F.relu(ref.conv2(x)), 1))
    F.cross_entropy(logits, batch.labels).backward()
    for name in LAYERS:
        torch.testing.assert_close(stats.layers[name]["grad"], getattr(ref, name).weight.grad)
    # the recorded output is the conv's own output, not the in-place ReLU that follows it
    torch.testing.assert_close(stats.layers["conv1"]["act"], conv1_out.detach())
    assert bool((stats.layers["conv1"]["act"] < 0).any())
    torch.testing.assert_close(stats.layers["conv1"]["act_grad"], conv1_out.grad)
    torch.testing.assert_close(stats.layers["fc"]["act"], logits.detach())


def test_grad_of_quantized_network_is_straight_through():
    model = TinyNet().eval()
    batch = tiny_batch()
    stats = compute_stats(model, batch, BITS, ["grad", "weight", "quant_weight", "quant_error"], act_bits=None)
    qnet = quantized_model(model, BITS, act_bits=None)
    F.cross_entropy(qnet(batch.inputs), batch.labels).backward()
    for name in LAYERS:
        layer = getattr(qnet, name)
        s = stats.layers[name]
        torch.testing.assert_close(s["grad"], layer.weight.grad)
        torch.testing.assert_close(s["weight"], getattr(model, name).weight.detach())
        torch.testing.assert_close(s["quant_weight"], quantize_weight(getattr(model, name).weight, BITS[name]))
        torch.testing.assert_close(s["quant_error"], s["quant_weight"] - s["weight"])


def test_activation_quantizers_are_calibrated_on_the_calibration_inputs():
    model = TinyNet().eval()
    batch = tiny_batch()
    calib = tiny_batch(5, 32).inputs * 3
    a = compute_stats(model, batch, BITS, ["act"], act_bits=4, calib_inputs=calib)
    b = compute_stats(model, batch, BITS, ["act"], act_bits=4)
    c = compute_stats(model, batch, BITS, ["act"], act_bits=4, calib_inputs=calib)
    assert not torch.equal(a.layers["conv2"]["act"], b.layers["conv2"]["act"])
    assert torch.equal(a.layers["conv2"]["act"], c.layers["conv2"]["act"])


def test_hessian_diag_matches_exact_diagonal_of_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    batch = Batch(torch.randn(32, 4), torch.randint(0, 3, (32,)), "random", 0)
    weight = model[0].weight.detach().clone()

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(batch.inputs, w, model[0].bias.detach()), batch.labels)

    exact = torch.autograd.functional.hessian(loss_of, weight).reshape(12, 12).diagonal().reshape(3, 4)
    stats = compute_stats(model, batch, None, ["hessian_diag"], hessian_samples=4000, seed=1)
    est = stats.layers["0"]["hessian_diag"]
    torch.testing.assert_close(est, exact, rtol=0.0, atol=0.05 * float(exact.abs().max()))


def test_statistics_do_not_depend_on_the_global_grad_mode():
    model = TinyNet().eval()
    ref = compute_stats(model, tiny_batch(), BITS, ALL)
    with torch.no_grad():
        got = compute_stats(model, tiny_batch(), BITS, ALL)
    for name in LAYERS:
        for stat, t in ref.layers[name].items():
            assert torch.equal(got.layers[name][stat], t), (name, stat)


def test_hessian_diag_is_reproducible_for_a_seed():
    model = TinyNet().eval()
    a = compute_stats(model, tiny_batch(), None, ["hessian_diag"], seed=3)
    b = compute_stats(model, tiny_batch(), None, ["hessian_diag"], seed=3)
    c = compute_stats(model, tiny_batch(), None, ["hessian_diag"], seed=4)
    assert all(torch.equal(a.layers[n]["hessian_diag"], b.layers[n]["hessian_diag"]) for n in LAYERS)
    assert not torch.equal(a.layers["fc"]["hessian_diag"], c.layers["fc"]["hessian_diag"])


def test_virtual_grad_is_synflow_gradient_of_the_abs_network():
    model = TinyNet(batchnorm=False).eval()
    stats = compute_stats(model, tiny_batch(), None, ["virtual_grad"])
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.abs_()
    ref(torch.ones(1, 2, 6, 6, dtype=torch.float64)).sum().backward()
    for name in LAYERS:
        torch.testing.assert_close(stats.layers[name]["virtual_grad"], getattr(ref, name).weight.grad.float())


def test_virtual_grad_bypasses_batchnorm():
    with_bn = TinyNet(batchnorm=True).eval()
    without = TinyNet(batchnorm=False).eval()
    without.load_state_dict({k: v for k, v in with_bn.state_dict().items() if not k.startswith("bn.")})
    a = compute_stats(with_bn, tiny_batch(), None, ["virtual_grad"])
    b = compute_stats(without, tiny_batch(), None, ["virtual_grad"])
    assert all(torch.equal(a.layers[n]["virtual_grad"], b.layers[n]["virtual_grad"]) for n in LAYERS)


def test_float16_storage_never_turns_values_into_inf_or_zero():
    model = TinyNet(batchnorm=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(300.0)  # SynFlow gradients far beyond float16's 65504
    stats = compute_stats(model, tiny_batch(), BITS, ALL, store_dtype=torch.float16)
    ref = compute_stats(model, tiny_batch(), BITS, ALL, store_dtype=torch.float32)
    for name in LAYERS:
        for stat, t in stats.layers[name].items():
            assert t.dtype in (torch.float16, torch.bfloat16, torch.float32), stat
            assert t.element_size() <= 2 or stat in ("params", "flops"), stat
            assert bool(torch.isfinite(t).all()), (name, stat)
            exact = ref.layers[name][stat]
            assert bool(((t != 0) | (exact == 0)).all()), (name, stat)
            torch.testing.assert_close(t.float(), exact, rtol=1e-2, atol=0.0)
    assert stats.layers["conv1"]["virtual_grad"].dtype == torch.bfloat16


def test_bits_statistic_is_one_stored_value_that_survives_save_and_load(tmp_path):
    stats = compute_stats(TinyNet().eval(), tiny_batch(), BITS, ["bits"], store_dtype=torch.float16)
    t = stats.layers["fc"]["bits"]
    assert t.untyped_storage().nbytes() == 2
    torch.save({"bits": t}, tmp_path / "b.pt")
    back = torch.load(tmp_path / "b.pt", weights_only=True)["bits"]
    assert back.shape == (3, 36) and torch.all(back == 8) and back.untyped_storage().nbytes() == 2
    assert torch.equal(back.to(torch.float32), torch.full((3, 36), 8.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_statistics_match_cpu():
    model = TinyNet().eval()
    cpu = compute_stats(model, tiny_batch(), BITS, ALL)
    gpu = compute_stats(model, tiny_batch(), BITS, ALL, device="cuda")
    for name in LAYERS:
        for stat, t in cpu.layers[name].items():
            assert gpu.layers[name][stat].device.type == "cpu"
            torch.testing.assert_close(gpu.layers[name][stat], t, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------- cache
def test_second_call_computes_nothing(tmp_path, monkeypatch):
    bench = TinyBench()
    calls = []
    real = stats_cache.compute_stats
    monkeypatch.setattr(stats_cache, "compute_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = StatsConfig(batch_size=8, store_dtype="float32")
    first = load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    assert len(calls) == 4 and bench.builds == 4
    second = load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    assert len(calls) == 4 and bench.builds == 4
    for a, b in zip(first, second):
        assert a.layer_names() == b.layer_names() and a.params == b.params and a.flops == b.flops
        for name in a.layers:
            assert a.layers[name].keys() == b.layers[name].keys()
            assert all(torch.equal(a.layers[name][k], b.layers[name][k]) for k in a.layers[name])


def test_cache_files_are_per_candidate_with_a_manifest(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8)
    load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    folder = cache_folder(bench, config, tmp_path)
    assert folder.parent == tmp_path / "tiny-mq"
    assert sorted(p.name for p in folder.glob("*.pt")) == [f"cfg-{i}.pt" for i in range(4)]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["batch"] == tiny_batch(0, 8).describe()
    assert manifest["config"]["batch_size"] == 8 and manifest["code_version"] == stats_cache.CODE_VERSION
    data = torch.load(folder / "cfg-0.pt", weights_only=True)
    assert set(data["layers"]["fc"]) == set(ALL)


def test_corrupt_cache_file_is_recomputed_with_a_warning(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8, store_dtype="float32")
    first = load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    path = cache_folder(bench, config, tmp_path) / "cfg-2.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="cfg-2.pt is unreadable"):
        again = load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    assert bench.builds == 5
    assert torch.equal(again[2].layers["fc"]["grad"], first[2].layers["fc"]["grad"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)


def test_cache_key_depends_on_config_and_code_version(monkeypatch):
    base = config_key("b", StatsConfig())
    assert config_key("b", StatsConfig(device="cpu")) == base  # the device is not part of the key
    for other in (StatsConfig(batch_seed=1), StatsConfig(batch_size=8), StatsConfig(stat_names=("weight",)),
                  StatsConfig(store_dtype="float32"), StatsConfig(hessian_samples=3), StatsConfig(init_seed=2)):
        assert config_key("b", other) != base
    assert config_key("c", StatsConfig()) != base
    key = stats_cache.cache_key
    assert key("b", Candidate("x"), StatsConfig()) != key("b", Candidate("y"), StatsConfig())
    # the same id for another network (another file reusing ids) is another key
    assert key("b", Candidate("x", bits={"fc": 4}), StatsConfig()) != key("b", Candidate("x", bits={"fc": 8}), StatsConfig())
    assert key("b", Candidate("x", arch={"d": 1}), StatsConfig()) != key("b", Candidate("x", arch={"d": 2}), StatsConfig())
    monkeypatch.setattr(stats_cache, "CODE_VERSION", stats_cache.CODE_VERSION + 1)
    assert config_key("b", StatsConfig()) != base


def test_config_rejects_unknown_statistics_and_dtypes():
    with pytest.raises(KeyError, match="known statistics"):
        StatsConfig(stat_names=("wieght",))
    with pytest.raises(ValueError, match="store_dtype"):
        StatsConfig(store_dtype="int8")


def test_shared_full_precision_weights_are_held_once(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8, stat_names=("weight", "grad"))
    stats = load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    assert stats[0].layers["fc"]["weight"] is stats[3].layers["fc"]["weight"]
    one = stats_nbytes(stats[0])
    assert stats_nbytes(stats) < 4 * one


def test_rebuilt_trained_weights_get_a_new_cache_folder(tmp_path):
    bench = TinyBench()
    bench.trained_weights = True
    before = cache_folder(bench, StatsConfig(), tmp_path)
    assert cache_folder(bench, StatsConfig(), tmp_path) == before
    with torch.no_grad():
        bench._model.fc.weight.add_(1.0)
    assert cache_folder(bench, StatsConfig(), tmp_path) != before
    bench.cache_token = "weights-v2"
    assert cache_folder(bench, StatsConfig(), tmp_path) != before


def test_iter_stats_yields_one_candidate_at_a_time_from_the_same_cache(tmp_path):
    bench = TinyBench()
    config = StatsConfig(batch_size=8, stat_names=("weight", "grad"), store_dtype="float32")
    stream = stats_cache.iter_stats(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    first = next(stream)
    assert bench.builds == 1  # lazily: nothing computed beyond the candidate yielded
    rest = list(stream)
    assert bench.builds == 4
    loaded = load_or_compute(bench, bench.candidates(), config, progress=False, cache_root=tmp_path)
    assert bench.builds == 4  # the stream filled the cache load_or_compute reads
    for a, b in zip([first] + rest, loaded):
        assert all(torch.equal(a.layers[n][k], b.layers[n][k]) for n in a.layers for k in a.layers[n])


def test_the_same_statistics_named_in_another_order_share_one_cache_key():
    from emq.stats.cache import config_key
    from emq.stats.config import StatsConfig

    a = StatsConfig(stat_names=("flops", "grad", "weight"))
    b = StatsConfig(stat_names=("weight", "grad", "flops", "grad"))
    assert a.stat_names == b.stat_names == ("weight", "grad", "flops")
    assert config_key("x", a) == config_key("x", b)


def test_stats_config_json_round_trip_and_named_field_errors():
    from emq.stats.config import StatsConfig

    config = StatsConfig(batch_seed=3, batch_size=8, stat_names=("grad", "weight"), store_dtype="float32")
    assert StatsConfig.from_json(config.to_json()) == config
    assert StatsConfig.from_json(StatsConfig().to_json()) == StatsConfig()
    with pytest.raises(ValueError, match="'batch_sise'"):
        StatsConfig.from_json({"batch_sise": 8})
    with pytest.raises(ValueError, match="'batch_size'"):
        StatsConfig.from_json({"batch_size": "8"})
    with pytest.raises(ValueError, match="'stat_names'"):
        StatsConfig.from_json({"stat_names": ["no_such_stat"]})


class TinyArchBench(TinyBench):
    """TinyNet without bits (an architecture benchmark): networks differ by init seed."""

    name = "tiny-arch"
    family = "nas"

    def candidates(self) -> list[Candidate]:
        return [Candidate(f"net-{i}", arch={"seed": i}) for i in range(self.n)]

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        self.builds += 1
        return TinyNet(int(candidate.arch["seed"])).eval()


MAIN = ("weight", "grad", "virtual_grad", "params", "flops")
STRUCTURED = ("act_codes_kernel", "act_channel_corr", "act_channel_cov", "grad_batch_mean", "grad_batch_std")


def test_structured_statistics_added_to_a_cached_set_equal_computing_all_together(tmp_path, monkeypatch):
    bench = TinyArchBench()
    full = StatsConfig(batch_size=8, stat_names=MAIN + STRUCTURED)
    joint = load_or_compute(bench, bench.candidates(), full, progress=False, cache_root=tmp_path / "joint")
    load_or_compute(bench, bench.candidates(), StatsConfig(batch_size=8, stat_names=MAIN), progress=False,
                    cache_root=tmp_path / "parts")
    asked = []
    real = stats_cache.compute_stats
    monkeypatch.setattr(stats_cache, "compute_stats", lambda *a, **k: asked.append(tuple(a[3])) or real(*a, **k))
    parts = load_or_compute(bench, bench.candidates(), full, progress=False, cache_root=tmp_path / "parts")
    assert asked == [tuple(n for n in full.stat_names if n in STRUCTURED)] * bench.n  # only what the donor lacks
    for a, b in zip(joint, parts):
        assert list(a.layers) == list(b.layers) and "relu" in a.layers  # activation entries, in forward order
        assert list(a.params.items()) == list(b.params.items()) and a.flops == b.flops
        for name in a.layers:
            assert list(a.layers[name]) == list(b.layers[name])
            assert all(a.layers[name][k].dtype == b.layers[name][k].dtype
                       and torch.equal(a.layers[name][k], b.layers[name][k]) for k in a.layers[name])


def test_a_donor_of_another_batch_or_a_damaged_donor_file_is_not_used(tmp_path, monkeypatch):
    bench = TinyArchBench(n=2)
    load_or_compute(bench, bench.candidates(), StatsConfig(batch_size=8, batch_seed=1, stat_names=MAIN),
                    progress=False, cache_root=tmp_path)
    donor_config = StatsConfig(batch_size=8, stat_names=MAIN)
    load_or_compute(bench, bench.candidates(), donor_config, progress=False, cache_root=tmp_path)
    (cache_folder(bench, donor_config, tmp_path) / "net-0.pt").write_bytes(b"damaged")
    asked = []
    real = stats_cache.compute_stats
    monkeypatch.setattr(stats_cache, "compute_stats", lambda *a, **k: asked.append(len(a[3])) or real(*a, **k))
    with pytest.warns(UserWarning, match="net-0.pt is unreadable"):
        load_or_compute(bench, bench.candidates(), StatsConfig(batch_size=8, stat_names=MAIN + STRUCTURED),
                        progress=False, cache_root=tmp_path)
    assert asked == [len(MAIN + STRUCTURED), len(STRUCTURED)]  # net-0 whole; net-1 from batch 0's donor, not batch 1's
