"""Specification of the ViT-Bench-101 loader: Auto-Prox's AutoFormer / PiT `.pth` lists, validated."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emq.bench.base import Batch, Candidate
from emq.bench.digits import vit_batch
from emq.bench.vit_bench101 import (
    ACC_COLUMNS, IMG_SIZE, NUM_CLASSES, ViTBench101, find_ground_truth, load_vit_bench_file,
)
from emq.errors import InputFileError
from emq.models.autoformer import count_params
from emq.paths import REPO_ROOT

REAL_DIR = REPO_ROOT.parent / "shared" / "benchmarks"
REAL_AUTOFORMER = REAL_DIR / "vit-bench-101" / "gt_autoformer.pth"

# Small archs keep the 224x224 networks cheap to build in tests.
AF_ARCHS = [
    {"hidden_dim": 24, "depth": 2, "mlp_ratio": [3.5, 4.0], "num_heads": [3, 4]},
    {"hidden_dim": 48, "depth": 1, "mlp_ratio": [4.0], "num_heads": [4]},
]
PIT_ARCHS = [
    {"base_dim": 8, "mlp_ratio": 2, "depth": [1, 1, 1], "num_heads": [2, 2, 4]},
    {"base_dim": 8, "mlp_ratio": 4, "depth": [1, 2, 1], "num_heads": [2, 4, 8]},
]


def _records(archs: list[dict]) -> list[dict]:
    out = []
    for i, arch in enumerate(archs):
        rec = {"arch": arch}
        rec.update({col: 50.0 + i + j for j, col in enumerate(ACC_COLUMNS)})
        out.append(rec)
    return out


def _save(tmp_path: Path, content, name: str = "gt.pth") -> Path:
    path = tmp_path / name
    torch.save(content, path)
    return path


# ----------------------------------------------------------------------------- good files


@pytest.mark.parametrize("archs, space", [(AF_ARCHS, "autoformer"), (PIT_ARCHS, "pit")])
def test_good_file_of_either_space_loads_with_its_space_detected(tmp_path, archs, space):
    loaded = load_vit_bench_file(_save(tmp_path, _records(archs)))
    assert loaded.space == space
    assert loaded.archs == archs
    assert list(loaded.columns) == list(ACC_COLUMNS)
    assert loaded.columns["c100_kd_acc"].tolist() == [51.0, 52.0]
    assert loaded.missing == {} and loaded.ignored == []


@pytest.mark.parametrize("archs, space", [(AF_ARCHS, "autoformer"), (PIT_ARCHS, "pit")])
def test_benchmark_candidates_align_with_ground_truth_and_build(tmp_path, archs, space):
    bench = ViTBench101(_save(tmp_path, _records(archs)), batch_source="digits")
    assert bench.name == f"vit-bench-101-{space}" and bench.family == "vit" and not bench.trained_weights
    cands = bench.candidates()
    assert [c.id for c in cands] == ["arch-000", "arch-001"]
    assert all(isinstance(c, Candidate) and c.arch is not None and c.bits is None for c in cands)
    truth = bench.ground_truth()
    assert all(v.shape == (2,) for v in truth.values())
    batch = bench.batch(seed=0, size=2)
    model = bench.build_model(cands[1], init_seed=0)
    assert not model.training
    assert model(batch.inputs).shape == (2, 100)
    again = bench.build_model(cands[1], init_seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert "parameters" in bench.describe_models()


def test_space_can_be_forced_and_a_mismatch_is_reported(tmp_path):
    path = _save(tmp_path, _records(AF_ARCHS))
    assert load_vit_bench_file(path, space="autoformer").space == "autoformer"
    with pytest.raises(InputFileError, match=r"record 0: field 'arch' is a autoformer arch"):
        load_vit_bench_file(path, space="pit")
    mixed = _save(tmp_path, _records([AF_ARCHS[0], PIT_ARCHS[0]]), "mixed.pth")
    with pytest.raises(InputFileError, match=r"record 1: field 'arch' is a pit arch"):
        load_vit_bench_file(mixed)


def test_none_and_absent_columns_become_nan_and_are_counted(tmp_path):
    recs = _records(AF_ARCHS)
    recs[0]["flower_kd_acc"] = None
    del recs[1]["imagenet_super_acc"]
    recs[1]["extra_acc"] = 12.5
    recs[1]["note"] = "kept out"
    loaded = load_vit_bench_file(_save(tmp_path, recs))
    assert math.isnan(loaded.columns["flower_kd_acc"][0]) and loaded.columns["flower_kd_acc"][1] == 54.0
    assert math.isnan(loaded.columns["imagenet_super_acc"][1])
    assert np.isnan(loaded.columns["extra_acc"][0]) and loaded.columns["extra_acc"][1] == 12.5
    assert loaded.missing == {"flower_kd_acc": 1, "imagenet_super_acc": 1, "extra_acc": 1}
    assert loaded.ignored == ["note"]
    assert "flower_kd_acc=1" in ViTBench101(_save(tmp_path, recs, "b.pth")).describe_models()


# ----------------------------------------------------------------------------- bad records


def _edit(recs: list[dict], i: int, key: str, value) -> list[dict]:
    if key.startswith("arch."):
        recs[i]["arch"][key[5:]] = value
    else:
        recs[i][key] = value
    return recs


@pytest.mark.parametrize("archs, key, value, field", [
    (AF_ARCHS, "arch.hidden_dim", "192", "arch.hidden_dim"),
    (AF_ARCHS, "arch.hidden_dim", True, "arch.hidden_dim"),
    (AF_ARCHS, "arch.depth", 2.0, "arch.depth"),
    (AF_ARCHS, "arch.mlp_ratio", [4.0, 4.0, 4.0], "arch.mlp_ratio"),
    (AF_ARCHS, "arch.mlp_ratio", [4.0, float("nan")], "arch.mlp_ratio"),
    (AF_ARCHS, "arch.mlp_ratio", 4.0, "arch.mlp_ratio"),
    (AF_ARCHS, "arch.num_heads", [3.0], "arch.num_heads"),
    (AF_ARCHS, "arch.num_heads", [5], "arch.num_heads"),
    (AF_ARCHS, "c100_kd_acc", "76.1", "c100_kd_acc"),
    (AF_ARCHS, "c100_kd_acc", float("inf"), "c100_kd_acc"),
    (AF_ARCHS, "c100_kd_acc", 170.0, "c100_kd_acc"),
    (PIT_ARCHS, "arch.depth", [1, 2], "arch.depth"),
    (PIT_ARCHS, "arch.num_heads", [2, 4, "8"], "arch.num_heads"),
    (PIT_ARCHS, "arch.num_heads", [4, 2, 8], "arch.num_heads"),
    (PIT_ARCHS, "arch.mlp_ratio", [2, 4], "arch.mlp_ratio"),
    (PIT_ARCHS, "arch.base_dim", -8, "arch.base_dim"),
])
def test_wrong_types_name_the_file_the_record_index_and_the_field(tmp_path, archs, key, value, field):
    recs = _edit(_records([dict(a) for a in archs]), 1, key, value)
    path = _save(tmp_path, recs)
    with pytest.raises(InputFileError) as err:
        load_vit_bench_file(path)
    message = str(err.value)
    assert str(path) in message and "record 1" in message and f"'{field}'" in message


def test_a_record_that_is_not_a_dict_or_lacks_arch_is_reported(tmp_path):
    with pytest.raises(InputFileError, match=r"record 1: expected a dict"):
        load_vit_bench_file(_save(tmp_path, [_records(AF_ARCHS)[0], [1, 2]]))
    with pytest.raises(InputFileError, match=r"record 0: field 'arch' is missing"):
        load_vit_bench_file(_save(tmp_path, [{"c100_kd_acc": 70.0}], "b.pth"))
    with pytest.raises(InputFileError, match=r"record 0: field 'arch' has neither"):
        load_vit_bench_file(_save(tmp_path, [{"arch": {"depth": 12}, "c100_kd_acc": 70.0}], "c.pth"))


# ----------------------------------------------------------------------------- bad files


def test_missing_file_names_the_path_and_how_to_give_the_folder(tmp_path):
    path = tmp_path / "nowhere" / "gt_autoformer.pth"
    with pytest.raises(InputFileError) as err:
        load_vit_bench_file(path)
    assert str(path) in str(err.value) and "--data-dir" in str(err.value) and "EMQ_DATA_DIR" in str(err.value)
    with pytest.raises(InputFileError, match=r"vit-bench-101/gt_pit.pth.*--data-dir.*EMQ_DATA_DIR"):
        find_ground_truth(tmp_path, "pit")
    with pytest.raises(InputFileError, match="no data folder is set"):
        find_ground_truth(None, "autoformer")


def test_registered_factories_read_the_data_folder(tmp_path):
    import emq.bench.vit_bench101  # noqa: F401  (registers both names)
    from emq.bench.registry import BENCHMARKS

    for name, space in (("vit-bench-101-autoformer", "autoformer"), ("vit-bench-101-pit", "pit")):
        entry = BENCHMARKS[name]
        assert entry.family == "vit" and not entry.embedded
        with pytest.raises(InputFileError, match="EMQ_DATA_DIR"):
            entry.factory(tmp_path)
    folder = tmp_path / "vit-bench-101"
    folder.mkdir()
    torch.save(_records(PIT_ARCHS), folder / "gt_pit.pth")
    assert BENCHMARKS["vit-bench-101-pit"].factory(tmp_path).space == "pit"


@pytest.mark.parametrize("content, match", [
    ({"arch": AF_ARCHS[0]}, "expected a non-empty list"),
    ([], "got an empty list"),
    (torch.zeros(3), "expected a non-empty list"),
])
def test_a_file_that_is_not_a_list_of_records_is_reported(tmp_path, content, match):
    path = _save(tmp_path, content)
    with pytest.raises(InputFileError, match=match) as err:
        load_vit_bench_file(path)
    assert str(path) in str(err.value)


def test_unreadable_files_are_reported_without_running_anything(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(InputFileError, match="cannot be read"):
        load_vit_bench_file(garbage)
    # A pickled object of an arbitrary class is refused by weights_only loading.
    evil = _save(tmp_path, [{"arch": Path("/"), "c100_kd_acc": 1.0}], "evil.pth")
    with pytest.raises(InputFileError, match="refused the global pathlib.*PosixPath") as err:
        load_vit_bench_file(evil)
    assert "weights_only=False" not in str(err.value)  # never point the user at the unsafe option


# ----------------------------------------------------------------------------- batches


def test_digits_batch_is_deterministic_224_rgb_and_recorded():
    a = vit_batch("digits", seed=3, size=4, num_classes=NUM_CLASSES, resolution=IMG_SIZE)
    b = vit_batch("digits", seed=3, size=4, num_classes=NUM_CLASSES, resolution=IMG_SIZE)
    assert isinstance(a, Batch) and a.source == "digits-train-224x224x3" and a.seed == 3
    assert a.inputs.shape == (4, 3, 224, 224) and torch.equal(a.inputs, b.inputs)
    assert torch.equal(a.inputs[:, 0], a.inputs[:, 2])
    assert int(a.labels.max()) < 10


def test_gaussian_batch_source_is_chosen_by_argument_never_by_environment(tmp_path, monkeypatch):
    path = _save(tmp_path, _records(AF_ARCHS))
    monkeypatch.setenv("EMQ_VIT_BATCH", "gaussian")  # the old side channel is ignored
    assert ViTBench101(path).batch_source == "digits"
    bench = ViTBench101(path, batch_source="gaussian")
    batch = bench.batch(seed=1, size=3)
    assert bench.batch_source == "gaussian" and batch.source == "gaussian-224x224x3"
    assert batch.inputs.shape == (3, 3, 224, 224) and torch.equal(batch.inputs, bench.batch(seed=1, size=3).inputs)
    assert abs(float(batch.inputs.std()) - 1.0) < 0.01
    assert ViTBench101(path, batch_source="digits").batch(0, 2).source.startswith("digits")
    with pytest.raises(ValueError, match="digits, gaussian"):
        ViTBench101(path, batch_source="imagenet")


def test_benchmark_options_are_arguments_checked_against_the_registry():
    from emq.bench.registry import BenchmarkOptionError, get_benchmark

    with pytest.raises(BenchmarkOptionError, match="does not take option 'batch_source'"):
        get_benchmark("mq-digits", batch_source="gaussian")


def test_cache_token_follows_the_file_content(tmp_path):
    a = ViTBench101(_save(tmp_path, _records(AF_ARCHS)))
    b = ViTBench101(_save(tmp_path, _records(AF_ARCHS[::-1]), "b.pth"))
    assert a.cache_token != b.cache_token


# ----------------------------------------------------------------------------- the public file


def test_real_autoformer_file_loads_100_records():
    if not REAL_AUTOFORMER.is_file():
        pytest.skip(f"public ViT-Bench-101 file absent: {REAL_AUTOFORMER}")
    bench = ViTBench101(find_ground_truth(REAL_DIR, "autoformer"))
    assert bench.space == "autoformer" and len(bench.candidates()) == 100
    truth = bench.ground_truth()
    assert list(truth) == list(ACC_COLUMNS) and all(np.isfinite(v).all() for v in truth.values())
    assert 75.0 < truth["c100_kd_acc"].min() < truth["c100_kd_acc"].max() < 79.0
    arch = bench.candidates()[0].arch
    assert arch["hidden_dim"] in (192, 216, 240) and len(arch["num_heads"]) == arch["depth"]
    with torch.device("meta"):
        assert count_params(bench.build_model(bench.candidates()[0])) == 5_321_956
