"""Specification of NAS-Bench-201: the restricted reading of analog-nasbench's pickle, the network, cells, batches."""
from __future__ import annotations

import importlib.metadata
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from emq.bench import nb201 as nb
from emq.bench.nb201_cells import all_cells, canonical_form, is_degenerate, op_counts, unique_cells
from emq.bench.safe_pickle import UnsafePickleError
from emq.errors import InputFileError
from emq.models.nb201 import analytic_param_count, count_params, nb201

try:
    importlib.metadata.distribution(nb.DISTRIBUTION)
    HAVE_PACKAGE = True
except importlib.metadata.PackageNotFoundError:
    HAVE_PACKAGE = False
needs_package = pytest.mark.skipif(not HAVE_PACKAGE, reason='analog-nasbench is not installed (pip install -e ".[nb201]")')


# ------------------------------------------------------------- hand-made pickles (no package needed)
class Obj:
    """A pickled object to emit: global (module, name), constructor args (None: NEWOBJ without args), state."""

    def __init__(self, module: str, name: str, state: dict | None = None, reduce_args: tuple | None = None) -> None:
        self.module, self.name, self.state, self.reduce_args = module, name, state, reduce_args


def _emit(value) -> bytes:
    """Return protocol-2 opcodes building `value` (dicts, tuples, scalars, Obj), no STOP."""
    if isinstance(value, Obj):
        glob = b"c" + value.module.encode() + b"\n" + value.name.encode() + b"\n"
        if value.reduce_args is not None:  # REDUCE: calls the global with arguments
            return glob + _emit(value.reduce_args) + b"R"
        out = glob + b")\x81"  # EMPTY_TUPLE, NEWOBJ
        return out + (_emit(value.state) + b"b" if value.state is not None else b"")
    if isinstance(value, dict):
        return b"}(" + b"".join(_emit(k) + _emit(v) for k, v in value.items()) + b"u"
    if isinstance(value, tuple):
        return b"(" + b"".join(_emit(v) for v in value) + b"t"
    return pickle.dumps(value, 2)[2:-1]


def _write(tmp_path: Path, content, name: str = "data.anb") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\x80\x02" + _emit(content) + b".")
    return path


def _drift(value: float) -> Obj:
    return Obj("analognasbench.data", "DriftMeasurement", {"value": value, "uncertainty": 0.5})


def _arch(cell: tuple, fp: float = 90.0, ptq: float = 89.0, analog: bool = True, **override) -> Obj:
    state = {"architecture": cell, "baseline_accuracy": fp, "ptq_accuracy": ptq, "qat_accuracy": fp - 2}
    if analog:
        state.update({"noisy_accuracy": 50.0, "analog_accuracy": 80.0})
        state.update({name: _drift(70.0) for name in nb.DRIFT_FIELDS})
    state.update(override)
    return Obj("analognasbench.data", "Architecture", state)


CELLS = [(2, 2, 0, 2, 3, 2), (0, 0, 0, 0, 0, 0), (1, 1, 1, 1, 1, 1)]


def _good(tmp_path: Path) -> Path:
    return _write(tmp_path, {CELLS[0]: _arch(CELLS[0], 94.0, 93.5), CELLS[1]: _arch(CELLS[1], 60.0, 59.0, analog=False),
                             CELLS[2]: _arch(CELLS[2], 10.0, 10.0)})


def _load(path: Path) -> nb.NB201File:
    return nb.load_nb201_file(path, expected_sha256=None, require_all_cells=False)


def test_the_two_package_classes_load_as_plain_records_with_validated_columns(tmp_path):
    loaded = _load(_good(tmp_path))
    assert loaded.cells == sorted(CELLS)
    row = loaded.cells.index(CELLS[0])
    assert loaded.columns["fp_acc"][row] == 94.0 and loaded.columns["ptq_acc"][row] == 93.5
    assert loaded.columns["ptq_drop"][row] == pytest.approx(0.5)
    assert loaded.columns["qat_acc"][row] == 92.0
    assert loaded.columns["fp_drift_1d"][row] == 70.0
    # Analog columns are optional: a record without them gives NaN there.
    assert math.isnan(loaded.columns["analog_acc"][loaded.cells.index(CELLS[1])])


