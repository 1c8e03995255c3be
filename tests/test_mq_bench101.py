"""Specification of the MQ-Bench-101 loader: safe pickle reading, validation, ResNet-18 bit mapping."""
from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from emq.bench.base import Batch, Candidate
from emq.bench.mq_bench101 import (
    BIT_CFG_LENGTH, EMQ_RESNET18_SLOTS, MQBench101, MQBenchFileError, bits_from_bit_cfg, load_mq_bench101,
    parse_bit_cfg,
)
from emq.bench.safe_pickle import UnsafePickleError, load_plain_pickle
from emq.models.resnet import ResNet18, resnet18
from emq.quant.layers import check_bit_assignment, quantizable_layers

CFG_A = [4, 4, 2, 2, 4, 2, 3, 3, 3, 3, 2, 2, 3, 3, 3, 3, 4, 3]
CFG_B = [8, 3, 3, 4, 4, 4, 4, 4, 4, 4, 3, 3, 4, 4, 3, 3, 3, 2]
CFG_C = [2] * 18


def _records() -> dict:
    return {0: {"bit_cfg": str(CFG_A), "acc": 61.25}, 1: {"bit_cfg": str(CFG_B), "acc": 68.5},
            2: {"bit_cfg": str(CFG_C), "acc": 0.1}}


