"""Specification of the embedded mq-digits benchmark: data, network, build and loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emq.bench import digits
from emq.bench.base import Batch, BenchmarkNotBuiltError, Candidate
from emq.bench.mq_digits import MQDigitsBenchmark, build_mq_digits, readme_text, sample_bit_configs
from emq.bench.mq_digits_load import GT_FILE, README_FILE, WEIGHTS_FILE, GroundTruthError, load_ground_truth
from emq.bench.mq_digits_train import TrainConfig, ptq_accuracy
from emq.models.digits_cnn import DigitsResNet, digits_resnet
from emq.models.resnet import fold_batchnorm
from emq.paths import REPO_ROOT
from emq.quant.fake_quant import quantized_model
from emq.quant.layers import quantizable_layers

TINY = TrainConfig(epochs=1)
EXPECTED_LAYERS = [
    "stem", "stage1.0.conv1", "stage1.0.conv2", "stage1.1.conv1", "stage1.1.conv2",
    "stage2.0.conv1", "stage2.0.conv2", "stage2.0.downsample.0", "stage2.1.conv1", "stage2.1.conv2",
    "stage3.0.conv1", "stage3.0.conv2", "stage3.0.downsample.0", "stage3.1.conv1", "stage3.1.conv2", "head",
]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mq-digits")
    build_mq_digits(seed=0, num_configs=3, out_dir=out, progress=False, train_config=TINY)
    return out


# ----------------------------------------------------------------------------- data


def test_split_is_stratified_disjoint_and_covers_all_digits():
    s = digits.digits_split(0)
    assert s.sizes() == {"train": 1000, "calib": 100, "test": 697}
    all_idx = np.concatenate([s.train, s.calib, s.test])
    assert len(np.unique(all_idx)) == 1797
    _, y_train = digits.train_split(0)
    _, y_calib = digits.calibration_split(0)
    assert np.bincount(y_train.numpy()).min() >= 95  # ~100 per class
    assert np.bincount(y_calib.numpy(), minlength=10).min() >= 9


def test_split_depends_only_on_seed():
    a, b, c = digits.digits_split(0), digits.digits_split(0), digits.digits_split(1)
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)


def test_train_images_are_16x16_and_normalised_by_train_statistics():
    x, y = digits.train_split(0)
    assert x.shape == (1000, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3


def test_batch_is_deterministic_and_drawn_from_the_train_split_only():
    x1, y1 = digits.batch(seed=3, size=16)
    x2, y2 = digits.batch(seed=3, size=16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = digits.batch(seed=4, size=16)
    assert not torch.equal(x1, x3)
    train_x, _ = digits.train_split(0)
    test_x, _ = digits.test_split(0)
    flat_train = {tuple(r.tolist()) for r in train_x.flatten(1)}
    flat_test = {tuple(r.tolist()) for r in test_x.flatten(1)}
    rows = {tuple(r.tolist()) for r in x1.flatten(1)}
    assert rows <= flat_train
    assert not rows & (flat_test - flat_train)


def test_batch_ignores_and_keeps_global_rng_state():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    digits.batch(seed=0, size=8)
    assert torch.equal(torch.rand(1), before)


def test_batch_at_224_has_three_identical_channels():
    x, y = digits.batch(seed=0, size=2, resolution=224, channels=3)
    assert x.shape == (2, 3, 224, 224)
    assert torch.equal(x[:, 0], x[:, 2])


def test_batch_size_out_of_range_is_refused():
    with pytest.raises(ValueError, match="batch size"):
        digits.batch(seed=0, size=0)


# ----------------------------------------------------------------------------- network


def test_network_has_stable_layer_names():
    assert list(quantizable_layers(digits_resnet(folded=True))) == EXPECTED_LAYERS
    assert list(quantizable_layers(DigitsResNet())) == EXPECTED_LAYERS


def test_folded_network_has_no_batchnorm_and_biased_convs():
    model = digits_resnet(folded=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in quantizable_layers(model).values())


def test_fold_batchnorm_keeps_eval_outputs():
    torch.manual_seed(0)
    model = DigitsResNet()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x, _ = digits.batch(seed=0, size=8)
    with torch.no_grad():
        before = model(x)
        after = fold_batchnorm(model)(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- sampling


def test_sampled_configs_are_distinct_deterministic_and_use_the_choices():
    a = sample_bit_configs(EXPECTED_LAYERS, 200, seed=0)
    b = sample_bit_configs(EXPECTED_LAYERS, 200, seed=0)
    assert a == b
    assert len({tuple(c.values()) for c in a}) == 200
    assert all(set(c) == set(EXPECTED_LAYERS) and set(c.values()) <= {2, 3, 4, 8} for c in a)
    assert sample_bit_configs(EXPECTED_LAYERS, 5, seed=1) != a[:5]


def test_sampled_configs_vary_the_number_of_2bit_layers():
    counts = [sum(b == 2 for b in c.values()) for c in sample_bit_configs(EXPECTED_LAYERS, 200, seed=0)]
    assert min(counts) == 0 and max(counts) >= 8


# ----------------------------------------------------------------------------- build


def test_tiny_build_writes_the_three_files(tiny_build):
    for name in (GT_FILE, WEIGHTS_FILE, README_FILE):
        assert (tiny_build / name).is_file()
    gt = load_ground_truth(tiny_build / GT_FILE)
    assert gt["format"] == "emq-mq-gt/1" and gt["command"] == "emq bench build mq-digits"
    assert gt["layers"] == EXPECTED_LAYERS
    assert [c["id"] for c in gt["candidates"]] == ["cfg-0000", "cfg-0001", "cfg-0002"]
    assert gt["act_bits"] == 8 and gt["weight_bit_choices"] == [2, 3, 4, 8]
    assert "emq bench build mq-digits --seed 0" in (tiny_build / README_FILE).read_text()


def test_two_tiny_builds_give_identical_files(tiny_build, tmp_path):
    build_mq_digits(seed=0, num_configs=3, out_dir=tmp_path, progress=False, train_config=TINY)
    assert (tmp_path / WEIGHTS_FILE).read_bytes() == (tiny_build / WEIGHTS_FILE).read_bytes()
    a = json.loads((tmp_path / GT_FILE).read_text())
    b = json.loads((tiny_build / GT_FILE).read_text())
    for key in ("build_seconds", "build_cpu_seconds"):
        a.pop(key), b.pop(key)
    assert a == b


def test_built_readme_is_the_template_filled_from_the_built_ground_truth(tiny_build):
    gt = json.loads((tiny_build / GT_FILE).read_text())
    assert (tiny_build / README_FILE).read_text() == readme_text(gt)


def test_readme_template_ships_as_package_data():
    from importlib.resources import files

    assert files("emq.bench").joinpath("templates", "mq-digits.md").is_file()
    assert '"templates/*.md"' in (REPO_ROOT / "pyproject.toml").read_text()


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_candidates_align_with_ground_truth(tiny_build):
    bench = MQDigitsBenchmark(tiny_build)
    cands = bench.candidates()
    acc = bench.ground_truth()["test_acc"]
    assert len(cands) == len(acc) == 3
    assert all(isinstance(c, Candidate) and c.bits is not None for c in cands)
    assert bench.family == "mq" and bench.trained_weights and bench.act_bits == 8
    assert bench.default_target == "test_acc"


def test_ground_truth_is_reproduced_from_the_loaded_benchmark(tiny_build):
    bench = MQDigitsBenchmark(tiny_build)
    cand = bench.candidates()[1]
    x, y = digits.test_split(bench.seed)
    acc = ptq_accuracy(bench.build_model(cand), cand.bits, bench.calibration_inputs(), x, y)
    assert acc == pytest.approx(bench.ground_truth()["test_acc"][1], abs=1e-12)


def test_build_model_returns_fresh_float_copies_in_eval_mode(tiny_build):
    bench = MQDigitsBenchmark(tiny_build)
    cand = bench.candidates()[0]
    m1, m2 = bench.build_model(cand), bench.build_model(cand)
    assert not m1.training
    with torch.no_grad():
        m1.stem.weight.zero_()
    assert not torch.equal(m1.stem.weight, m2.stem.weight)
    # bits are not applied by build_model: quantizing changes the weights
    q = quantized_model(m2, cand.bits, act_bits=8, calib_inputs=bench.calibration_inputs())
    assert not torch.equal(q.stem.weight, m2.stem.weight)


def test_batch_is_a_recorded_train_batch(tiny_build):
    bench = MQDigitsBenchmark(tiny_build)
    b = bench.batch(seed=5, size=12)
    assert isinstance(b, Batch) and b.source == "digits-train-16x16" and b.seed == 5
    assert b.inputs.shape == (12, 1, 16, 16) and b.labels.shape == (12,)
    assert torch.equal(b.inputs, bench.batch(seed=5, size=12).inputs)
    assert bench.calibration_inputs().shape == (100, 1, 16, 16)


def test_missing_build_raises_not_built_with_the_command(tmp_path):
    with pytest.raises(BenchmarkNotBuiltError, match="emq bench build mq-digits --seed 0"):
        MQDigitsBenchmark(tmp_path / "nowhere")


def test_registered_as_an_embedded_mq_benchmark():
    from emq.bench.registry import BENCHMARKS

    entry = BENCHMARKS["mq-digits"]
    assert entry.family == "mq" and entry.embedded


def _corrupt(tiny_build: Path, tmp_path: Path, edit) -> Path:
    gt = json.loads((tiny_build / GT_FILE).read_text())
    edit(gt)
    (tmp_path / GT_FILE).write_text(json.dumps(gt))
    (tmp_path / WEIGHTS_FILE).write_bytes((tiny_build / WEIGHTS_FILE).read_bytes())
    return tmp_path


@pytest.mark.parametrize("edit, field", [
    (lambda gt: gt.pop("layers"), "'layers'"),
    (lambda gt: gt.update(format="other/9"), "'format'"),
    (lambda gt: gt["candidates"][1]["bits"].pop("head"), "'candidates[1].bits'"),
    (lambda gt: gt["candidates"][2]["bits"].update(stem=5), "'candidates[2].bits'"),
    (lambda gt: gt["candidates"][0].update(test_acc=float("nan")), "'candidates[0].test_acc'"),
    (lambda gt: gt["candidates"][2].update(id="cfg-0000"), "'candidates[2].id'"),
    (lambda gt: gt["params"].pop("stem"), "'params'"),
])
def test_malformed_ground_truth_names_the_file_and_the_field(tiny_build, tmp_path, edit, field):
    root = _corrupt(tiny_build, tmp_path, edit)
    with pytest.raises(GroundTruthError) as err:
        MQDigitsBenchmark(root)
    assert str(root / GT_FILE) in str(err.value) and field in str(err.value)


def test_ground_truth_that_is_not_json_is_reported(tiny_build, tmp_path):
    (tmp_path / GT_FILE).write_text("{not json")
    (tmp_path / WEIGHTS_FILE).write_bytes((tiny_build / WEIGHTS_FILE).read_bytes())
    with pytest.raises(GroundTruthError, match="not valid JSON"):
        MQDigitsBenchmark(tmp_path)


def test_corrupt_weights_are_reported(tiny_build, tmp_path):
    (tmp_path / GT_FILE).write_bytes((tiny_build / GT_FILE).read_bytes())
    (tmp_path / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(GroundTruthError, match=WEIGHTS_FILE):
        MQDigitsBenchmark(tmp_path)


# ----------------------------------------------------------------------------- committed results

COMMITTED = REPO_ROOT / "results" / "mq-digits"


@pytest.mark.skipif(not (COMMITTED / GT_FILE).is_file(), reason="results/mq-digits not built")
def test_committed_benchmark_is_valid_trained_and_spread():
    bench = MQDigitsBenchmark(COMMITTED)
    acc = bench.ground_truth()["test_acc"]
    assert len(bench.candidates()) == 500
    assert bench.gt["float_test_acc"] >= 0.985
    assert acc.max() - acc.min() > 0.3 and np.quantile(acc, 0.75) - np.quantile(acc, 0.25) > 0.05


@pytest.mark.skipif(not (COMMITTED / GT_FILE).is_file(), reason="results/mq-digits not built")
def test_committed_readme_is_the_template_filled_from_the_committed_ground_truth():
    gt = json.loads((COMMITTED / GT_FILE).read_text())
    assert (COMMITTED / README_FILE).read_text() == readme_text(gt)
