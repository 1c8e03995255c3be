"""Stage relation matrices: which stages are read, their shape and norm, and the statistics built on them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from emq.bench.base import Batch
from emq.diswot import FeatureError
from emq.models.autoformer import autoformer
from emq.models.nb201 import nb201
from emq.models.pit import pit
from emq.models.resnet_cifar import resnet56
from emq.stats.stage_features import feature_stages, relation_matrix, stage_list, stage_relations
from emq.stats.teacher import Teacher


def _vit(depth: int) -> nn.Module:
    return autoformer({"hidden_dim": 64, "depth": depth, "mlp_ratio": [2.0] * depth, "num_heads": [2] * depth},
                      img_size=32)


def test_resnets_and_nb201_are_read_at_their_three_stage_outputs():
    net = resnet56(100)
    assert feature_stages(net) == [net.layer1, net.layer2, net.layer3]
    cell = nb201((2, 2, 2, 2, 2, 2))
    assert feature_stages(cell) == [cell.stage1, cell.stage2, cell.stage3]


@pytest.mark.parametrize("depth, picked", [(13, [4, 8, 12]), (3, [0, 1, 2]), (2, [0, 1, 1]), (1, [0, 0, 0])])
def test_block_lists_are_read_at_relative_depths(depth, picked):
    net = _vit(depth)
    assert feature_stages(net) == [net.blocks[i] for i in picked]


def test_pit_stages_are_read_at_their_token_outputs():
    net = pit({"base_dim": 16, "depth": [1, 1, 1], "num_heads": [1, 2, 4], "mlp_ratio": 2.0}, img_size=32,
              patch_size=8, stride=4)
    rel = stage_relations(net, torch.randn(3, 3, 32, 32))
    assert rel.shape == (3, 3, 3)


def test_a_network_without_stages_is_refused_by_name():
    with pytest.raises(FeatureError, match="Sequential has no stages"):
        stage_list(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))


def test_relations_are_normalised_per_stage_and_the_network_is_left_as_it_was():
    net, x = resnet56(100), torch.randn(5, 3, 32, 32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rel = stage_relations(net, x)
    assert rel.shape == (3, 5, 5)
    assert [float(r.norm()) for r in rel] == pytest.approx([1.0, 1.0, 1.0])
    assert torch.allclose(rel, rel.transpose(1, 2))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_relation_matrix_ignores_feature_scale_and_layout():
    f = torch.randn(4, 8, 3, 3)
    assert torch.allclose(relation_matrix(f), relation_matrix(7.0 * f.flatten(1)))


def test_stage_statistics_sit_on_the_classifier_and_a_program_compares_student_and_teacher():
    from emq.proxy import Proxy
    from emq.stats.compute import compute_stats

    teacher = Teacher("resnet56-cifar", lambda seed: resnet56(100, seed), 32, 0)
    batch = Batch(torch.randn(4, 3, 32, 32), torch.arange(4), "test", 0)
    net = _vit(4)
    stats = compute_stats(net, batch, None, ["weight", "stage_relation", "teacher_stage_relation"], teacher=teacher)
    assert {n for n, d in stats.layers.items() if "teacher_stage_relation" in d} == {"head"}
    head = stats.layers["head"]
    assert head["stage_relation"].shape == head["teacher_stage_relation"].shape == (3, 4, 4)
    expected = float((stage_relations(net, batch.inputs) - stage_relations(teacher.model(), batch.inputs)).norm())
    value = Proxy.from_formula("sum_layers(l2(sub(stage_relation, teacher_stage_relation)))").evaluate(stats)
    assert value == pytest.approx(expected, rel=2e-3)  # stored as float16