def _write_pickle(folder: Path, content, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path = folder / "mq-bench-101" / "PTQ-GT.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


def _write_json(folder: Path, content) -> Path:
    path = folder / "mq-bench-101" / "PTQ-GT.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_of_plain_data_loads_at_every_protocol(tmp_path, protocol):
    path = _write_pickle(tmp_path, _records(), protocol)
    records = load_mq_bench101(path)
    assert [r.idx for r in records] == ["0", "1", "2"]
    assert records[0].bit_cfg == tuple(CFG_A) and records[1].acc == 68.5


def test_json_and_pickle_of_the_same_content_give_the_same_records(tmp_path):
    from_pkl = load_mq_bench101(_write_pickle(tmp_path / "p", _records()))
    from_json = load_mq_bench101(_write_json(tmp_path / "j", _records()))
    assert from_pkl == from_json


def test_string_indices_and_list_bit_cfgs_are_accepted(tmp_path):
    content = {"7": {"bit_cfg": CFG_A, "acc": 70}, "x1": {"bit_cfg": tuple(CFG_B), "acc": 50.5}}
    records = load_mq_bench101(_write_pickle(tmp_path, content))
    assert [r.idx for r in records] == ["7", "x1"] and records[1].bit_cfg == tuple(CFG_B)


def test_parse_bit_cfg_reads_emq_strings_without_eval():
    assert parse_bit_cfg("[4, 3, 2]") == [4, 3, 2]
    assert parse_bit_cfg("(4, 3)") == [4, 3]
    with pytest.raises(ValueError):
        parse_bit_cfg("__import__('os').system('true')")


# ----------------------------------------------------------------------------- refusing code


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class _Record:
    bit_cfg: str
    acc: float


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "executed"
    path = _write_pickle(tmp_path, {0: {"bit_cfg": str(CFG_A), "acc": _Evil(marker)}}, protocol)
    with pytest.raises(UnsafePickleError, match=r"refusing to load the global (posix|os|nt)\.system") as err:
        load_mq_bench101(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_pickle_of_a_class_instance_is_refused(tmp_path):
    path = _write_pickle(tmp_path, {0: _Record(str(CFG_A), 60.0)})
    with pytest.raises(UnsafePickleError, match="_Record"):
        load_mq_bench101(path)


@pytest.mark.parametrize("value, kind", [({1, 2}, "set"), (b"raw", "bytes"), (frozenset([1]), "frozenset")])
def test_non_plain_values_are_refused_even_without_globals(value, kind):
    blob = pickle.dumps({"k": value}, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UnsafePickleError, match=kind):
        load_plain_pickle(blob)


def test_persistent_ids_are_refused():
    import io

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "pid" if obj == "secret" else None

    buf = io.BytesIO()
    P(buf).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load_plain_pickle(buf.getvalue())


# ----------------------------------------------------------------------------- validation


def test_wrong_bit_list_length_names_the_record_and_the_expected_length(tmp_path):
    content = _records()
    content[1]["bit_cfg"] = str(CFG_B[:17])
    path = _write_pickle(tmp_path, content)
    with pytest.raises(MQBenchFileError) as err:
        load_mq_bench101(path)
    msg = str(err.value)
    assert str(path) in msg and "record 1" in msg and "17 entries, expected 18" in msg
    assert "downsample" in msg  # the error explains the mapping


@pytest.mark.parametrize("bad_cfg", ["[4, 3, oops]", str([0] + CFG_A[1:]), str([33] + CFG_A[1:]),
                                     str([True] + CFG_A[1:]), str([4.0] + CFG_A[1:]), "42"])
def test_bad_bit_cfg_names_the_record(tmp_path, bad_cfg):
    content = _records()
    content[2]["bit_cfg"] = bad_cfg
    with pytest.raises(MQBenchFileError, match="record 2"):
        load_mq_bench101(_write_json(tmp_path, {str(k): v for k, v in content.items()}))


@pytest.mark.parametrize("bad_acc", [math.nan, math.inf, -1.0, 100.5, "68.1", None])
def test_bad_accuracy_names_the_record(tmp_path, bad_acc):
    content = _records()
    content[0]["acc"] = bad_acc
    with pytest.raises(MQBenchFileError, match=r"record 0: acc must be a finite number in \[0, 100\]"):
        load_mq_bench101(_write_pickle(tmp_path, content))


@pytest.mark.parametrize("content, needle", [
    ([1, 2], "expected a non-empty mapping"),
    ({}, "expected a non-empty mapping"),
    ({0: {"acc": 1.0}}, "record 0: expected"),
    ({0: [CFG_A, 1.0]}, "record 0: expected"),
    ({1: {"bit_cfg": CFG_A, "acc": 1.0}, "1": {"bit_cfg": CFG_B, "acc": 2.0}}, "appears twice"),
])
def test_malformed_structure_is_reported(tmp_path, content, needle):
    with pytest.raises(MQBenchFileError, match=needle):
        load_mq_bench101(_write_pickle(tmp_path, content))


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = _write_pickle(tmp_path, _records())
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(MQBenchFileError, match="not a readable pickle") as err:
        load_mq_bench101(path)
    assert str(path) in str(err.value)


def test_garbage_pickle_is_a_clear_error(tmp_path):
    path = _write_pickle(tmp_path, _records())
    path.write_bytes(b"\x00\x01 this is not a pickle")
    with pytest.raises(MQBenchFileError, match=str(path)):
        load_mq_bench101(path)


def test_corrupt_json_is_a_clear_error(tmp_path):
    path = _write_json(tmp_path, _records())
    path.write_text('{"0": {"bit_cfg": ')
    with pytest.raises(MQBenchFileError, match="not valid JSON"):
        load_mq_bench101(path)


def test_missing_file_names_the_expected_path_and_how_to_set_it(tmp_path):
    with pytest.raises(MQBenchFileError) as err:
        MQBench101(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "mq-bench-101" / "PTQ-GT.pkl") in msg and "--data-dir" in msg and "EMQ_DATA_DIR" in msg
    with pytest.raises(MQBenchFileError, match="EMQ_DATA_DIR"):
        MQBench101(None)


# ----------------------------------------------------------------------------- ResNet-18 mapping


def test_resnet18_has_torchvision_names():
    model = ResNet18()
    keys = list(model.state_dict())
    assert len(keys) == 122  # torchvision's resnet18 state dict
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer4.1.bn2.num_batches_tracked",
            "fc.bias"} <= set(keys)
    assert len(quantizable_layers(model)) == 21
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_bit_cfg_maps_onto_every_resnet18_layer():
    bits = bits_from_bit_cfg(list(range(1, 19)))
    assert set(bits) == set(quantizable_layers(resnet18()))
    assert bits["conv1"] == 1 and bits["fc"] == 18
    assert bits["layer1.0.conv1"] == 2 and bits["layer1.1.conv2"] == 5
    for stage, slot in ((2, 7), (3, 11), (4, 15)):
        assert bits[f"layer{stage}.0.conv2"] == bits[f"layer{stage}.0.downsample.0"] == slot
    assert bits["layer4.1.conv2"] == 17
    assert len(EMQ_RESNET18_SLOTS) == BIT_CFG_LENGTH == 18


def test_bits_from_bit_cfg_rejects_other_lengths_with_the_mapping():
    with pytest.raises(ValueError, match="expected 18"):
        bits_from_bit_cfg([4] * 21)


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_exposes_candidates_ground_truth_and_a_224_batch(tmp_path):
    _write_pickle(tmp_path, _records())
    bench = MQBench101(tmp_path)
    cands = bench.candidates()
    assert [c.id for c in cands] == ["0", "1", "2"] and all(isinstance(c, Candidate) for c in cands)
    assert cands[0].bits == bits_from_bit_cfg(CFG_A)
    assert bench.ground_truth()["top1"].tolist() == [61.25, 68.5, 0.1]
    assert bench.acc_unit == "percent" and bench.family == "mq" and not bench.trained_weights
    batch = bench.batch(seed=1, size=4)
    assert isinstance(batch, Batch) and batch.source == "digits-train-224x224x3" and batch.seed == 1
    assert batch.inputs.shape == (4, 3, 224, 224) and batch.labels.max() < 10
    assert torch.equal(batch.inputs, bench.batch(seed=1, size=4).inputs)
    assert bench.calibration_inputs().shape == (32, 3, 224, 224)


def test_json_file_is_used_when_there_is_no_pickle(tmp_path):
    _write_json(tmp_path, {str(k): v for k, v in _records().items()})
    assert MQBench101(tmp_path).path.name == "PTQ-GT.json"


def test_build_model_is_a_folded_seeded_resnet18_matching_the_bits(tmp_path):
    _write_pickle(tmp_path, _records())
    bench = MQBench101(tmp_path)
    cand = bench.candidates()[0]
    m1, m2, m3 = bench.build_model(cand, 0), bench.build_model(cand, 0), bench.build_model(cand, 1)
    assert not m1.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in m1.modules())
    check_bit_assignment(m1, cand.bits)
    assert torch.equal(m1.conv1.weight, m2.conv1.weight) and not torch.equal(m1.conv1.weight, m3.conv1.weight)
    with torch.no_grad():
        assert m1(bench.batch(0, 2).inputs).shape == (2, 1000)


