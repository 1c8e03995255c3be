"""Reading an `mq-digits` build: its ground truth and trained weights, validated field by field.

Each error names the file and the field, and says how to rebuild.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from emq.bench.gt_json import read_gt_json
from emq.errors import EMQUserError
from emq.models.digits_cnn import digits_resnet
from emq.paths import results_dir
from emq.quant.layers import MAX_WEIGHT_BITS, MIN_WEIGHT_BITS, quantizable_layers, valid_weight_bits

BENCH_NAME = "mq-digits"
GT_FORMAT = "emq-mq-gt/1"
GT_FILE = "ground_truth.json"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
BUILD_COMMAND = "emq bench build mq-digits"


def default_out_dir() -> Path:
    """Return where the build lives: `results_dir()/mq-digits`."""
    return results_dir() / BENCH_NAME


class GroundTruthError(EMQUserError, ValueError):
    """A ground-truth file is malformed; the message names the file and the field."""


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Return the validated content of an `emq-mq-gt/1` ground_truth.json."""
    path = Path(path)
    gt = read_gt_json(path, GT_FORMAT, ("layers", "params", "float_test_acc", "act_bits", "weight_bit_choices", "candidates"),
                      GroundTruthError, f"rebuild with `{BUILD_COMMAND} --seed 0`")

    def fail(field: str, why: str) -> GroundTruthError:
        return GroundTruthError(f"{path}: field {field!r} {why}")

    layers = gt["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers) \
            or len(set(layers)) != len(layers):
        raise fail("layers", "must be a non-empty list of distinct layer names")
    params = gt["params"]
    if not isinstance(params, dict) or set(params) != set(layers) or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in params.values()):
        raise fail("params", "must map every name in 'layers' (and nothing else) to a positive integer")
    if not _is_fraction(gt["float_test_acc"]):
        raise fail("float_test_acc", "must be a number in [0, 1]")
    if not isinstance(gt["act_bits"], int) or not 2 <= gt["act_bits"] <= 32:
        raise fail("act_bits", "must be an integer in 2..32")
    choices = gt["weight_bit_choices"]
    if not isinstance(choices, list) or not choices or not all(valid_weight_bits(b) for b in choices):
        raise fail("weight_bit_choices", f"must be a non-empty list of integers in {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS}")
    cands = gt["candidates"]
    if not isinstance(cands, list) or not cands:
        raise fail("candidates", "must be a non-empty list")
    ids: set[str] = set()
    layer_set = set(layers)
    for i, c in enumerate(cands):
        where = f"candidates[{i}]"
        if not isinstance(c, dict):
            raise fail(where, "must be an object with 'id', 'bits' and 'test_acc'")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid:
            raise fail(f"{where}.id", "must be a non-empty string")
        if cid in ids:
            raise fail(f"{where}.id", f"repeats id {cid!r}")
        ids.add(cid)
        bits = c.get("bits")
        if not isinstance(bits, dict) or set(bits) != layer_set:
            missing = sorted(layer_set - set(bits)) if isinstance(bits, dict) else layers
            extra = sorted(set(bits) - layer_set) if isinstance(bits, dict) else []
            raise fail(f"{where}.bits", f"(id {cid!r}) must give one width per layer; missing {missing}, unknown {extra}")
        bad = {k: v for k, v in bits.items() if v not in choices or isinstance(v, bool)}
        if bad:
            raise fail(f"{where}.bits", f"(id {cid!r}) has widths outside weight_bit_choices {choices}: {bad}")
        if not _is_fraction(c.get("test_acc")):
            raise fail(f"{where}.test_acc", f"(id {cid!r}) must be a number in [0, 1], got {c.get('test_acc')!r}")
    return gt


def _is_fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


def load_weights(path: Path, layers: list[str]) -> dict[str, torch.Tensor]:
    """Return the trained weights (a folded DigitsResNet state dict) after checking they fit the ground truth's layers."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise GroundTruthError(f"{path}: cannot read safetensors weights ({exc})") from exc
    expected = digits_resnet(folded=True).state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise GroundTruthError(f"{path}: tensors do not match DigitsResNet (folded); rebuild with `{BUILD_COMMAND} --seed 0`")
    model_layers = list(quantizable_layers(digits_resnet(folded=True)))
    if model_layers != layers:
        raise GroundTruthError(f"{path.parent / GT_FILE}: field 'layers' {layers} does not match the network's {model_layers}")
    return state