def test_a_foreign_global_is_refused_naming_file_and_global_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path, {CELLS[0]: Obj("os", "system", reduce_args=(f"touch {marker}",))})
    with pytest.raises(UnsafePickleError) as err:
        _load(path)
    message = str(err.value)
    assert str(path) in message and "os.system" in message and "\n" not in message
    assert not marker.exists()


def test_another_class_of_the_package_is_refused_too(tmp_path):
    path = _write(tmp_path, {CELLS[0]: Obj("analognasbench.data", "AnalogNASBench", {})})
    with pytest.raises(UnsafePickleError, match="analognasbench.data.AnalogNASBench"):
        _load(path)


def test_a_record_class_called_with_arguments_is_refused(tmp_path):
    path = _write(tmp_path, {CELLS[0]: Obj("analognasbench.data", "Architecture", reduce_args=(1, 2))})
    with pytest.raises(InputFileError, match=str(path)):
        _load(path)


def test_a_truncated_file_is_refused_in_one_line_naming_the_file(tmp_path):
    path = _good(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputFileError) as err:
        _load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_modified_file_is_refused_by_its_digest(tmp_path):
    with pytest.raises(InputFileError, match="modified"):
        nb.load_nb201_file(_good(tmp_path), expected_sha256="0" * 64, require_all_cells=False)


@pytest.mark.parametrize("content, match", [
    ({(2, 2, 0, 2, 3): _arch((2, 2, 0, 2, 3))}, "not a cell"),
    ({(2, 2, 0, 2, 3, 5): _arch((2, 2, 0, 2, 3, 5))}, "not a cell"),
    ({CELLS[0]: _arch(CELLS[1])}, "architecture"),
    ({CELLS[0]: _arch(CELLS[0], fp=101.0)}, "baseline_accuracy"),
    ({CELLS[0]: _arch(CELLS[0], ptq=float("nan"))}, "ptq_accuracy"),
    ({CELLS[0]: _arch(CELLS[0], baseline_drift_60=3.0)}, "DriftMeasurement"),
    ({CELLS[0]: {"baseline_accuracy": 90.0}}, "Architecture record"),
])
def test_every_record_is_validated(tmp_path, content, match):
    with pytest.raises(InputFileError, match=match):
        _load(_write(tmp_path, content))


def test_the_benchmark_needs_all_15625_cells(tmp_path):
    with pytest.raises(InputFileError, match="15625"):
        nb.load_nb201_file(_good(tmp_path), expected_sha256=None)


def _hide_package(monkeypatch) -> None:
    """Make importlib.metadata report analog-nasbench as not installed (other distributions stay visible)."""
    real = importlib.metadata.distribution

    def distribution(name):
        if name == nb.DISTRIBUTION:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    _hide_package(monkeypatch)
    with pytest.raises(InputFileError, match=r'pip install -e "\.\[nb201\]"') as err:
        nb.find_data_file()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------- cells
def test_the_space_has_15625_cells_4930_isomorphism_classes_and_341_degenerate_cells():
    cells = all_cells()
    assert len(cells) == 15625 and len(set(cells)) == 15625
    assert len(unique_cells(cells)) == 4930
    assert sum(is_degenerate(c) for c in cells) == 341


def test_isomorphic_cells_share_a_canonical_form():
    # conv on 0->1 then skip 1->3, versus conv straight on 0->3: both output conv3x3(x).
    assert canonical_form((2, 1, 1, 1, 0, 1)) == canonical_form((1, 1, 2, 1, 1, 1)) == "conv3x3(x)"
    assert canonical_form((2, 0, 1, 0, 1, 4)) == "avgpool3x3(conv3x3(x)+x)"
    assert canonical_form((1, 1, 1, 2, 2, 2)) == "0"  # nothing leaves the input
    assert canonical_form((2, 2, 1, 2, 1, 1)) == "0"  # nothing reaches the output


