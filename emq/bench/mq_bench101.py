"""MQ-Bench-101: EMQ's public ResNet-18 mixed-precision ground truth, read safely.

File: `<data_dir>/mq-bench-101/PTQ-GT.pkl` (or `PTQ-GT.json` with the same content),
a dict `{idx: {"bit_cfg": "[4, 3, ...]", "acc": 68.1}}`; `idx` an int or a string,
`bit_cfg` a string holding a Python list (or a list / tuple). The pickle is read
with `emq.bench.safe_pickle` (every global refused: nothing in the file can run).

`acc` is ImageNet top-1 after post-training quantization (BRECQ-style, weights at
the listed bits, activations at 8 bits). EMQ's script records it in **percent**
(its `validate_model` averages `Acc@1` scaled by 100), so values must be finite and
within [0, 100]; a file of fractions in [0, 1] also passes and is kept as is
(`MQBench101.acc_unit` says which was found). Only ranks are used, so the unit does
not change any fitness.

How EMQ's 18 bit widths map onto ResNet-18's 21 conv/linear layers
------------------------------------------------------------------
Source: lliai/EMQ-series, `PTQ/quant/quant_model.py`, `QuantModel.set_mixed_precision`
(commit 3f04631c): for an 18-long `bit_cfg` it walks the list in order and repeats
entries 6, 10 and 14, then assigns the 21 widths to the QuantModules in module order.
BRECQ's `QuantBasicBlock` registers `conv1`, `conv2`, then `downsample`, so:

    bit_cfg[0]  -> conv1 (the 7x7 stem)
    bit_cfg[1..4]   -> layer1.0.conv1, layer1.0.conv2, layer1.1.conv1, layer1.1.conv2
    bit_cfg[5..8]   -> layer2.0.conv1, layer2.0.conv2 (+ layer2.0.downsample.0), layer2.1.conv1, layer2.1.conv2
    bit_cfg[9..12]  -> layer3.0.conv1, layer3.0.conv2 (+ layer3.0.downsample.0), layer3.1.conv1, layer3.1.conv2
    bit_cfg[13..16] -> layer4.0.conv1, layer4.0.conv2 (+ layer4.0.downsample.0), layer4.1.conv1, layer4.1.conv2
    bit_cfg[17] -> fc

i.e. each downsample conv shares the width of its block's `conv2` (whose output it is
added to). The same file's `cfg2params_perlayer` counts the downsample parameters in
that same slot. `main_imagenet.py` sets the first and last layers to 8 bits *before*
applying `bit_cfg`, so `bit_cfg[0]` and `bit_cfg[17]` do set the stem's and fc's
weight widths.

Candidate networks are `emq.models.resnet.resnet18` with BatchNorm folded (EMQ's
`QuantModel` folds BN before quantizing): seeded random init by default
(`trained_weights=False`), or trained weights from `resnet18.safetensors` /
`resnet18.pth` beside the ground-truth file (or the `weights=` argument). The input
batch is the embedded digits, upsampled to 224x224 and replicated to 3 channels
(`Batch.source = "digits-train-224x224x3"`), since ImageNet is not shipped.
"""
from __future__ import annotations

import ast
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emq.bench import digits
from emq.bench.accuracy_units import accuracy_unit
from emq.bench.base import Batch, Benchmark, Candidate
from emq.bench.registry import register_benchmark
from emq.bench.safe_pickle import load_plain_pickle
from emq.errors import EMQUserError
from emq.quant.layers import MAX_WEIGHT_BITS, MIN_WEIGHT_BITS, valid_weight_bits
from emq.strict_json import loads_strict
from emq.models.resnet import fold_batchnorm, load_state_dict, resnet18

BENCH_NAME = "mq-bench-101"
SUBDIR = "mq-bench-101"
GT_FILES = ("PTQ-GT.pkl", "PTQ-GT.json")
WEIGHT_FILES = ("resnet18.safetensors", "resnet18.pth")
ACT_BITS = 8
BATCH_RESOLUTION = 224
BATCH_SOURCE = "digits-train-224x224x3"
CALIBRATION_SIZE = 32

