"""ViT-Bench-101: Auto-Prox's AutoFormer and PiT ground truth, read and validated.

Files (from the public Auto-Prox repository, folder `gt_results/`):
`<data_dir>/vit-bench-101/gt_autoformer.pth` and `<data_dir>/vit-bench-101/gt_pit.pth`,
each a torch-saved list of dicts (read with `torch.load(..., weights_only=True)`, so
nothing in the file can run)::

    {"arch": {...}, "c100_base_acc": 68.66, "c100_kd_acc": 76.06, ...}

`arch` is an AutoFormer subnet (`hidden_dim`, `depth`, `mlp_ratio` and `num_heads`
lists of `depth` entries; emq/models/autoformer.py) or a PiT subnet (`base_dim`,
`mlp_ratio`, `depth` and `num_heads` lists of 3 stages; emq/models/pit.py); the space
is detected from the keys (`hidden_dim` vs `base_dim`) unless given. Accuracy columns
(percent): c100_base_acc, c100_kd_acc, flower_base_acc, flower_kd_acc,
chaoyang_base_acc, chaoyang_kd_acc (trained from scratch, `_kd` with a ResNet-56
teacher), imagenet_super_acc (weights inherited from the supernet). Any may be None
or absent in a record: it becomes NaN and is counted in `missing`. Other keys ending
in `_acc` are kept as extra columns; any other key is ignored (listed in `ignored`).

Candidates are random-initialised networks (seeded by `init_seed`), 224x224x3 input,
100 classes, as the published training-free proxies were computed.

The input batch: the published work scored each network on 128 images of the target
dataset, which cannot be shipped offline. Two documented choices, fixed by the seed
and recorded in `Batch.source`:

- `"digits"` (default): the embedded digits train split (emq/bench/digits.py),
  upsampled bilinearly to 224x224, replicated to 3 channels, normalised with the
  train split's statistics; labels are the digits 0-9 (valid classes of the 100-way head);
- `"gaussian"`: N(0, 1) images with labels uniform over the 100 classes.

Choose with the constructor's `batch_source` (`emq ... --batch-source`, a job file's
`benchmark.batch_source`); "digits" by default.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emq.bench.accuracy_units import accuracy_unit
from emq.bench.base import Batch, Benchmark, Candidate
from emq.bench.digits import vit_batch
from emq.bench.registry import register_benchmark
from emq.bench.safe_pickle import describe_torch_load_error
from emq.errors import InputFileError
from emq.safe_read import read_bytes_limited
from emq.memory_check import check_fits
from emq.models.autoformer import autoformer, autoformer_params, count_params
from emq.models.pit import NUM_STAGES, pit, pit_params
from emq.models.resnet_cifar import resnet56
from emq.stats.teacher import Teacher

SUBDIR = "vit-bench-101"
SPACES = ("autoformer", "pit")
GT_FILES = {"autoformer": "gt_autoformer.pth", "pit": "gt_pit.pth"}
ACC_COLUMNS = ("c100_base_acc", "c100_kd_acc", "flower_base_acc", "flower_kd_acc",
               "chaoyang_base_acc", "chaoyang_kd_acc", "imagenet_super_acc")
NUM_CLASSES = 100
IMG_SIZE = 224
BATCH_SOURCES = ("digits", "gaussian")
DATA_HINT = "pass the folder with --data-dir or set the EMQ_DATA_DIR environment variable"


@dataclass
class ViTBenchFile:
    """The validated content of one ViT-Bench-101 file: archs, accuracy columns (NaN = missing)."""

    path: Path
    space: str
    archs: list[dict[str, Any]]
    columns: dict[str, np.ndarray]
    missing: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    digest: str = ""


def load_vit_bench_file(path: str | Path, space: str | None = None) -> ViTBenchFile:
    """Return the validated records of a ViT-Bench-101 `.pth` file of either space (detected unless given)."""
    path = Path(path)
    if space is not None and space not in SPACES:
        raise ValueError(f"unknown ViT-Bench-101 space {space!r}; choose one of {', '.join(SPACES)}")
    if not path.exists():
        raise InputFileError(f"ViT-Bench-101 ground truth not found: {path}; {DATA_HINT}")
    blob = read_bytes_limited(path, MAX_GT_BYTES, "ViT-Bench-101 ground-truth file (.pth)")
    try:
        raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise InputFileError(f"{path}: cannot be read as a torch-saved list of records "
                             f"({describe_torch_load_error(exc)})") from None
    if not isinstance(raw, (list, tuple)) or not raw:
        what = f"an empty {type(raw).__name__}" if isinstance(raw, (list, tuple)) else type(raw).__name__
        raise InputFileError(f"{path}: expected a non-empty list of records {{'arch': {{...}}, '<column>_acc': ...}}, "
                             f"got {what}")

    archs: list[dict[str, Any]] = []
    values: dict[str, list[float]] = {}
    ignored: set[str] = set()
    for i, rec in enumerate(raw):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise InputFileError(f"{where}: expected a dict with 'arch' and accuracy columns, got {type(rec).__name__}")
        if "arch" not in rec:
            raise InputFileError(f"{where}: field 'arch' is missing")
        rec_space = _detect_space(rec["arch"], where)
        if space is None:
            space = rec_space
        elif rec_space != space:
            raise InputFileError(f"{where}: field 'arch' is a {rec_space} arch, but the file holds {space} archs "
                                 f"(one space per file)")
        archs.append(_validate_arch(rec["arch"], space, where))
        for key, v in rec.items():
            if key == "arch":
                continue
            if not isinstance(key, str) or not (key in ACC_COLUMNS or key.endswith("_acc")):
                ignored.add(str(key))
                continue
            if v is not None and (not _is_number(v) or not math.isfinite(float(v)) or not 0 <= float(v) <= 100):
                raise InputFileError(f"{where}: field {key!r} must be a finite accuracy in [0, 100] (percent) "
                                     f"or None, got {_short(v)}")
            col = values.setdefault(key, [math.nan] * i)
            col.append(math.nan if v is None else float(v))
        for col in values.values():  # columns absent from this record
            if len(col) == i:
                col.append(math.nan)

    order = [c for c in ACC_COLUMNS if c in values] + sorted(c for c in values if c not in ACC_COLUMNS)
    if not order:
        raise InputFileError(f"{path}: no accuracy column found (expected some of {', '.join(ACC_COLUMNS)})")
    columns = {c: np.array(values[c], dtype=np.float64) for c in order}
    for c, v in columns.items():
        accuracy_unit(v, f"{path}: column {c!r}", InputFileError, percent_only=True)
    missing = {c: int(np.isnan(v).sum()) for c, v in columns.items() if np.isnan(v).any()}
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return ViTBenchFile(path, space, archs, columns, missing, sorted(ignored), digest)


def _detect_space(arch: Any, where: str) -> str:
    if not isinstance(arch, dict):
        raise InputFileError(f"{where}: field 'arch' must be a dict, got {type(arch).__name__}")
    if "hidden_dim" in arch:
        return "autoformer"
    if "base_dim" in arch:
        return "pit"
    raise InputFileError(f"{where}: field 'arch' has neither 'hidden_dim' (AutoFormer) nor 'base_dim' (PiT); "
                         f"keys: {sorted(map(str, arch))}")


def _validate_arch(arch: dict[str, Any], space: str, where: str) -> dict[str, Any]:
    """Return a clean copy of `arch` (plain ints / floats / lists), or fail naming the field."""

    def fail(name: str, why: str, value: Any) -> InputFileError:
        return InputFileError(f"{where}: field 'arch.{name}' {why}, got {_short(value)}")

    def positive_int(name: str) -> int:
        if name not in arch:
            raise InputFileError(f"{where}: field 'arch.{name}' is missing ({space} archs need "
                                 f"{', '.join(_ARCH_KEYS[space])})")
        v = arch[name]
        if not _is_int(v) or not 1 <= int(v) <= ARCH_BOUNDS[name]:
            raise fail(name, f"must be an integer in 1..{ARCH_BOUNDS[name]}", v)
        return int(v)

    def int_list(name: str, length: int) -> list[int]:
        v = arch.get(name)
        if name not in arch:
            raise InputFileError(f"{where}: field 'arch.{name}' is missing")
        top = ARCH_BOUNDS[name]
        if not isinstance(v, (list, tuple)) or len(v) != length or not all(_is_int(x) and 1 <= int(x) <= top for x in v):
            raise fail(name, f"must be a list of {length} integers in 1..{top}", v)
        return [int(x) for x in v]

    def ratio(name: str, v: Any) -> float:
        if not _is_number(v) or not math.isfinite(float(v)) or not 0 < float(v) <= ARCH_BOUNDS[name]:
            raise fail(name, f"must hold numbers in (0, {ARCH_BOUNDS[name]:g}]", v)
        return float(v)

    if space == "autoformer":
        dim = positive_int("hidden_dim")
        depth = positive_int("depth")
        heads = int_list("num_heads", depth)
        mlp = arch.get("mlp_ratio")
        if not isinstance(mlp, (list, tuple)) or len(mlp) != depth:
            raise fail("mlp_ratio", f"must be a list of {depth} numbers (one per layer, depth {depth})", mlp)
        ratios = [ratio("mlp_ratio", r) for r in mlp]
        bad = [h for h in heads if dim % h]
        if bad:
            raise fail("num_heads", f"must divide hidden_dim {dim} (attention width is split across heads)", heads)
        if any(int(dim * r) < 1 for r in ratios):
            raise fail("mlp_ratio", f"must give each MLP at least one hidden unit (hidden_dim {dim} x ratio >= 1)", mlp)
        return _buildable({"hidden_dim": dim, "depth": depth, "mlp_ratio": ratios, "num_heads": heads}, where)

    base = positive_int("base_dim")
    depth_list = int_list("depth", NUM_STAGES)
    heads = int_list("num_heads", NUM_STAGES)
    mlp = arch.get("mlp_ratio")
    if isinstance(mlp, (list, tuple)):
        if len(mlp) != NUM_STAGES:
            raise fail("mlp_ratio", f"must be a number or a list of {NUM_STAGES} numbers (one per stage)", mlp)
        mlp_clean: float | list[float] = [ratio("mlp_ratio", r) for r in mlp]
    else:
        mlp_clean = ratio("mlp_ratio", mlp)
        if _is_int(mlp):
            mlp_clean = int(mlp)
    if any(heads[s + 1] % heads[s] for s in range(NUM_STAGES - 1)):
        raise fail("num_heads", "must be such that each stage's heads divide the next stage's "
                                "(PiT pooling is a grouped conv)", heads)
    stage_ratios = mlp_clean if isinstance(mlp_clean, list) else [mlp_clean] * NUM_STAGES
    if any(int(base * h * r) < 1 for h, r in zip(heads, stage_ratios)):
        raise fail("mlp_ratio", "must give each MLP at least one hidden unit (stage width x ratio >= 1)", mlp)
    return _buildable({"base_dim": base, "mlp_ratio": mlp_clean, "depth": depth_list, "num_heads": heads}, where)


def arch_params(arch: dict[str, Any]) -> int:
    """Return the parameters of a validated arch of either space, computed without building it."""
    return autoformer_params(arch, num_classes=NUM_CLASSES) if "hidden_dim" in arch else pit_params(
        arch, num_classes=NUM_CLASSES)


def _buildable(arch: dict[str, Any], where: str) -> dict[str, Any]:
    """Return `arch` if its network has at most MAX_ARCH_PARAMS parameters, else fail naming the record."""
    n = arch_params(arch)
    if n > MAX_ARCH_PARAMS:
        raise InputFileError(f"{where}: field 'arch' describes a network of {n:,} parameters; at most "
                             f"{MAX_ARCH_PARAMS:,} can be built and scored (each field is within its bound, together "
                             "they are not)")
    return arch


#: Largest value of each arch field the loader accepts: well above both spaces' choices, low enough
#: that every accepted arch can be built (an mlp_ratio of 1e30 would ask for an impossible layer).
ARCH_BOUNDS: dict[str, float] = {"hidden_dim": 4096, "base_dim": 1024, "depth": 64, "num_heads": 64, "mlp_ratio": 16.0}
#: Largest network (parameters) an arch may describe: the fields' bounds together allow 38.7 B (hidden_dim 4096,
#: depth 64, mlp_ratio 16), which no statistics pass can hold; ViT-Large has 0.3 B.
MAX_ARCH_PARAMS = 1_000_000_000
#: Bytes of a ground-truth file (the published ones are about 60 kB).
MAX_GT_BYTES = 256 * 2**20

_ARCH_KEYS = {"autoformer": ("hidden_dim", "depth", "mlp_ratio", "num_heads"),
              "pit": ("base_dim", "mlp_ratio", "depth", "num_heads")}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def find_ground_truth(data_dir: str | Path | None, space: str) -> Path:
    """Return `<data_dir>/vit-bench-101/<gt file of space>`, or fail saying where it was looked for."""
    name = GT_FILES[space]
    if data_dir is None:
        raise InputFileError(f"ViT-Bench-101 ground truth not found: no data folder is set; {DATA_HINT} "
                             f"(it must contain {SUBDIR}/{name})")
    path = Path(data_dir) / SUBDIR / name
    if not path.is_file():
        raise InputFileError(f"ViT-Bench-101 ground truth not found: {path}; {DATA_HINT}")
    return path


def resolve_batch_source(batch_source: str | None) -> str:
    """Return the batch source: the argument, else "digits"; fail on unknown names."""
    source = batch_source or "digits"
    if source not in BATCH_SOURCES:
        raise ValueError(f"unknown ViT batch source {source!r}; choose one of {', '.join(BATCH_SOURCES)}")
    return source


#: Seed of the randomly initialised distillation teacher (documented; recorded with DisWOT scores' cache key).
TEACHER_INIT_SEED = 0


class ViTBench101(Benchmark):
    """Auto-Prox's ViT-Bench-101 (AutoFormer or PiT subnets) with their published accuracies."""

    family = "vit"
    trained_weights = False

    def __init__(self, path: str | Path, space: str | None = None, batch_source: str | None = None) -> None:
        self.file = load_vit_bench_file(path, space)
        self.path = self.file.path
        self.space = self.file.space
        self.name = f"{SUBDIR}-{self.space}"
        self.description = _DESCRIPTIONS[self.space]
        self.batch_source = resolve_batch_source(batch_source)
        # The stats cache keys on this: a different file at the same path must not reuse statistics.
        self.cache_token = f"{self.file.digest}:{self.space}"
        self._candidates = [Candidate(f"arch-{i:03d}", arch=a) for i, a in enumerate(self.file.archs)]

    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {c: v.copy() for c, v in self.file.columns.items()}

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return the candidate's subnet, randomly initialised from `init_seed`, in eval mode."""
        if candidate.arch is None:
            raise ValueError(f"candidate {candidate.id!r} carries no arch")
        check_fits(arch_params(candidate.arch), f"{self.name} candidate {candidate.id}")
        make = autoformer if self.space == "autoformer" else pit
        return make(candidate.arch, init_seed=init_seed, num_classes=NUM_CLASSES)

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        return vit_batch(self.batch_source, seed, size, num_classes=NUM_CLASSES, resolution=IMG_SIZE)

    def teacher(self) -> Teacher:
        """The `_kd` columns' teacher: a CIFAR ResNet-56, random init (seed TEACHER_INIT_SEED), at 32x32.

        The students were distilled from a trained ResNet-56 on each dataset; training-free
        scoring (DisWOT) pairs randomly initialised networks. It sees the batch area-resized
        to its native 32x32, and has the students' 100-way head so the class matrices match.
        """
        return Teacher("resnet56-cifar", lambda seed: resnet56(NUM_CLASSES, seed), 32, TEACHER_INIT_SEED)

    def describe_models(self, limit: int = 3) -> str:
        """Return a few lines: the file, missing values, and the parameter counts of the first archs."""
        lines = [f"  file: {self.path} ({self.space}, {len(self._candidates)} archs; batch source {self.batch_source})"]
        if self.file.missing:
            counts = ", ".join(f"{c}={n}" for c, n in self.file.missing.items())
            lines.append(f"  missing values (None -> NaN): {counts}")
        if self.file.ignored:
            lines.append("  ignored fields: " + ", ".join(self.file.ignored))
        for cand in self._candidates[:limit]:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                n = count_params(self.build_model(cand))
            lines.append(f"  {cand.id}: {n / 1e6:.3f} M parameters")
        return "\n".join(lines)


_DESCRIPTIONS = {
    "autoformer": "Auto-Prox ViT-Bench-101: 100 AutoFormer-Ti subnets, accuracy on CIFAR-100 / Flowers / "
                  "Chaoyang (from scratch, KD) and ImageNet (supernet); random-init networks",
    "pit": "Auto-Prox ViT-Bench-101: PiT subnets, accuracy on CIFAR-100 / Flowers / Chaoyang "
           "(from scratch, KD); random-init networks",
}


@register_benchmark("vit-bench-101-autoformer", "vit", _DESCRIPTIONS["autoformer"], embedded=False,
                    options={"batch_source": BATCH_SOURCES})
def _make_autoformer(data_dir: Path | None = None, batch_source: str | None = None) -> Benchmark:
    return ViTBench101(find_ground_truth(data_dir, "autoformer"), "autoformer", batch_source)


@register_benchmark("vit-bench-101-pit", "vit", _DESCRIPTIONS["pit"], embedded=False,
                    options={"batch_source": BATCH_SOURCES})
def _make_pit(data_dir: Path | None = None, batch_source: str | None = None) -> Benchmark:
    return ViTBench101(find_ground_truth(data_dir, "pit"), "pit", batch_source)
