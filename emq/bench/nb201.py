"""NAS-Bench-201 (CIFAR-10) with full-precision, int8-PTQ and QAT ground truth, from the `analog-nasbench` wheel.

The ground truth: the optional extra `nb201` (`pip install -e ".[nb201]"`) installs
`analog-nasbench==0.1.3` (Apache-2.0, IBM's analog-nas repository), whose wheel
ships `analognasbench/data.anb`: a pickle of a dict from each of the 15,625 NB201
cells (a 6-tuple of op ids, `emq.models.nb201`) to an `analognasbench.data.Architecture`
object holding CIFAR-10 accuracies (percent) after 200 epochs. The file is found
through the distribution's file list (`importlib.metadata`), so none of the
package's code is imported; its own loader would need pandas and `pkg_resources`.

Reading it safely: `emq.bench.safe_pickle.load_record_pickle` maps exactly the two
globals `analognasbench.data.Architecture` and `analognasbench.data.DriftMeasurement`
to the plain records below and refuses every other global with a one-line error
naming the file and the global; a truncated or corrupt file is refused naming the
file. Every record is then validated (key = a 6-tuple of op ids in 0..4 that equals
the record's `architecture`; accuracies finite in [0, 100]), all 15,625 cells must be
present, and the file's sha256 must be that of analog-nasbench 0.1.3's, so a modified
file is refused too.

Columns (percent, aligned with `candidates()`):
- `fp_acc` (full precision, the package's `baseline_accuracy`; the default target),
  `ptq_acc` (int8 post-training quantization, torch fx x86 default qconfig),
  `qat_acc` (quantization-aware training), and `ptq_drop` = fp_acc - ptq_acc
  (higher = *more* accuracy lost to int8; a proxy of robustness ranks it negatively);
- with `analog=True` also `noisy_acc`, `analog_acc` and the drift accuracies of the
  full-precision-trained (`fp_drift_*`) and analog-trained (`analog_drift_*`) networks
  after 60 s, 1 h, 1 d and 30 d (their uncertainties are not kept).

Isomorphic and degenerate cells: as the benchmark and the zero-cost-proxy literature
(Abdelfattah et al., ICLR 2021; Mellor et al., ICML 2021) do, all 15,625 cells are
candidates by default, even though many compute the same function. The 341 cells (2.2%)
whose output does not depend on their input (no path input -> output avoiding
zeroize; `emq.bench.nb201_cells`) all score exactly 10.0% on every column; they are
kept and flagged (`degenerate_mask()`), since a proxy should rank them last. With
`unique=True` the benchmark keeps one cell per isomorphism class instead (4,930
cells, the lexicographically first of each class; see `nb201_cells` for the rule
and why it differs from the NB201 paper's 6,466).

Candidates: id `cell-<6 op ids>` (e.g. `cell-220232`), arch `{"ops": [6 op names],
"n_conv3x3", "n_conv1x1", "n_skip", "n_pool", "n_zero"}`: the op counts are the
numeric architecture hyperparameters (trivial predictors). Networks are
random-initialised (seeded by `init_seed`), 32x32x3 input, 10 classes.

The input batch (CIFAR-10 is not available offline), chosen with `batch_source`
and recorded in `Batch.source`:
- `"photos"` (default): random 32x32 crops of the photos bundled in scikit-learn's
  wheel (`emq.bench.sample_images`), seeded uniform labels 0..9;
- `"digits"`: the embedded digits train split (`emq.bench.digits`) upsampled
  bilinearly to 32x32, replicated to 3 channels; labels are the digits;
- `"gaussian"`: N(0, 1) images, seeded uniform labels 0..9.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emq.bench.base import Batch, Benchmark, Candidate
from emq.bench.digits import vit_batch
from emq.bench.nb201_cells import all_cells, canonical_form, is_degenerate, op_counts, unique_cells
from emq.bench.registry import register_benchmark
from emq.bench.safe_pickle import PickledRecord, load_record_pickle
from emq.bench.sample_images import photo_crops
from emq.errors import InputFileError
from emq.models.nb201 import IMG_SIZE, NUM_CLASSES, OP_NAMES, check_cell, count_params, nb201

BENCH_NAME = "nas-bench-201"
DISTRIBUTION = "analog-nasbench"
DATA_FILE = "analognasbench/data.anb"
#: sha256 of analog-nasbench 0.1.3's data.anb: any other content is refused as modified.
DATA_SHA256 = "85f3435b877aa2d36268d55ce07f6ff6d73643d17a840f1941745da5eb80db32"
INSTALL_HINT = 'pip install -e ".[nb201]"  (installs analog-nasbench==0.1.3)'
NUM_CELLS = 5 ** 6
BATCH_SOURCES = ("photos", "digits", "gaussian")
DEFAULT_BATCH_SOURCE = "photos"
#: Bump when the network builder changes: cached statistics of the old networks are then not reused.
NETWORK_VERSION = "nb201-net/2"  # 2: BatchNorm on batch statistics (emq/models/nb201.py)

#: Package field -> column, for the columns always present.
CORE_FIELDS = {"baseline_accuracy": "fp_acc", "ptq_accuracy": "ptq_acc", "qat_accuracy": "qat_acc"}
#: Package field -> column, for the analog columns (`analog=True`).
ANALOG_FIELDS = {"noisy_accuracy": "noisy_acc", "analog_accuracy": "analog_acc"}
DRIFT_FIELDS = {f"{kind}_drift_{seconds}": f"{name}_drift_{label}"
                for kind, name in (("baseline", "fp"), ("analog", "analog"))
                for seconds, label in ((60, "60s"), (3600, "1h"), (86400, "1d"), (2592000, "30d"))}


class ArchitectureRecord(PickledRecord):
    """Stands in for `analognasbench.data.Architecture`: its pickled attributes, as plain fields."""

    __slots__ = ()


class DriftRecord(PickledRecord):
    """Stands in for `analognasbench.data.DriftMeasurement`: fields `value` and `uncertainty`."""

    __slots__ = ()


RECORD_CLASSES = {("analognasbench.data", "Architecture"): ArchitectureRecord,
                  ("analognasbench.data", "DriftMeasurement"): DriftRecord}


@dataclass
class NB201File:
    """The validated content of data.anb: cells in lexicographic order and their accuracy columns."""

    path: Path
    cells: list[tuple[int, ...]]
    columns: dict[str, np.ndarray]
    digest: str
    ignored: list[str] = field(default_factory=list)


def find_data_file() -> Path:
    """Return the installed analog-nasbench data file, or fail saying how to install it (nothing is imported)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise InputFileError(f"benchmark {BENCH_NAME} needs the package {DISTRIBUTION}, which is not installed: "
                             f"{INSTALL_HINT}") from None
    for entry in dist.files or ():
        if entry.as_posix() == DATA_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise InputFileError(f"{DISTRIBUTION} is installed but its {DATA_FILE} is missing; reinstall it: {INSTALL_HINT}")