def test_op_counts_are_the_numeric_arch_fields():
    counts = op_counts((2, 2, 0, 2, 3, 2))
    assert counts == {"n_conv3x3": 4, "n_conv1x1": 1, "n_skip": 1, "n_pool": 0, "n_zero": 0}
    arch = nb.cell_arch((2, 2, 0, 2, 3, 2))
    assert arch["ops"] == ["conv3x3", "conv3x3", "skip", "conv3x3", "conv1x1", "conv3x3"]
    assert nb.arch_cell(arch) == (2, 2, 0, 2, 3, 2)


# ------------------------------------------------------------------------------ network
@pytest.mark.parametrize("cell", [(2,) * 6, (3,) * 6, (0,) * 6, (1,) * 6, (4,) * 6, (2, 2, 0, 2, 3, 2), (3, 4, 1, 0, 3, 2)])
def test_parameter_count_matches_the_analytic_formula(cell):
    with torch.device("meta"):
        built = count_params(nb201(cell))
    assert built == analytic_param_count(cell) == 73306 + 243040 * cell.count(2) + 28000 * cell.count(3)


def test_the_all_conv3x3_network_has_nb201s_largest_size():
    assert analytic_param_count((2,) * 6) == 1531546  # NB201 reports 1.53 M on CIFAR-10


def test_forward_gives_ten_logits_per_image_and_layers_are_named():
    net = nb201((3, 1, 0, 1, 3, 1), init_seed=1)  # 1x1 convs keep the test fast
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    names = {n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {"stem.conv", "stage1.cell0.edge0to1.conv", "stage3.cell4.edge1to3.conv", "reduce1.conv_a.conv",
            "reduce2.shortcut.conv", "classifier"} <= names
    assert "stage1.cell0.edge0to3.conv" not in names  # edge 0->3 is a skip


def test_a_degenerate_cell_network_ignores_its_input():
    net = nb201((2, 2, 1, 2, 1, 1))  # the three edges into the output (0->3, 1->3, 2->3) are zeroized
    with torch.no_grad():
        a, b = net(torch.randn(2, 3, 32, 32)), net(torch.randn(2, 3, 32, 32))
    assert torch.equal(a, b)


def test_jacov_ranks_a_cell_that_ignores_its_input_last_instead_of_undefined():
    from emq.baselines import BaselineContext, get_baseline
    from emq.bench.base import Batch

    batch = Batch(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), "test", 0)
    fn = get_baseline("jacov").fn
    ctx = BaselineContext(torch.device("cpu"), 0, None)
    dead, alive = fn(nb201((2, 2, 1, 2, 1, 1)), batch, None, ctx), fn(nb201((2, 2, 2, 2, 2, 2)), batch, None, ctx)
    assert dead == -math.inf and math.isfinite(alive)


def test_the_same_init_seed_gives_the_same_weights_whatever_ran_before():
    first = nb201((2, 3, 4, 0, 2, 3), init_seed=5).state_dict()
    torch.randn(100)
    second = nb201((2, 3, 4, 0, 2, 3), init_seed=5).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("source, label", [("photos", "sklearn-photo-crops"), ("digits", "digits-train"),
                                           ("gaussian", "gaussian")])
def test_each_batch_source_is_deterministic_and_recorded(source, label):
    one, again, other = nb.nb201_batch(source, 0, 8), nb.nb201_batch(source, 0, 8), nb.nb201_batch(source, 1, 8)
    assert one.inputs.shape == (8, 3, 32, 32) and one.labels.shape == (8,)
    assert torch.equal(one.inputs, again.inputs) and torch.equal(one.labels, again.labels)
    assert not torch.equal(one.inputs, other.inputs)
    assert one.source.startswith(label) and one.seed == 0
    assert int(one.labels.min()) >= 0 and int(one.labels.max()) <= 9
    assert torch.isfinite(one.inputs).all()


def test_photo_crops_are_normalised_natural_images():
    x = nb.nb201_batch("photos", 0, 64).inputs
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5


def test_an_unknown_batch_source_fails_listing_the_sources():
    with pytest.raises(ValueError, match="photos, digits, gaussian"):
        nb.nb201_batch("cifar", 0, 4)


# --------------------------------------------------------------------- the installed data file
@pytest.fixture(scope="module")
def bench() -> nb.NB201Benchmark:
    return nb.NB201Benchmark()


