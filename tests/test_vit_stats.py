"""Specification of the transformer statistics and the transformer baselines (DSS, attention entropy)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emq.baselines import BaselineContext, applicable_baselines, get_baseline
from emq.bench.base import Batch, Candidate
from emq.models.autoformer import Attention, attention_maps, autoformer, count_params, set_keep_attn
from emq.models.pit import pit
from emq.paths import results_dir
from emq.proxy import MissingStatError, Proxy
from emq.stats import BASE_STATS, TRANSFORMER_STATS
from emq.stats.compute import compute_stats
from emq.stats.config import StatsConfig
from emq.stats.compute import applicable_stats, prepare_network
from emq.evaluate import proxy_scores as fast_scores

ALL = ("weight", "grad", "act", "virtual_grad", "params") + TRANSFORMER_STATS
ARCH = {"hidden_dim": 32, "depth": 2, "mlp_ratio": [2.0, 3.0], "num_heads": [2, 4]}


@pytest.fixture(autouse=True)
def grad_mode_on():
    """Reference computations below need autograd, whatever global grad mode earlier tests left behind."""
    with torch.enable_grad():
        yield


def tiny_vit(seed: int = 0, arch: dict | None = None) -> nn.Module:
    return autoformer(arch or ARCH, init_seed=seed, img_size=16, patch_size=4, in_chans=1, num_classes=10)


def tiny_pit() -> nn.Module:
    # 32x32 input, patch 8 stride 4: a 7x7 token map, pooled to 4x4, then 2x2.
    return pit({"base_dim": 8, "mlp_ratio": 2, "depth": [1, 1, 1], "num_heads": [2, 4, 4]},
               img_size=32, patch_size=8, stride=4, in_chans=1, num_classes=10)


def batch(size: int = 4, pixels: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(size, 1, pixels, pixels, generator=g), torch.arange(size) % 10, "random", seed)


# ----------------------------------------------------------------------------- statistics


def test_attention_rows_sum_to_one_and_are_keyed_by_the_attention_module():
    stats = compute_stats(tiny_vit(), batch(), None, ["attn"], store_dtype=torch.float32)
    assert [n for n in stats.layers if "attn" in stats.layers[n]] == ["blocks.0.attn", "blocks.1.attn"]
    attn = stats.layers["blocks.1.attn"]["attn"]
    assert attn.shape == (4, 4, 17, 17)  # batch x heads x tokens x tokens (16 patches + cls)
    assert torch.allclose(attn.sum(-1), torch.ones(4, 4, 17), atol=1e-5)
    assert (attn >= 0).all()


def test_transformer_statistics_have_their_documented_shapes_and_entries():
    stats = compute_stats(tiny_vit(), batch(), None, ALL, store_dtype=torch.float32)
    layers = stats.layers
    assert layers["blocks.0.attn"].keys() == {"attn", "attn_grad", "head_out"}
    assert layers["blocks.0.attn"]["head_out"].shape == (4, 2, 17, 16)  # batch x heads x tokens x head_dim
    assert layers["blocks.1.attn"]["head_out"].shape == (4, 4, 17, 8)
    # mlp_hidden sits beside the first MLP layer's own statistics: GELU of its output
    fc1 = layers["blocks.1.mlp.fc1"]
    assert fc1["mlp_hidden"].shape == (4, 17, 96) == fc1["act"].shape
    assert torch.allclose(fc1["mlp_hidden"], F.gelu(fc1["act"]), atol=1e-6)
    assert "mlp_hidden" not in layers["blocks.1.mlp.fc2"]
    ln = [n for n in layers if "ln_out" in layers[n]]
    assert ln == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"]
    out = layers["blocks.0.norm1"]["ln_out"]
    assert out.shape == (4, 17, 32)
    assert torch.allclose(out.mean(-1), torch.zeros(4, 17), atol=1e-5)  # LayerNorm (1, 0) at initialisation


def test_entries_run_in_forward_order_with_their_sizes():
    stats = compute_stats(tiny_vit(), batch(), None, ("weight", "attn", "ln_out"), store_dtype=torch.float32)
    names = list(stats.layers)
    assert names[:6] == ["patch_embed.proj", "blocks.0.norm1", "blocks.0.attn.qkv", "blocks.0.attn",
                         "blocks.0.attn.proj", "blocks.0.norm2"]
    assert stats.params["blocks.0.attn"] == 32 * 96 + 32 * 32  # qkv and proj weights
    assert stats.params["blocks.0.norm1"] == 32
    assert stats.flops["blocks.0.attn"] == 2 * 17 * 17 * 32  # q @ k^T and attn @ v
    assert stats.available() >= {"weight", "attn", "ln_out"} and stats.common() == set()


def test_attn_grad_is_the_loss_gradient_at_the_softmax_output():
    model, b = tiny_vit(), batch()
    stats = compute_stats(model, b, None, ["attn_grad"], store_dtype=torch.float32)
    assert all("attn" not in t for t in stats.layers.values())  # only what was asked for is stored
    ref = copy.deepcopy(model)
    set_keep_attn(ref)
    loss = F.cross_entropy(ref(b.inputs), b.labels)
    maps = attention_maps(ref)
    grads = torch.autograd.grad(loss, [maps["blocks.0.attn"], maps["blocks.1.attn"]])
    assert torch.allclose(stats.layers["blocks.0.attn"]["attn_grad"], grads[0], atol=1e-7)
    assert torch.allclose(stats.layers["blocks.1.attn"]["attn_grad"], grads[1], atol=1e-7)
    assert grads[1].abs().sum() > 0


def test_hook_points_change_neither_outputs_nor_parameters():
    model, x = tiny_vit(), batch().inputs
    before = model(x)
    compute_stats(model, batch(), None, ALL)
    assert torch.equal(model(x), before)  # the caller's model is untouched
    attn = model.blocks[0].attn
    assert isinstance(attn, Attention) and not list(attn.probs.parameters()) and not list(attn.heads.parameters())
    assert all(".probs" not in k and ".heads" not in k for k in model.state_dict())


def test_pit_gets_transformer_statistics_per_stage_with_pooled_token_counts():
    stats = compute_stats(tiny_pit(), batch(2, 32), None, ["attn", "head_out", "mlp_hidden", "ln_out"],
                          store_dtype=torch.float32)
    attn = {n: t["attn"].shape for n, t in stats.layers.items() if "attn" in t}
    assert attn == {"stages.0.blocks.0.attn": (2, 2, 50, 50), "stages.1.blocks.0.attn": (2, 4, 17, 17),
                    "stages.2.blocks.0.attn": (2, 4, 5, 5)}
    assert stats.layers["stages.1.blocks.0.mlp.fc1"]["mlp_hidden"].shape == (2, 17, 64)
    assert stats.layers["norm"]["ln_out"].shape == (2, 1, 32)  # PiT's final norm sees the cls token only


def test_cnn_networks_and_benchmarks_do_not_offer_transformer_statistics():
    assert not set(TRANSFORMER_STATS) & set(applicable_stats(False, "mq"))
    assert not set(TRANSFORMER_STATS) & set(applicable_stats(True, "mq"))
    assert set(applicable_stats(False, "vit")) == set(BASE_STATS) | set(TRANSFORMER_STATS)
    assert StatsConfig().stats_for(Candidate("c", {"fc": 4}), "mq") == applicable_stats(True, "mq")
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 14 * 14, 10))
    stats = compute_stats(cnn, batch(), None, BASE_STATS)
    assert not stats.available() & set(TRANSFORMER_STATS)
    with pytest.raises(ValueError, match="only for transformers"):
        compute_stats(cnn, batch(), None, ["weight", "attn"])


def test_a_program_using_attn_aggregates_over_the_attention_modules_only():
    stats = compute_stats(tiny_vit(), batch(), None, ALL, store_dtype=torch.float32)
    assert Proxy.from_formula("sum_layers(numel(attn))").evaluate(stats) == 4 * 2 * 17 * 17 + 4 * 4 * 17 * 17
    layer_only = compute_stats(tiny_vit(), batch(), None, ("weight", "params"), store_dtype=torch.float32)
    for formula in ("sum_layers(numel(weight))", "wmean_layers(l2(weight))", "mean_layers(mean(params))"):
        assert Proxy.from_formula(formula).evaluate(stats) == pytest.approx(
            Proxy.from_formula(formula).evaluate(layer_only), rel=1e-6)
    with pytest.raises(MissingStatError):  # attn and weight never share an entry
        Proxy.from_formula("sum_layers(l2(mul(attn, weight)))").evaluate(stats)


def test_stacked_evaluation_agrees_on_transformer_entries():
    stats = [compute_stats(tiny_vit(seed), batch(), None, ALL) for seed in (0, 1, 2)]
    for formula in ("mean_layers(std(attn))", "wmean_layers(l2(mul(attn_grad, attn)))",
                    "sum_layers(mean(abs(sub(mlp_hidden, act))))", "max_layers(var(ln_out))",
                    "sum_layers(l2(mul(weight, grad)))"):
        proxy = Proxy.from_formula(formula)
        scores, failures = fast_scores(proxy, stats)
        assert not failures
        np.testing.assert_allclose(scores, proxy.evaluate_many(stats), rtol=1e-5)


# ----------------------------------------------------------------------------- baselines


def _prepared(model: nn.Module) -> nn.Module:
    return prepare_network(model, None, act_bits=None)


def test_vit_baselines_include_the_classic_and_the_transformer_ones():
    assert {"params", "flops", "synflow", "snip", "grasp", "fisher", "jacov", "nwot", "grad_norm",
            "dss", "attn_entropy"} <= set(applicable_baselines("vit"))
    assert not {"dss", "attn_entropy"} & set(applicable_baselines("mq"))


def test_attention_entropy_program_equals_the_mean_row_entropy():
    model, b = tiny_vit(), batch()
    stats = compute_stats(model, b, None, ["attn"], store_dtype=torch.float32)
    score = get_baseline("attn_entropy").proxy().evaluate(stats, dtype=torch.float64)
    ref = copy.deepcopy(model)
    set_keep_attn(ref)
    with torch.no_grad():
        ref(b.inputs)
    per_module = [float(-(p * p.log()).sum(-1).mean()) for p in attention_maps(ref).values()]
    assert score == pytest.approx(sum(per_module) / len(per_module), rel=1e-6)
    assert 0 < score <= math.log(17) + 1e-6


def _dss_reference(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """TF-TAS's released recipe: |params|, all-ones input, sum(out).backward(), then per layer."""
    net = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net(torch.ones((1, *input_shape), dtype=torch.float64)).sum().backward()
    total = 0.0
    for name, m in net.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        w, g = m.weight.detach(), m.weight.grad
        if name.endswith("attn.qkv") or name.endswith("attn.proj"):
            total += float(torch.linalg.matrix_norm(w, "nuc") * torch.linalg.matrix_norm(g, "nuc"))
        else:
            total += float((w * g).abs().sum())
    return total


