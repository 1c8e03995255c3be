"""Specification of the AutoFormer and PiT subnet builders: shapes, parameter counts, names, attention maps."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from emq.models.autoformer import Attention, autoformer, attention_maps, count_params, set_keep_attn
from emq.models.pit import pit
from emq.paths import REPO_ROOT

GT_AUTOFORMER = REPO_ROOT.parent / "shared" / "benchmarks" / "vit-bench-101" / "gt_autoformer.pth"

# The first two archs of Auto-Prox's gt_autoformer.pth, and a 216-wide one.
AF_A = {"hidden_dim": 192, "depth": 12, "mlp_ratio": [3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 4.0, 3.5, 4.0, 4.0, 4.0, 3.5],
        "num_heads": [4, 4, 3, 4, 3, 3, 4, 4, 3, 3, 3, 4]}
AF_B = {"hidden_dim": 216, "depth": 13, "mlp_ratio": [4.0] * 6 + [3.5] * 7, "num_heads": [3, 4] * 6 + [3]}
PIT_A = {"base_dim": 40, "mlp_ratio": 2, "depth": [2, 4, 4], "num_heads": [2, 4, 8]}
PIT_B = {"base_dim": 16, "mlp_ratio": 8, "depth": [1, 6, 6], "num_heads": [2, 2, 4]}


def block_params(d: int, hidden: int) -> int:
    """A pre-norm block: norm1, qkv (d -> 3d, bias), proj (d -> d), norm2, fc1 (d -> hidden), fc2 (hidden -> d)."""
    return 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d)


def autoformer_params(arch: dict, img: int = 224, patch: int = 16, in_chans: int = 3, classes: int = 100) -> int:
    """Patch conv + cls token + position embedding (1 + patches tokens) + blocks + final norm + head."""
    d = arch["hidden_dim"]
    patches = (img // patch) ** 2
    embed = in_chans * patch * patch * d + d
    tokens = d + (patches + 1) * d
    blocks = sum(block_params(d, int(r * d)) for r in arch["mlp_ratio"])
    return embed + tokens + blocks + 2 * d + d * classes + classes


def pit_params(arch: dict, img: int = 224, patch: int = 16, stride: int = 8, classes: int = 100) -> int:
    """Patch conv (stride 8) + 27x27 position map + cls + stages + 2 pools + final norm + head.

    A pool is a grouped 3x3 conv on the token map (groups = input width) and a Linear on the cls token.
    """
    c = [arch["base_dim"] * h for h in arch["num_heads"]]
    grid = (img - patch) // stride + 1
    embed = 3 * patch * patch * c[0] + c[0]
    tokens = c[0] * grid * grid + c[0]
    blocks = sum(n * block_params(c[s], int(c[s] * arch["mlp_ratio"])) for s, n in enumerate(arch["depth"]))
    # Grouped conv (groups = c_in): each output channel sees one input channel, 3x3 kernel.
    pools = sum((9 * c[s + 1] + c[s + 1]) + (c[s] * c[s + 1] + c[s + 1]) for s in range(2))
    return embed + tokens + blocks + pools + 2 * c[2] + c[2] * classes + classes


# ----------------------------------------------------------------------------- AutoFormer


@pytest.mark.parametrize("arch", [AF_A, AF_B], ids=["af-192x12", "af-216x13"])
def test_autoformer_parameter_count_matches_the_layer_shapes(arch):
    assert count_params(autoformer(arch)) == autoformer_params(arch)


def test_autoformer_parameter_counts_of_known_archs():
    assert autoformer_params(AF_A) == 5_321_956
    assert count_params(autoformer(AF_A)) == 5_321_956


@pytest.mark.parametrize("arch", [AF_A, AF_B], ids=["af-192x12", "af-216x13"])
def test_autoformer_maps_224_images_to_100_logits(arch):
    out = autoformer(arch)(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 100) and torch.isfinite(out).all()


def test_autoformer_module_names_are_stable():
    names = dict(autoformer(AF_A).named_modules())
    for name in ("patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                 "blocks.0.mlp.fc2", "blocks.0.norm1", "blocks.0.norm2", "blocks.11.mlp.fc2", "norm", "head"):
        assert name in names, name
    assert "blocks.12.attn" not in names
    model = autoformer(AF_A)
    assert model.blocks[1].attn.qkv.out_features == 3 * 192 and model.blocks[1].mlp.fc1.out_features == 768
    assert model.blocks[0].attn.num_heads == 4 and model.blocks[0].attn.head_dim == 48


def test_tiny_autoformer_has_its_own_image_patch_and_classes():
    arch = {"hidden_dim": 32, "depth": 2, "mlp_ratio": [1.0, 3.0], "num_heads": [2, 4]}
    model = autoformer(arch, img_size=16, patch_size=4, in_chans=1, num_classes=10)
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    assert count_params(model) == autoformer_params(arch, img=16, patch=4, in_chans=1, classes=10)
    with pytest.raises(ValueError, match="16x16"):
        model(torch.randn(1, 1, 32, 32))


def test_init_seed_fixes_the_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = autoformer(AF_A, init_seed=1), autoformer(AF_A, init_seed=1), autoformer(AF_A, init_seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)
    assert not a.training


def test_mismatched_per_layer_lists_are_refused():
    with pytest.raises(ValueError, match="one entry per layer"):
        autoformer({"hidden_dim": 192, "depth": 3, "mlp_ratio": [4.0] * 2, "num_heads": [3] * 3})
    with pytest.raises(ValueError, match="divisible"):
        autoformer({"hidden_dim": 100, "depth": 1, "mlp_ratio": [4.0], "num_heads": [3]})


# ----------------------------------------------------------------------------- attention maps


def _tiny() -> torch.nn.Module:
    return autoformer({"hidden_dim": 32, "depth": 2, "mlp_ratio": [2.0, 2.0], "num_heads": [2, 4]},
                      img_size=16, patch_size=4, in_chans=1, num_classes=10)


def test_attention_maps_are_kept_only_when_asked_and_change_nothing():
    model, x = _tiny(), torch.randn(4, 1, 16, 16)
    plain = model(x)
    assert attention_maps(model) == {}
    assert set_keep_attn(model) == ["blocks.0.attn", "blocks.1.attn"]
    kept = model(x)
    assert torch.equal(plain, kept)
    maps = attention_maps(model)
    assert maps["blocks.1.attn"].shape == (4, 4, 17, 17)
    assert torch.allclose(maps["blocks.0.attn"].sum(-1), torch.ones(4, 2, 17))
    set_keep_attn(model, False)
    assert attention_maps(model) == {}


def test_kept_attention_stays_in_the_graph_so_its_gradient_exists():
    model, x = _tiny(), torch.randn(4, 1, 16, 16)
    set_keep_attn(model)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(4))
    attn = attention_maps(model)["blocks.0.attn"]
    assert attn.requires_grad and attn.grad_fn is not None
    (grad,) = torch.autograd.grad(loss, attn)
    assert grad.shape == attn.shape and grad.abs().sum() > 0


def test_a_model_holding_attention_maps_can_be_copied_and_pickled():
    model = _tiny()
    set_keep_attn(model)
    model(torch.randn(2, 1, 16, 16))
    clone = copy.deepcopy(model)
    assert clone.blocks[0].attn.last_attn is None and clone.blocks[0].attn.keep_attn
    assert model.blocks[0].attn.last_attn is not None
    assert isinstance(pickle.loads(pickle.dumps(model)).blocks[0].attn, Attention)


# ----------------------------------------------------------------------------- PiT


@pytest.mark.parametrize("arch", [PIT_A, PIT_B], ids=["pit-40", "pit-16"])
def test_pit_parameter_count_matches_the_layer_shapes(arch):
    assert count_params(pit(arch)) == pit_params(arch)


def test_pit_parameter_count_of_a_known_arch():
    assert pit_params(PIT_A) == 4_443_220


@pytest.mark.parametrize("arch", [PIT_A, PIT_B], ids=["pit-40", "pit-16"])
def test_pit_maps_224_images_to_100_logits(arch):
    out = pit(arch)(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 100) and torch.isfinite(out).all()


def test_pit_module_names_and_widths():
    model = pit(PIT_A)
    names = dict(model.named_modules())
    for name in ("patch_embed.proj", "stages.0.blocks.0.attn.qkv", "stages.2.blocks.3.mlp.fc2",
                 "pools.0.conv", "pools.0.fc", "pools.1.conv", "norm", "head"):
        assert name in names, name
    assert model.widths == [80, 160, 320]
    assert model.pos_embed.shape == (1, 80, 27, 27)
    assert model.stages[2].blocks[0].attn.num_heads == 8 and model.stages[2].blocks[0].attn.head_dim == 40


def test_pit_attention_maps_follow_the_pooled_token_counts():
    model = pit(PIT_B)
    set_keep_attn(model)
    model(torch.randn(1, 3, 224, 224))
    maps = attention_maps(model)
    # 27x27 -> 14x14 -> 7x7 token maps, plus the cls token.
    assert maps["stages.0.blocks.0.attn"].shape[-1] == 27 * 27 + 1
    assert maps["stages.1.blocks.0.attn"].shape[-1] == 14 * 14 + 1
    assert maps["stages.2.blocks.0.attn"].shape[-1] == 7 * 7 + 1


def test_pit_refuses_heads_that_do_not_divide_the_next_stage():
    with pytest.raises(ValueError, match="multiple"):
        pit({"base_dim": 16, "mlp_ratio": 2, "depth": [1, 1, 1], "num_heads": [4, 2, 8]})


# ----------------------------------------------------------------------------- published numbers


def test_params_rank_autoformer_accuracies_as_published():
    """Validates the builder: Kendall tau of #params with c100_kd (~0.55) and flower_kd (~0.70), as in Auto-Prox."""
    if not GT_AUTOFORMER.is_file():
        pytest.skip(f"public ViT-Bench-101 file absent: {GT_AUTOFORMER}")
    from scipy.stats import kendalltau

    records = torch.load(GT_AUTOFORMER, weights_only=True)
    # Built on the meta device: the real layer shapes without the cost of initialising 100 networks.
    with torch.device("meta"):
        params = np.array([count_params(autoformer(r["arch"])) for r in records])
    assert params.tolist() == [autoformer_params(r["arch"]) for r in records]
    c100 = np.array([r["c100_kd_acc"] for r in records])
    flower = np.array([r["flower_kd_acc"] for r in records])
    assert kendalltau(params, c100)[0] == pytest.approx(0.55, abs=0.1)
    assert kendalltau(params, flower)[0] == pytest.approx(0.70, abs=0.1)