@needs_package
def test_the_installed_file_holds_the_documented_facts(bench):
    truth = bench.ground_truth()
    assert list(truth) == ["fp_acc", "ptq_acc", "qat_acc", "ptq_drop"]
    cands = bench.candidates()
    assert len(cands) == 15625
    fp = truth["fp_acc"]

    def acc(cell):
        return fp[cands.index(bench.candidate_of(cell))]

    best = cands[int(np.argmax(fp))]
    assert best.id == "cell-220232" and round(float(fp.max()), 2) == 94.07
    assert round(float(acc((2,) * 6)), 2) == 93.24 and round(float(acc((0,) * 6)), 2) == 60.78
    degenerate = bench.degenerate_mask()
    assert degenerate.sum() == 341
    assert np.all(fp[degenerate] == 10.0) and np.all(fp[~degenerate] > 10.0)
    drop = truth["ptq_drop"]
    assert round(float(np.median(drop)), 2) == 0.38 and round(float(np.quantile(drop, 0.9)), 1) == 2.5


@needs_package
def test_analytic_params_rank_fp_accuracy_as_documented(bench):
    from scipy.stats import kendalltau, spearmanr

    params = [analytic_param_count(bench.cell(c)) for c in bench.candidates()]
    fp = bench.ground_truth()["fp_acc"]
    assert round(kendalltau(params, fp)[0], 3) == 0.568 and round(spearmanr(params, fp)[0], 3) == 0.744


@needs_package
def test_the_benchmark_is_registered_in_family_nas_with_the_generic_baselines():
    from emq.baselines import applicable_baselines
    from emq.bench.registry import list_benchmarks

    entry = next(e for e in list_benchmarks() if e.name == "nas-bench-201")
    assert entry.family == "nas"
    assert {"params", "flops", "synflow", "snip", "grad_norm", "nwot", "jacov", "grasp", "fisher"} <= set(
        applicable_baselines("nas"))
    assert not {"hawq", "bops", "dss", "attn_entropy"} & set(applicable_baselines("nas"))


@needs_package
def test_options_add_analog_columns_and_keep_one_cell_per_isomorphism_class():
    unique = nb.NB201Benchmark(unique=True, analog=True, batch_source="gaussian")
    assert len(unique.candidates()) == 4930
    assert {"analog_acc", "noisy_acc", "fp_drift_30d", "analog_drift_60s"} <= set(unique.ground_truth())
    assert unique.batch(0, 4).source.startswith("gaussian")
    with pytest.raises(ValueError, match="isomorphic"):
        unique.candidate_of((1, 1, 2, 1, 1, 1))  # same class as (2, 1, 1, 1, 0, 1), which comes first


@needs_package
def test_an_unknown_cell_gets_a_clear_error(bench):
    with pytest.raises(ValueError, match="6 op ids in 0..4"):
        bench.candidate_of((2, 2, 0, 2, 3, 7))


@needs_package
def test_candidates_build_their_cells_network(bench):
    cand = bench.candidate_of((2, 2, 0, 2, 3, 2))
    assert cand.id == "cell-220232" and cand.arch["n_conv3x3"] == 4
    with torch.device("meta"):
        assert count_params(bench.build_model(cand)) == 1073466


def test_the_cli_reports_a_missing_package_in_one_line(run, monkeypatch):
    _hide_package(monkeypatch)
    result = run("bench", "show", "nas-bench-201")
    assert result.exit_code != 0 and 'pip install -e ".[nb201]"' in result.output
    assert "Traceback" not in result.output


@needs_package
def test_bench_show_summarises_the_benchmark(run):
    result = run("bench", "show", "nas-bench-201", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "15625 candidates" in result.output and "341 degenerate cells" in result.output


def test_a_self_referencing_record_is_refused_without_looping(tmp_path):
    # EMPTY_DICT MEMOIZE-by-BINPUT 0 ... the record's state holds the top-level dict itself (BINGET 0).
    path = tmp_path / "cycle.anb"
    record = b"canalognasbench.data\nArchitecture\n)\x81}(X\x0c\x00\x00\x00architectureh\x00ub"
    path.write_bytes(b"\x80\x02}q\x00(" + _emit(CELLS[0]) + record + b"u.")
    with pytest.raises(InputFileError, match="architecture"):
        _load(path)