def load_nb201_file(path: str | Path, expected_sha256: str | None = DATA_SHA256,
                    require_all_cells: bool = True) -> NB201File:
    """Return the validated records of an analog-nasbench data file, refusing foreign globals and bad content.

    `expected_sha256=None` skips the content check and `require_all_cells=False`
    accepts a subset of the cells (both for hand-made test files).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"NB201 ground truth not found: {path}; {INSTALL_HINT}")
    try:
        raw = load_record_pickle(path, RECORD_CLASSES)
    except ValueError as exc:  # truncated / corrupt: one line naming the file (UnsafePickleError passes through)
        raise InputFileError(f"{exc}; the file is truncated or corrupt, reinstall it: {INSTALL_HINT}") from None
    if not isinstance(raw, dict) or not raw:
        raise InputFileError(f"{path}: expected a non-empty dict from cell tuples to Architecture records, "
                             f"got {type(raw).__name__}")
    records: dict[tuple[int, ...], dict[str, Any]] = {}
    ignored: set[str] = set()
    for key, rec in raw.items():
        cell = _valid_key(key, path)
        where = f"{path}: cell {cell}"
        if not isinstance(rec, ArchitectureRecord):
            raise InputFileError(f"{where}: expected an Architecture record, got {type(rec).__name__}")
        fields = rec.fields
        if fields.get("architecture") != cell:
            raise InputFileError(f"{where}: field 'architecture' is {_short(fields.get('architecture'))}, "
                                 f"not the cell it is stored under")
        row: dict[str, float] = {}
        for name, column in {**CORE_FIELDS, **ANALOG_FIELDS}.items():
            if fields.get(name) is None and name in ANALOG_FIELDS:  # optional: absent or None -> NaN
                row[column] = math.nan
                continue
            row[column] = _accuracy(fields.get(name), f"{where}: field {name!r}")
        for name, column in DRIFT_FIELDS.items():
            drift = fields.get(name)
            if drift is None:
                row[column] = math.nan
                continue
            if not isinstance(drift, DriftRecord):
                raise InputFileError(f"{where}: field {name!r} must be a DriftMeasurement, got {type(drift).__name__}")
            row[column] = _accuracy(drift.fields.get("value"), f"{where}: field {name}.value")
        ignored.update(k for k in fields if k != "architecture" and k not in CORE_FIELDS
                       and k not in ANALOG_FIELDS and k not in DRIFT_FIELDS)
        records[cell] = row
    cells = sorted(records)
    if require_all_cells and len(cells) != NUM_CELLS:
        missing = next(c for c in all_cells() if c not in records)
        raise InputFileError(f"{path}: holds {len(cells)} cells, not all {NUM_CELLS} (e.g. {missing} is missing)")
    names = list(CORE_FIELDS.values()) + ["ptq_drop"] + list(ANALOG_FIELDS.values()) + list(DRIFT_FIELDS.values())
    columns = {}
    for name in names:
        if name == "ptq_drop":
            columns[name] = columns["fp_acc"] - columns["ptq_acc"]
        else:
            columns[name] = np.array([records[c][name] for c in cells], dtype=np.float64)
    for values in columns.values():  # shared by every benchmark built from this file (see _read_once)
        values.setflags(write=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise InputFileError(f"{path}: content differs from analog-nasbench 0.1.3's data file (sha256 {digest[:16]}..., "
                             f"expected {expected_sha256[:16]}...): it was modified; reinstall it: {INSTALL_HINT}")
    return NB201File(path, cells, columns, digest, sorted(ignored))


@lru_cache(maxsize=2)
def _read_once(path: str, mtime_ns: int, size: int, expected_sha256: str | None) -> NB201File:
    # Reading and validating the 15,625 records takes seconds; benchmarks built from the same
    # unchanged file (another batch source, unique=True) share one read.
    return load_nb201_file(path, expected_sha256)


def _valid_key(key: Any, path: Path) -> tuple[int, ...]:
    try:
        if isinstance(key, tuple):
            return check_cell(key)
    except ValueError:
        pass
    raise InputFileError(f"{path}: key {_short(key)} is not a cell (a tuple of 6 op ids in 0..4)")


def _accuracy(value: Any, where: str) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value))
            or not 0 <= float(value) <= 100):
        raise InputFileError(f"{where} must be a finite accuracy in [0, 100] (percent), got {_short(value)}")
    return float(value)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def cell_id(cell: tuple[int, ...]) -> str:
    """Return the candidate id of a cell, e.g. `cell-220232`."""
    return "cell-" + "".join(str(o) for o in cell)


def cell_arch(cell: tuple[int, ...]) -> dict[str, Any]:
    """Return a candidate's arch: the 6 op names and the numeric op counts."""
    return {"ops": [OP_NAMES[o] for o in cell], **op_counts(cell)}