def test_random_init_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    resnet18(init_seed=3)
    assert torch.equal(torch.rand(1), expected)


def test_weights_beside_the_ground_truth_are_loaded_safely(tmp_path):
    gt = _write_pickle(tmp_path, _records())
    trained = resnet18(init_seed=5, fold_bn=False)
    torch.save(trained.state_dict(), gt.parent / "resnet18.pth")
    bench = MQBench101(tmp_path)
    assert bench.trained_weights
    model = bench.build_model(bench.candidates()[0], init_seed=0)
    reference = resnet18(init_seed=5)  # folded
    torch.testing.assert_close(model.layer3[0].conv2.weight, reference.layer3[0].conv2.weight)
    torch.testing.assert_close(model.fc.bias, reference.fc.bias)


def test_registered_as_a_public_mq_benchmark():
    from emq.bench.registry import BENCHMARKS

    entry = BENCHMARKS["mq-bench-101"]
    assert entry.family == "mq" and not entry.embedded


# ----------------------------------------------------------------------------- statistics cache keys
class _CountingCompute:
    """Wraps `compute_stats` in the cache module and counts the candidates it computes."""

    def __init__(self, monkeypatch) -> None:
        import emq.stats.cache as stats_cache

        self.calls = 0
        real = stats_cache.compute_stats

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(stats_cache, "compute_stats", counted)


def _quant_error(tmp_path, data_dir, config) -> float:
    from emq.stats.cache import load_or_compute

    bench = MQBench101(data_dir)
    stats = load_or_compute(bench, bench.candidates()[:1], config, progress=False, cache_root=tmp_path / "cache")
    return float(stats[0].layers["layer1.0.conv1"]["quant_error"].float().abs().sum())


def test_each_input_of_the_statistics_changes_the_cache_key(tmp_path, monkeypatch):
    """A second file reusing record ids, new weights, or other settings is recomputed, never read stale."""
    from emq.stats.config import StatsConfig

    counter = _CountingCompute(monkeypatch)
    config = StatsConfig(batch_size=2, stat_names=("weight", "quant_error"), store_dtype="float32")
    a, b = tmp_path / "a", tmp_path / "b"
    _write_pickle(a, {0: {"bit_cfg": str([8] * 18), "acc": 70.0}})
    _write_pickle(b, {0: {"bit_cfg": str([2] * 18), "acc": 70.0}})  # the same id, another configuration
    at_8 = _quant_error(tmp_path, a, config)
    assert counter.calls == 1
    assert _quant_error(tmp_path, a, config) == at_8 and counter.calls == 1  # a hit: nothing computed
    at_2 = _quant_error(tmp_path, b, config)
    assert counter.calls == 2 and at_2 > at_8 * 4  # 2 bits err far more than 8: b's own statistics
    _write_pickle(b, {0: {"bit_cfg": str([2] * 18), "acc": 10.0}})  # the file's content changed
    _quant_error(tmp_path, b, config)
    assert counter.calls == 3
    torch.save(resnet18(init_seed=5, fold_bn=False).state_dict(), b / "mq-bench-101" / "resnet18.pth")
    _quant_error(tmp_path, b, config)  # trained weights beside the file
    assert counter.calls == 4
    for changed in (dict(batch_seed=1), dict(init_seed=1), dict(batch_size=3), dict(store_dtype="float16"),
                    dict(stat_names=("weight", "quant_error", "params"))):
        before = counter.calls
        _quant_error(tmp_path, b, StatsConfig(**{**config.__dict__, **changed}))
        assert counter.calls == before + 1, changed