@pytest.mark.parametrize("arch", [ARCH, {"hidden_dim": 32, "depth": 1, "mlp_ratio": [1.0], "num_heads": [4]}],
                         ids=["mlp-ratio-2-3", "square-mlp"])
def test_dss_equals_its_direct_definition(arch):
    model, b = tiny_vit(0, arch), batch()
    ctx = BaselineContext(device=torch.device("cpu"), seed=0, act_bits=None)
    score = get_baseline("dss").fn(_prepared(model), b, None, ctx)
    assert score == pytest.approx(_dss_reference(model, tuple(b.inputs.shape[1:])), rel=1e-9)
    assert score > 0


def test_dss_grows_with_width_as_a_size_aware_proxy_should():
    ctx = BaselineContext(device=torch.device("cpu"), seed=0, act_bits=None)
    small = tiny_vit(0, {"hidden_dim": 32, "depth": 2, "mlp_ratio": [2.0, 2.0], "num_heads": [2, 2]})
    large = tiny_vit(0, {"hidden_dim": 64, "depth": 2, "mlp_ratio": [2.0, 2.0], "num_heads": [2, 2]})
    assert count_params(large) > count_params(small)
    dss = get_baseline("dss").fn
    assert dss(_prepared(large), batch(), None, ctx) > dss(_prepared(small), batch(), None, ctx)


