"""DisWOT: the teacher, the semantic and relation matrices, and the baseline's applicability."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emq.baselines import (
    BASELINES, BaselineContext, BaselineNotApplicableError, baseline_scores, benchmark_baselines, get_baseline,
)
from emq.bench.base import Batch, Benchmark, Candidate
from emq.diswot import diswot_distance, diswot_matrices, head_features
from emq.models.autoformer import autoformer
from emq.models.nb201 import nb201
from emq.models.resnet_cifar import resnet56
from emq.stats.teacher import Teacher

TINY_VIT = {"hidden_dim": 192, "depth": 2, "mlp_ratio": [4.0, 4.0], "num_heads": [3, 3]}


def test_resnet56_has_the_published_size_and_seeded_weights():
    net = resnet56(100, init_seed=3)
    assert sum(p.numel() for p in net.parameters()) == 861_620  # 0.86 M, as in the CRD / DisWOT tables
    assert torch.equal(net.conv1.weight, resnet56(100, init_seed=3).conv1.weight)
    assert not torch.equal(net.conv1.weight, resnet56(100, init_seed=4).conv1.weight)


def test_features_are_the_map_before_pooling_for_cnns_and_the_tokens_for_vits():
    feats, weight = head_features(resnet56(100), torch.randn(4, 3, 32, 32))
    assert feats.shape == (4, 64, 64) and weight.shape == (100, 64)  # 8x8 positions
    feats, weight = head_features(autoformer(TINY_VIT, img_size=32), torch.randn(4, 3, 32, 32))
    assert feats.shape == (4, 192, 5) and weight.shape == (100, 192)  # cls + 2x2 patch tokens


def test_matrices_are_normalised_and_a_network_is_at_distance_zero_from_itself():
    net, x = nb201((2, 2, 2, 2, 2, 2)), torch.randn(6, 3, 32, 32)
    m = diswot_matrices(net, x)
    assert m.semantic.shape == (10, 10) and m.relation.shape == (6, 6)
    assert float(m.semantic.norm()) == pytest.approx(1.0) and float(m.relation.norm()) == pytest.approx(1.0)
    assert diswot_distance(m, diswot_matrices(net, x)) == pytest.approx(0.0, abs=1e-9)
    other = diswot_matrices(nb201((0, 3, 4, 2, 0, 3), init_seed=1), x)
    assert diswot_distance(m, other) > 0.01


def test_the_baseline_scores_a_student_against_the_teacher_and_runs_the_teacher_once():
    teacher = Teacher("resnet56-cifar", lambda seed: resnet56(100, seed), 32, 0)
    ctx = BaselineContext(torch.device("cpu"), 0, None, teacher=teacher)
    batch = Batch(torch.randn(4, 3, 64, 64), torch.arange(4), "test", 0)
    fn = get_baseline("diswot").fn
    a = fn(autoformer(TINY_VIT, img_size=64), batch, None, ctx)
    assert a < 0 and len(ctx.memo) == 1
    assert fn(autoformer(TINY_VIT, img_size=64), batch, None, ctx) == a and len(ctx.memo) == 1


class _NoTeacherViTs(Benchmark):
    name, family = "no-teacher-vits", "vit"

    def candidates(self) -> list[Candidate]:
        return [Candidate("a", arch=TINY_VIT)]

    def ground_truth(self):
        return {"acc": np.array([1.0])}

    def build_model(self, candidate, init_seed=0):
        return autoformer(TINY_VIT, init_seed, img_size=32)

    def batch(self, seed=0, size=16):
        return Batch(torch.randn(size, 3, 32, 32), torch.zeros(size, dtype=torch.long), "test", seed)


def test_diswot_applies_only_to_benchmarks_with_a_teacher(tmp_path):
    bench = _NoTeacherViTs()
    assert "diswot" not in benchmark_baselines(bench)
    with pytest.raises(BaselineNotApplicableError, match="distillation teacher"):
        baseline_scores(bench, ["diswot"], cache_root=tmp_path, progress=False)


def test_diswot_is_registered_as_a_teacher_baseline():
    assert BASELINES["diswot"].needs_teacher and BASELINES["diswot"].kind == "model"


def test_teacher_statistics_sit_on_the_classifier_entry_and_a_program_expresses_diswot():
    from emq.diswot import diswot_distance, diswot_matrices
    from emq.proxy import Proxy
    from emq.stats.compute import compute_stats

    teacher = Teacher("resnet56-cifar", lambda seed: resnet56(100, seed), 32, 0)
    batch = Batch(torch.randn(4, 3, 64, 64), torch.arange(4), "test", 0)
    net = autoformer(TINY_VIT, img_size=64)
    names = ["weight", "logits", "relation", "semantic", "teacher_logits", "teacher_relation", "teacher_semantic"]
    stats = compute_stats(net, batch, None, names, teacher=teacher)
    assert {n for n, d in stats.layers.items() if "teacher_relation" in d} == {"head"}
    assert stats.layers["head"]["teacher_semantic"].shape == (100, 100)
    assert stats.layers["head"]["teacher_logits"].shape == (4, 100)
    program = Proxy.from_formula(
        "sum_layers(s_add(l2(sub(semantic, teacher_semantic)), l2(sub(relation, teacher_relation))))")
    expected = diswot_distance(diswot_matrices(net, batch.inputs), diswot_matrices(teacher.model(), teacher.inputs(batch.inputs)))
    assert program.evaluate(stats) == pytest.approx(expected, rel=2e-3)  # statistics stored as float16


def test_teacher_statistics_without_a_teacher_fail_naming_them():
    from emq.stats.compute import compute_stats

    batch = Batch(torch.randn(2, 3, 32, 32), torch.arange(2), "test", 0)
    with pytest.raises(ValueError, match=r"teacher_relation.*distillation teacher"):
        compute_stats(nb201((2, 2, 2, 2, 2, 2)), batch, None, ["teacher_relation"])
    stats = compute_stats(nb201((2, 2, 2, 2, 2, 2)), batch, None, ["relation", "semantic"])  # student-only: fine
    assert stats.layers["classifier"]["semantic"].shape == (10, 10)


def test_teacher_statistics_are_offered_only_where_a_teacher_exists():
    from emq.errors import StatUnavailableError
    from emq.proxy import Proxy
    from emq.scoring import check_proxies_fit
    from emq.stats.config import StatsConfig

    proxy = {"kd": Proxy.from_formula("sum_layers(l2(sub(relation, teacher_relation)))")}
    config = StatsConfig(stat_names=("relation", "teacher_relation"))
    with pytest.raises(StatUnavailableError, match="teacher_relation.*does not exist"):
        check_proxies_fit(_NoTeacherViTs(), proxy, config)

    class WithTeacher(_NoTeacherViTs):
        def teacher(self):
            return Teacher("resnet56-cifar", lambda seed: resnet56(100, seed), 32, 0)

    check_proxies_fit(WithTeacher(), proxy, config)