#: EMQ's bit_cfg order: entry i sets the weight width of every layer in slot i.
EMQ_RESNET18_SLOTS: tuple[tuple[str, ...], ...] = (
    ("conv1",),
    ("layer1.0.conv1",), ("layer1.0.conv2",), ("layer1.1.conv1",), ("layer1.1.conv2",),
    ("layer2.0.conv1",), ("layer2.0.conv2", "layer2.0.downsample.0"), ("layer2.1.conv1",), ("layer2.1.conv2",),
    ("layer3.0.conv1",), ("layer3.0.conv2", "layer3.0.downsample.0"), ("layer3.1.conv1",), ("layer3.1.conv2",),
    ("layer4.0.conv1",), ("layer4.0.conv2", "layer4.0.downsample.0"), ("layer4.1.conv1",), ("layer4.1.conv2",),
    ("fc",),
)
BIT_CFG_LENGTH = len(EMQ_RESNET18_SLOTS)
MAPPING_HELP = (f"EMQ's ResNet-18 order has {BIT_CFG_LENGTH} entries: conv1, the 16 block convs "
                "layer1.0.conv1 .. layer4.1.conv2 (the layerN.0.conv2 entries of stages 2-4 also set "
                "layerN.0.downsample.0), then fc")


class MQBenchFileError(EMQUserError, ValueError):
    """The MQ-Bench-101 ground-truth file is missing or malformed (the message names file and record)."""


@dataclass(frozen=True)
class MQBenchRecord:
    """One row of PTQ-GT: EMQ's index, its 18 bit widths and its accuracy."""

    idx: str
    bit_cfg: tuple[int, ...]
    acc: float


def bits_from_bit_cfg(bit_cfg: list[int] | tuple[int, ...]) -> dict[str, int]:
    """Return ResNet-18 layer name -> weight bits for EMQ's 18-long `bit_cfg` (see the module docstring)."""
    if len(bit_cfg) != BIT_CFG_LENGTH:
        raise ValueError(f"bit_cfg has {len(bit_cfg)} entries, expected {BIT_CFG_LENGTH} ({MAPPING_HELP})")
    return {layer: int(b) for slot, b in zip(EMQ_RESNET18_SLOTS, bit_cfg) for layer in slot}


def parse_bit_cfg(value: Any) -> list[int]:
    """Return the bit widths of a `bit_cfg` given as a list / tuple or as a string like "[4, 3, 2]"."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"bit_cfg string is not a Python list of integers: {value[:80]!r}") from exc
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"bit_cfg must be a list of integers (or a string of one), got {type(value).__name__}")
    bad = [b for b in value if not valid_weight_bits(b)]
    if bad:
        raise ValueError(f"bit_cfg entries must be integers in {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS} (the quantizer's "
                         f"widths), got {bad[:5]}")
    return list(value)


def load_mq_bench101(path: str | Path) -> list[MQBenchRecord]:
    """Return the validated records of a PTQ-GT file (`.pkl` read safely, or `.json`), in file order."""
    path = Path(path)
    if not path.is_file():
        raise MQBenchFileError(f"MQ-Bench-101 ground truth not found: {path}")
    if path.suffix == ".json":
        try:
            raw = loads_strict(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # syntax, duplicate keys, nesting, not UTF-8
            raise MQBenchFileError(f"{path}: not valid JSON ({exc})") from None
    else:
        try:
            raw = load_plain_pickle(path)
        except ValueError as exc:  # UnsafePickleError is not a ValueError: it propagates as is
            raise MQBenchFileError(str(exc)) from exc
    if not isinstance(raw, dict) or not raw:
        raise MQBenchFileError(f"{path}: expected a non-empty mapping {{idx: {{'bit_cfg': ..., 'acc': ...}}}}, "
                               f"got {type(raw).__name__}{' (empty)' if isinstance(raw, dict) else ''}")
    records: list[MQBenchRecord] = []
    seen: set[str] = set()
    for idx, rec in raw.items():
        where = f"{path}: record {idx}"
        if not isinstance(idx, (int, str)) or isinstance(idx, bool):
            raise MQBenchFileError(f"{where}: index must be an int or a string")
        key = str(idx)
        if key in seen:
            raise MQBenchFileError(f"{where}: index {key!r} appears twice")
        seen.add(key)
        if not isinstance(rec, dict) or "bit_cfg" not in rec or "acc" not in rec:
            raise MQBenchFileError(f"{where}: expected {{'bit_cfg': ..., 'acc': ...}}, got {_short(rec)}")
        try:
            cfg = parse_bit_cfg(rec["bit_cfg"])
        except ValueError as exc:
            raise MQBenchFileError(f"{where}: {exc}") from exc
        if len(cfg) != BIT_CFG_LENGTH:
            raise MQBenchFileError(f"{where}: bit_cfg has {len(cfg)} entries, expected {BIT_CFG_LENGTH} ({MAPPING_HELP})")
        acc = rec["acc"]
        if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not math.isfinite(acc) or not 0 <= acc <= 100:
            raise MQBenchFileError(f"{where}: acc must be a finite number in [0, 100] (top-1 in percent), got {_short(acc)}")
        records.append(MQBenchRecord(key, tuple(cfg), float(acc)))
    return records


def _file_digest(path: Path) -> str:
    """Return the sha256 of a file's content (streamed), shortened."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def find_ground_truth(data_dir: str | Path | None) -> Path:
    """Return the PTQ-GT file under `<data_dir>/mq-bench-101/`, or fail saying where it was looked for."""
    hint = "give the folder with --data-dir or the EMQ_DATA_DIR environment variable"
    if data_dir is None:
        raise MQBenchFileError(f"MQ-Bench-101 ground truth not found: no data folder is set; {hint} "
                               f"(it must contain {SUBDIR}/{GT_FILES[0]} or {SUBDIR}/{GT_FILES[1]})")
    folder = Path(data_dir) / SUBDIR
    for name in GT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MQBenchFileError(f"MQ-Bench-101 ground truth not found: expected {folder / GT_FILES[0]} "
                           f"(or {folder / GT_FILES[1]}); {hint}")


