"""Specification of the embedded vit-digits benchmark: arch space, training tasks, build and loader."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from emq.bench import digits
from emq.bench.base import Batch, BenchmarkNotBuiltError, Candidate
from emq.bench.vit_digits import ViTDigitsBenchmark, build_vit_digits, readme_text
from emq.bench.vit_digits_load import BUILD_COMMAND, GT_FILE, GT_FORMAT, README_FILE, load_ground_truth, params_kendall
from emq.bench.vit_digits_space import TinyViTSpace, sample_archs, tiny_vit
from emq.bench.vit_digits_train import Recipe, low_data_indices
from emq.errors import InputFileError
from emq.models.autoformer import count_params
from emq.paths import REPO_ROOT

TINY_RECIPE = Recipe().with_epochs(1)
TIMING_FIELDS = ("build_seconds", "build_cpu_seconds", "workers")


def _tiny_build(out: Path, workers: int = 1) -> dict:
    return build_vit_digits(seed=0, num_archs=2, out_dir=out, progress=False, recipe=TINY_RECIPE,
                            workers=workers, repeat_archs=1)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vit-digits")
    _tiny_build(out)
    return out


# ----------------------------------------------------------------------------- space and data


def test_sampled_archs_are_distinct_deterministic_and_inside_the_space():
    space = TinyViTSpace()
    archs = sample_archs(120, seed=0)
    assert archs == sample_archs(120, seed=0) and archs != sample_archs(120, seed=1)
    assert len({json.dumps(a, sort_keys=True) for a in archs}) == 120
    for a in archs:
        assert a["hidden_dim"] in space.hidden_dim and a["depth"] in space.depth
        assert len(a["num_heads"]) == len(a["mlp_ratio"]) == a["depth"]
        assert set(a["num_heads"]) <= set(space.num_heads) and set(a["mlp_ratio"]) <= set(space.mlp_ratio)
    assert {a["depth"] for a in archs} == set(space.depth) and {a["hidden_dim"] for a in archs} == set(space.hidden_dim)


def test_tiny_vit_reads_16x16_digits_into_10_classes():
    arch = sample_archs(1, seed=0)[0]
    model = tiny_vit(arch, init_seed=0)
    x, _ = digits.train_split(0)
    assert model(x[:5]).shape == (5, 10) and not model.training
    names = dict(model.named_modules())
    assert "patch_embed.proj" in names and "blocks.0.attn.qkv" in names and "head" in names
    assert model.patch_embed.num_patches == 16


def test_low_data_subset_is_stratified_and_fixed_by_the_seed():
    idx = low_data_indices(200, seed=0)
    _, labels = digits.train_split(0)
    assert len(idx) == len(set(idx.tolist())) == 200
    assert np.bincount(labels.numpy()[idx]).tolist() == [20] * 10
    assert np.array_equal(idx, low_data_indices(200, seed=0))
    with pytest.raises(ValueError, match="multiple of 10"):
        low_data_indices(205, seed=0)


# ----------------------------------------------------------------------------- build


def test_tiny_build_writes_ground_truth_and_readme(tiny_build):
    gt = json.loads((tiny_build / GT_FILE).read_text())
    assert gt["format"] == GT_FORMAT and gt["seed"] == 0
    assert gt["columns"] == ["test_acc", "test_acc_low_data", "test_acc_kd"]
    assert [c["id"] for c in gt["candidates"]] == ["vit-000", "vit-001"]
    for c in gt["candidates"]:
        assert 0.0 <= c["test_acc"] <= 1.0 and 0.0 <= c["test_acc_low_data"] <= 1.0 and 0.0 <= c["test_acc_kd"] <= 1.0
        assert c["params"] == count_params(tiny_vit(c["arch"]))
    assert gt["recipe"]["distillation"]["alpha"] == 0.5 and "mq-digits" in gt["recipe"]["distillation"]["teacher"]
    assert gt["repeat"]["ids"] == ["vit-000"] and len(gt["repeat"]["test_acc"]) == 1
    assert gt["command"] == "emq bench build vit-digits --seed 0"
    assert {"space", "recipe", "build_seconds"} <= set(gt)
    readme = (tiny_build / README_FILE).read_text()
    assert "emq bench build vit-digits --seed 0" in readme and "tau(#params)" in readme


def test_a_rebuild_keeps_columns_made_the_same_way_and_trains_only_the_changed_one(tiny_build, tmp_path, monkeypatch):
    import shutil

    from emq.bench import vit_digits_train

    for name in (GT_FILE, README_FILE):
        shutil.copy(tiny_build / name, tmp_path / name)
    trained: list[str] = []
    real = vit_digits_train.train_and_test

    def spy(arch, task, *args, **kwargs):
        trained.append(task.column)
        return real(arch, task, *args, **kwargs)

    monkeypatch.setattr(vit_digits_train, "train_and_test", spy)
    recipe = Recipe(kd_alpha=0.9).with_epochs(1)
    build_vit_digits(seed=0, num_archs=2, out_dir=tmp_path, progress=False, recipe=recipe, workers=1,
                     repeat_archs=1, overwrite=True)
    assert set(trained) == {"test_acc_kd"} and len(trained) == 3  # 2 archs + 1 repeat, the KD column only
    a, b = (json.loads((d / GT_FILE).read_text()) for d in (tmp_path, tiny_build))
    assert a["reused_columns"] == ["test_acc", "test_acc_low_data"]
    assert [c["test_acc"] for c in a["candidates"]] == [c["test_acc"] for c in b["candidates"]]


def test_a_distilled_task_without_teacher_logits_is_refused():
    from emq.bench.vit_digits_train import Task, train_and_test

    with pytest.raises(ValueError, match="teacher's logits"):
        train_and_test(sample_archs(1, 0)[0], Task("kd", None, 1, 64, distill=True), TINY_RECIPE, 0, 0)


def test_two_tiny_builds_give_identical_files_whatever_the_worker_count(tiny_build, tmp_path):
    """Deterministic given the seed: only the timing fields (and the README line quoting them) may differ."""
    _tiny_build(tmp_path, workers=2)
    a = json.loads((tmp_path / GT_FILE).read_text())
    b = json.loads((tiny_build / GT_FILE).read_text())
    for key in TIMING_FIELDS:
        a.pop(key), b.pop(key)
    assert a == b

    def untimed(path: Path) -> str:
        text = path.read_text()
        return re.sub(r"[\d.]+ s wall, [\d.]+ s CPU\s+with \d+ worker", "T", text)

    assert untimed(tmp_path / README_FILE) == untimed(tiny_build / README_FILE)


def test_built_readme_is_the_template_filled_from_the_built_ground_truth(tiny_build):
    gt = json.loads((tiny_build / GT_FILE).read_text())
    gt["space"] = {k: tuple(v) if isinstance(v, list) else v for k, v in gt["space"].items()}  # as the build held it
    assert (tiny_build / README_FILE).read_text() == readme_text(gt)


def test_readme_template_ships_as_package_data():
    from importlib.resources import files

    assert files("emq.bench").joinpath("templates", "vit-digits.md").is_file()
    assert '"templates/*.md"' in (REPO_ROOT / "pyproject.toml").read_text()


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_candidates_align_with_ground_truth(tiny_build):
    bench = ViTDigitsBenchmark(tiny_build)
    gt = json.loads((tiny_build / GT_FILE).read_text())
    cands = bench.candidates()
    assert bench.name == "vit-digits" and bench.family == "vit" and not bench.trained_weights
    assert all(isinstance(c, Candidate) and c.bits is None for c in cands)
    assert [c.arch for c in cands] == [c["arch"] for c in gt["candidates"]]
    truth = bench.ground_truth()
    assert list(truth) == ["test_acc", "test_acc_low_data", "test_acc_kd"]
    assert truth["test_acc"].tolist() == [c["test_acc"] for c in gt["candidates"]]
    assert bench.default_target == "test_acc"


def test_build_model_is_a_fresh_seeded_random_network(tiny_build):
    bench = ViTDigitsBenchmark(tiny_build)
    cand = bench.candidates()[0]
    a, b, c = bench.build_model(cand, 0), bench.build_model(cand, 0), bench.build_model(cand, 1)
    assert not a.training and a is not b
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)
    batch = bench.batch(seed=0, size=8)
    assert a(batch.inputs).shape == (8, 10)


def test_batch_is_a_recorded_digits_train_batch(tiny_build):
    bench = ViTDigitsBenchmark(tiny_build)
    batch = bench.batch(seed=2, size=16)
    assert isinstance(batch, Batch) and batch.source == "digits-train-16x16" and batch.seed == 2
    assert batch.inputs.shape == (16, 1, 16, 16)
    x, y = digits.batch(2, 16, split_seed=0)
    assert torch.equal(batch.inputs, x) and torch.equal(batch.labels, y)
    assert "Kendall tau of #params" in bench.describe_models()


def test_cache_token_changes_when_the_ground_truth_changes(tiny_build, tmp_path):
    gt = json.loads((tiny_build / GT_FILE).read_text())
    gt["candidates"][0]["test_acc"] = 0.5
    (tmp_path / GT_FILE).write_text(json.dumps(gt))
    assert ViTDigitsBenchmark(tmp_path).cache_token != ViTDigitsBenchmark(tiny_build).cache_token


def test_missing_build_raises_not_built_with_the_command(tmp_path):
    with pytest.raises(BenchmarkNotBuiltError, match=f"{BUILD_COMMAND} --seed 0"):
        ViTDigitsBenchmark(tmp_path / "nowhere")


def test_registered_as_an_embedded_vit_benchmark_with_a_builder():
    import emq.bench.vit_digits  # noqa: F401  (registers the benchmark and its builder)
    from emq.bench.registry import BENCHMARKS, BUILDERS

    entry = BENCHMARKS["vit-digits"]
    assert entry.family == "vit" and entry.embedded
    assert "vit-digits" in BUILDERS


def test_registered_builder_maps_num_configs_and_epochs(tmp_path, monkeypatch):
    from emq.bench import vit_digits
    from emq.bench.registry import BUILDERS

    seen = {}

    def fake_build(**kwargs):
        seen.update(kwargs)
        return {"out_dir": str(tmp_path)}

    monkeypatch.setattr(vit_digits, "build_vit_digits", fake_build)
    assert BUILDERS["vit-digits"](seed=3, num_configs=7, epochs=2) == tmp_path
    assert seen["seed"] == 3 and seen["num_archs"] == 7
    assert all(t.epochs == 2 for t in seen["recipe"].tasks)


@pytest.mark.parametrize("edit, field", [
    (lambda gt: gt.pop("candidates"), "'candidates'"),
    (lambda gt: gt.update(format="other/9"), "'format'"),
    (lambda gt: gt["candidates"][1].update(test_acc=1.5), r"'candidates\[1\].test_acc'"),
    (lambda gt: gt["candidates"][1].update(test_acc_low_data="high"), r"'candidates\[1\].test_acc_low_data'"),
    (lambda gt: gt["candidates"][0]["arch"].update(num_heads=[2]), r"'candidates\[0\].arch'"),
    (lambda gt: gt["candidates"][1].update(id="vit-000"), r"'candidates\[1\].id'"),
    (lambda gt: gt["candidates"][0].update(params=0), r"'candidates\[0\].params'"),
    (lambda gt: gt["space"].update(colour="blue"), "'space'"),
])
def test_malformed_ground_truth_names_the_file_and_the_field(tiny_build, tmp_path, edit, field):
    gt = json.loads((tiny_build / GT_FILE).read_text())
    edit(gt)
    (tmp_path / GT_FILE).write_text(json.dumps(gt))
    with pytest.raises(InputFileError, match=field) as err:
        ViTDigitsBenchmark(tmp_path)
    assert str(tmp_path / GT_FILE) in str(err.value)


def test_ground_truth_that_is_not_json_is_reported(tmp_path):
    (tmp_path / GT_FILE).write_text("{not json")
    with pytest.raises(InputFileError, match="not valid JSON"):
        load_ground_truth(tmp_path / GT_FILE)


# ----------------------------------------------------------------------------- the committed build


def test_committed_benchmark_is_large_spread_and_not_ranked_by_size():
    root = REPO_ROOT / "results" / "vit-digits"
    if not (root / GT_FILE).is_file():
        pytest.skip(f"vit-digits not built here ({root}); run `{BUILD_COMMAND} --seed 0`")
    bench = ViTDigitsBenchmark(root)
    assert len(bench.candidates()) >= 100
    for col, values in bench.ground_truth().items():
        assert np.isfinite(values).all()
        assert values.max() - values.min() > 0.1, col
    assert all(tau <= 0.8 for tau in params_kendall(bench.gt).values())
    assert (root / README_FILE).is_file()


def test_committed_readme_is_the_template_filled_from_the_committed_ground_truth():
    root = REPO_ROOT / "results" / "vit-digits"
    if not (root / GT_FILE).is_file():
        pytest.skip(f"vit-digits not built here ({root}); run `{BUILD_COMMAND} --seed 0`")
    gt = json.loads((root / GT_FILE).read_text())
    assert (root / README_FILE).read_text() == readme_text(gt)