# ----------------------------------------------------------------------------- command line

needs_vit_digits = pytest.mark.skipif(
    not (results_dir() / "vit-digits" / "ground_truth.json").exists(),
    reason="results/vit-digits is not built (run: emq bench build vit-digits)",
)


@needs_vit_digits
def test_score_vit_digits_with_every_baseline_end_to_end(run, tmp_path):
    out = tmp_path / "table.md"
    result = run("score", "vit-digits", "--baselines", "--limit", "6", "--bootstrap", "20", "--batch-size", "8",
                 "--stats", "weight,attn", "--out", str(out))
    assert result.exit_code == 0, result.output
    for name in [n for n in applicable_baselines("vit") if not get_baseline(n).needs_teacher]:  # vit-digits: no teacher
        kind = "baseline (trivial)" if name in ("params", "flops") else "baseline"
        assert f"| {name} | {kind} | test_acc |" in result.output
        assert f"| {name} | {kind} | test_acc_low_data |" in result.output
    assert "| arch:hidden_dim | baseline (trivial) | test_acc |" in result.output
    assert "dss" in out.read_text(encoding="utf-8")


def test_stats_option_rejects_unknown_statistics_in_one_line(run):
    result = run("stats", "vit-digits", "--stats", "weight,atn")
    assert result.exit_code != 0
    assert "unknown statistic(s) 'atn'" in result.output and "attn" in result.output
    assert "Traceback" not in result.output


def test_stats_list_documents_the_transformer_statistics(run):
    result = run("stats", "--list")
    for name in TRANSFORMER_STATS:
        assert any(line.startswith(name + " ") and "(ViT)" in line for line in result.output.splitlines()), name