def arch_cell(arch: dict[str, Any]) -> tuple[int, ...]:
    """Return the op-id tuple of an arch made by `cell_arch`, or fail naming the op names."""
    ops = arch.get("ops")
    if not isinstance(ops, (list, tuple)) or any(o not in OP_NAMES for o in ops):
        raise ValueError(f"an NB201 arch needs 'ops': 6 names among {', '.join(OP_NAMES)}; got {_short(ops)}")
    return check_cell([OP_NAMES.index(o) for o in ops])


def nb201_batch(source: str, seed: int, size: int) -> Batch:
    """Return the deterministic 32x32x3 batch of `source` ("photos", "digits" or "gaussian") for `seed`."""
    if source == "photos":
        x, y = photo_crops(seed, size, resolution=IMG_SIZE, num_classes=NUM_CLASSES)
        return Batch(inputs=x, labels=y, source=f"sklearn-photo-crops-{IMG_SIZE}x{IMG_SIZE}x3", seed=seed)
    if source in ("digits", "gaussian"):
        return vit_batch(source, seed, size, num_classes=NUM_CLASSES, resolution=IMG_SIZE)
    raise ValueError(f"unknown NB201 batch source {source!r}; choose one of {', '.join(BATCH_SOURCES)}")


class NB201Benchmark(Benchmark):
    """NAS-Bench-201 CIFAR-10 cells with full-precision, int8 PTQ and QAT accuracies (analog-nasbench)."""

    name = BENCH_NAME
    family = "nas"
    description = ("NAS-Bench-201 CIFAR-10: 15,625 cells, accuracy at full precision, int8 PTQ and QAT "
                   "(analog-nasbench 0.1.3); random-init networks")
    trained_weights = False

    def __init__(self, path: str | Path | None = None, batch_source: str = DEFAULT_BATCH_SOURCE,
                 analog: bool = False, unique: bool = False, expected_sha256: str | None = DATA_SHA256) -> None:
        if batch_source not in BATCH_SOURCES:
            raise ValueError(f"unknown NB201 batch source {batch_source!r}; choose one of {', '.join(BATCH_SOURCES)}")
        where = Path(path) if path is not None else find_data_file()
        if not where.is_file():
            raise InputFileError(f"NB201 ground truth not found: {where}; {INSTALL_HINT}")
        info = where.stat()
        self.file = _read_once(str(where), info.st_mtime_ns, info.st_size, expected_sha256)
        self.batch_source = batch_source
        self.analog = analog
        self.unique = unique
        keep = unique_cells(self.file.cells) if unique else self.file.cells
        row = {c: i for i, c in enumerate(self.file.cells)}
        self._rows = np.array([row[c] for c in keep], dtype=np.int64)
        self._cells = list(keep)
        self._index = {c: i for i, c in enumerate(self._cells)}
        self._candidates = [Candidate(cell_id(c), arch=cell_arch(c)) for c in self._cells]
        # Statistics depend only on the network of a cell id (and the batch), never on the ground truth.
        self.cache_token = NETWORK_VERSION

    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    def ground_truth(self) -> dict[str, np.ndarray]:
        names = list(CORE_FIELDS.values()) + ["ptq_drop"]
        if self.analog:
            names += list(ANALOG_FIELDS.values()) + list(DRIFT_FIELDS.values())
        return {n: self.file.columns[n][self._rows].copy() for n in names}

    def cell(self, candidate: Candidate) -> tuple[int, ...]:
        """Return the op-id tuple of a candidate."""
        if candidate.arch is None:
            raise ValueError(f"candidate {candidate.id!r} carries no arch")
        return arch_cell(candidate.arch)

    def candidate_of(self, cell: tuple[int, ...]) -> Candidate:
        """Return the candidate of a cell tuple, or fail saying why there is none."""
        cell = check_cell(cell)
        if cell not in self._index:
            raise ValueError(f"cell {cell} is not a candidate: it is isomorphic to another cell, and this benchmark "
                             f"keeps one per class (unique=True)")
        return self._candidates[self._index[cell]]

    def function_class(self, candidate: Candidate) -> str:
        """Return the cell's canonical form: isomorphic cells (the same function, trained separately) share it."""
        return canonical_form(self.cell(candidate))

    def degenerate_mask(self) -> np.ndarray:
        """Return, aligned with `candidates()`, whether each cell ignores its input (it trains to chance)."""
        return np.array([is_degenerate(c) for c in self._cells], dtype=bool)

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return the candidate's NB201 network, randomly initialised from `init_seed`, in eval mode."""
        return nb201(self.cell(candidate), init_seed=init_seed, num_classes=NUM_CLASSES)

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        return nb201_batch(self.batch_source, seed, size)

    def describe_models(self, limit: int = 3) -> str:
        """Return a few lines: the data file, degenerate and unique cells, first networks' sizes."""
        lines = [f"  file: {self.file.path} (sha256 {self.file.digest[:16]}...; batch source {self.batch_source})",
                 f"  {int(self.degenerate_mask().sum())} degenerate cells (output ignores the input; 10% accuracy); "
                 f"{'one cell per isomorphism class' if self.unique else 'isomorphic cells all kept'}"]
        if self.file.ignored:
            lines.append("  ignored fields: " + ", ".join(self.file.ignored))
        for cand in self._candidates[:limit]:
            with torch.device("meta"):  # shapes only
                n = count_params(self.build_model(cand))
            lines.append(f"  {cand.id}: {n} parameters")
        return "\n".join(lines)


@register_benchmark(BENCH_NAME, "nas", NB201Benchmark.description + " [pip extra nb201]", embedded=False,
                    options={"batch_source": BATCH_SOURCES})
def _make_nb201(data_dir: Path | None = None, batch_source: str = DEFAULT_BATCH_SOURCE) -> Benchmark:
    # The ground truth comes from the installed package, whatever the data folder is.
    return NB201Benchmark(batch_source=batch_source)