class MQBench101(Benchmark):
    """EMQ's MQ-Bench-101: ResNet-18 bit configurations with ImageNet PTQ top-1 (percent)."""

    name = BENCH_NAME
    family = "mq"
    description = "EMQ's ResNet-18 mixed-precision PTQ ground truth (PTQ-GT.pkl / .json), read safely"
    trained_weights = False
    act_bits = ACT_BITS

    def __init__(self, data_dir: str | Path | None = None, path: str | Path | None = None,
                 weights: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else find_ground_truth(data_dir)
        self.records = load_mq_bench101(self.path)
        if weights is None:
            weights = next((self.path.parent / n for n in WEIGHT_FILES if (self.path.parent / n).is_file()), None)
        self.weights = Path(weights) if weights is not None else None
        self._state = load_state_dict(self.weights) if self.weights is not None else None
        self.trained_weights = self._state is not None
        # What the statistics depend on beyond each candidate's bits (which its cache key holds): the ground-truth
        # file it was read from and the weights. Another file reusing the same ids never reads these statistics.
        self.cache_token = f"gt:{_file_digest(self.path)}:weights:{_file_digest(self.weights) if self.weights else 'init'}"
        accs = np.array([r.acc for r in self.records], dtype=np.float64)
        self.acc_unit = accuracy_unit(accs, f"{self.path}: field 'acc'", MQBenchFileError)
        self._acc = accs
        self._candidates = [Candidate(r.idx, bits=bits_from_bit_cfg(r.bit_cfg)) for r in self.records]

    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {"top1": self._acc.copy()}

    @property
    def layers(self) -> list[str]:
        return [layer for slot in EMQ_RESNET18_SLOTS for layer in slot]

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return a float ResNet-18 (BatchNorm folded, eval mode): trained weights if given, else seeded init.

        Bits are applied by the statistics code with `quantized_model`, not here.
        """
        if self._state is None:
            return resnet18(init_seed=init_seed)
        model = resnet18(init_seed=init_seed, fold_bn=False)
        model.load_state_dict(self._state, strict=True)
        return fold_batchnorm(model.eval())

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        x, y = digits.batch(seed, size, resolution=BATCH_RESOLUTION, channels=3)
        return Batch(inputs=x, labels=y, source=BATCH_SOURCE, seed=seed)

    def calibration_inputs(self) -> torch.Tensor:
        """Return activation-calibration images: the first 32 digits calibration images at 224x224x3."""
        x, _ = digits.split_tensors("calib", 0, resolution=BATCH_RESOLUTION, channels=3)
        return x[:CALIBRATION_SIZE]


@register_benchmark(BENCH_NAME, "mq", MQBench101.description, embedded=False)
def _make_mq_bench101(data_dir: Path | None = None) -> Benchmark:
    from emq.paths import data_dir as resolve_data_dir

    # None falls back to EMQ_DATA_DIR, then ../shared/benchmarks, like every public benchmark.
    return MQBench101(resolve_data_dir(data_dir))
