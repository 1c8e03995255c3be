"""The embedded mixed-precision benchmark `mq-digits`: build it offline, then load it.

Build (`build_mq_digits`, CLI `emq bench build mq-digits --seed 0`):

1. Train `DigitsResNet` (emq/models/digits_cnn.py) on the digits train split
   (emq/bench/digits.py) with a fixed seed and deterministic ops, then fold its
   BatchNorms into the convs. The folded weights are `model.safetensors`.
2. Sample `num_configs` distinct per-layer weight bit-widths from {2, 3, 4, 8}
   (see `sample_bit_configs`: half uniform per layer, half with a varying number of
   2-bit layers, so accuracies spread from near-float to chance).
3. For each, apply post-training quantization with `emq.quant.quantized_model`
   (per-channel symmetric min/max weights; 8-bit per-tensor activations calibrated on
   the calibration split) and measure top-1 accuracy on the test split, as a
   fraction in [0, 1]. These are `ground_truth.json`'s `test_acc`.

Everything is deterministic given the seed. The results live in
`results_dir()/mq-digits/` (`model.safetensors`, `ground_truth.json`, `README.md`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emq.atomic import write_atomic, write_json_atomic, write_text_atomic
from emq.bench import digits
from emq.bench.base import Batch, Benchmark, BenchmarkNotBuiltError, Candidate
from emq.bench.build_target import check_build_target
from emq.bench.gt_json import read_gt_json
from emq.bench.registry import register_benchmark, register_builder
from emq.errors import EMQUserError
from emq.models.digits_cnn import DigitsResNet, digits_resnet
from emq.models.resnet import fold_batchnorm
from emq.paths import results_dir
from emq.quant.fake_quant import quantized_model
from emq.quant.layers import MAX_WEIGHT_BITS, MIN_WEIGHT_BITS, quantizable_layers, valid_weight_bits

BENCH_NAME = "mq-digits"
GT_FORMAT = "emq-mq-gt/1"
GT_FILE = "ground_truth.json"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
BUILD_COMMAND = "emq bench build mq-digits"
WEIGHT_BIT_CHOICES = (2, 3, 4, 8)
ACT_BITS = 8
LOW_BITS = 2
BATCH_SOURCE = "digits-train-16x16"


@dataclass(frozen=True)
class TrainConfig:
    """How the digits network is trained (SGD + one-cycle; +-1 px random shifts)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 1


def default_out_dir() -> Path:
    return results_dir() / BENCH_NAME


# ----------------------------------------------------------------------------- build


def train_digits_cnn(seed: int = 0, config: TrainConfig = TrainConfig(), progress: bool = False) -> DigitsResNet:
    """Return the trained network with BatchNorm folded, in eval mode (deterministic given `seed`)."""
    x_train, y_train = digits.train_split(seed)
    with _deterministic(seed):
        model = DigitsResNet()
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=True)
        steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
        g = torch.Generator().manual_seed(seed)
        epochs = range(config.epochs)
        if progress:
            from tqdm import tqdm

            epochs = tqdm(epochs, desc="train digits CNN", unit="epoch")
        for _ in epochs:
            model.train()
            perm = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(x_train), config.batch_size):
                idx = perm[i:i + config.batch_size]
                x = _random_shift(x_train[idx], config.max_shift, g)
                loss = F.cross_entropy(model(x), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    return fold_batchnorm(model)


def _random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by up to `max_shift` pixels (edge-replicated), a cheap augmentation."""
    if max_shift <= 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=g).tolist()
    return padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]


class _deterministic:
    """Seed torch and force deterministic kernels for a block, restoring the previous setting after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        self._was = torch.are_deterministic_algorithms_enabled()
        self._warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: Any) -> None:
        torch.use_deterministic_algorithms(self._was, warn_only=self._warn_only)
        self._fork.__exit__(*exc)


def sample_bit_configs(layers: list[str], num: int, seed: int = 0,
                       choices: tuple[int, ...] = WEIGHT_BIT_CHOICES) -> list[dict[str, int]]:
    """Return `num` distinct per-layer bit assignments, deterministic given `seed`.

    Even draws are uniform per layer over `choices`. Odd draws first pick how many
    layers go to the lowest width, k uniform in 0..len(layers)//2, then which layers
    (uniform), and fill the rest uniformly from the other widths. The second family
    covers the few-low-bit-layers regime (near-float accuracy) densely, where the
    ranking depends on *which* layers are low, not on how many bits there are in
    total; drawing k up to all layers instead makes the count of 2-bit layers (and so
    average bits) predict accuracy too well (Kendall tau 0.53 vs 0.32 in a trial).
    """
    n_layers = len(layers)
    low, others = min(choices), [b for b in choices if b != min(choices)]
    space = len(choices) ** n_layers
    if num > space:
        raise ValueError(f"asked for {num} distinct configurations, only {space} exist")
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    configs: list[dict[str, int]] = []
    while len(configs) < num:
        if len(configs) % 2 == 0:
            cfg = tuple(int(b) for b in rng.choice(choices, size=n_layers))
        else:
            k = int(rng.integers(0, n_layers // 2 + 1))
            low_layers = set(rng.choice(n_layers, size=k, replace=False).tolist())
            rest = rng.choice(others, size=n_layers)
            cfg = tuple(low if i in low_layers else int(rest[i]) for i in range(n_layers))
        if cfg not in seen:
            seen.add(cfg)
            configs.append(dict(zip(layers, cfg)))
    return configs


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Return top-1 accuracy (a fraction) of `model` on (`x`, `y`)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def ptq_accuracy(model: nn.Module, bits: dict[str, int], calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 act_bits: int = ACT_BITS) -> float:
    """Return the test accuracy of `model` after post-training quantization to `bits` (weights) and `act_bits`."""
    return accuracy(quantized_model(model, bits, act_bits=act_bits, calib_inputs=calib), x, y)


def build_mq_digits(seed: int = 0, num_configs: int = 500, out_dir: str | Path | None = None, progress: bool = True,
                    train_config: TrainConfig = TrainConfig(), overwrite: bool = False) -> dict[str, Any]:
    """Build the benchmark into `out_dir` (default `results_dir()/mq-digits`); return a short summary.

    Writes `model.safetensors`, `ground_truth.json` and `README.md` atomically, after
    all the work; an existing build is replaced only with `overwrite=True`, and the
    arguments are checked before anything runs.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    check_build_target(out, (WEIGHTS_FILE, GT_FILE, README_FILE), num_configs, "configurations", overwrite)
    split = digits.digits_split(seed)
    x_test, y_test = digits.test_split(seed)
    calib, _ = digits.calibration_split(seed)

    model = train_digits_cnn(seed, train_config, progress=progress)
    float_acc = accuracy(model, x_test, y_test)
    layers_map = quantizable_layers(model)
    layers = list(layers_map)
    params = {name: int(m.weight.numel()) for name, m in layers_map.items()}

    configs = sample_bit_configs(layers, num_configs, seed)
    items = configs
    if progress:
        from tqdm import tqdm

        items = tqdm(configs, desc="PTQ accuracy", unit="cfg")
    candidates = []
    with _deterministic(seed):
        for i, bits in enumerate(items):
            acc = ptq_accuracy(model, bits, calib, x_test, y_test)
            candidates.append({"id": f"cfg-{i:04d}", "bits": bits, "test_acc": acc})

    _save_weights(out / WEIGHTS_FILE, model, seed)
    accs = np.array([c["test_acc"] for c in candidates])
    seconds = round(time.perf_counter() - t0, 1)
    cpu_seconds = round(time.process_time() - cpu0, 1)
    gt = {
        "format": GT_FORMAT,
        "seed": seed,
        "layers": layers,
        "params": params,
        "float_test_acc": float_acc,
        "act_bits": ACT_BITS,
        "weight_bit_choices": list(WEIGHT_BIT_CHOICES),
        "candidates": candidates,
        "data": {
            "source": "sklearn.datasets.load_digits, /16, bilinear 8x8 -> 16x16, train-split mean/std",
            "split_sizes": split.sizes(),
            "mean": split.mean,
            "std": split.std,
        },
        "quantization": "weights: symmetric per-output-channel min/max (BatchNorm folded); "
                        "activations: asymmetric per-tensor, ranges from the calibration split",
        "sampling": "even ids: uniform per layer over weight_bit_choices; odd ids: k ~ U{0..L//2} random layers "
                    "at 2 bits, the others uniform over {3, 4, 8}",
        "train": asdict(train_config),
        "test_acc_unit": "fraction",
        "build_seconds": seconds,
        "build_cpu_seconds": cpu_seconds,
        "command": BUILD_COMMAND,
    }
    write_json_atomic(out / GT_FILE, gt)
    summary = {"out_dir": str(out), "num_configs": len(candidates), "float_test_acc": float_acc,
               "test_acc_quantiles": _quantiles(accs), "build_seconds": seconds, "build_cpu_seconds": cpu_seconds}
    write_text_atomic(out / README_FILE, _readme(gt, summary))
    return summary


def _save_weights(path: Path, model: nn.Module, seed: int) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes metadata from a hash map, so several keys come out in
    # arbitrary order and two identical builds would differ byte-wise.
    blob = save(tensors, metadata={"emq": f"digits-resnet/1 seed={seed} batchnorm=folded"})
    write_atomic(path, lambda p: p.write_bytes(blob))


def _quantiles(accs: np.ndarray) -> dict[str, float]:
    if len(accs) == 0:
        return {}
    q = np.quantile(accs, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(["min", "q25", "median", "q75", "max"], (round(float(v), 4) for v in q)))


def _readme(gt: dict[str, Any], summary: dict[str, Any]) -> str:
    q = summary["test_acc_quantiles"]
    n_low = [sum(b == LOW_BITS for b in c["bits"].values()) for c in gt["candidates"]]
    sizes = gt["data"]["split_sizes"]
    taus = baseline_taus(gt)
    rows = "\n".join(f"| `{name}` | {gt['params'][name]} |" for name in gt["layers"])
    return f"""# mq-digits: embedded mixed-precision quantization benchmark

Ground truth made by this project, offline, from data inside the scikit-learn wheel.
Rebuild (deterministic given the seed):

    emq bench build mq-digits --seed {gt['seed']}

(library call: `emq.bench.mq_digits.build_mq_digits(seed={gt['seed']}, num_configs={len(gt['candidates'])})`).

Build time of these files: {summary['build_seconds']} s wall-clock, {summary['build_cpu_seconds']} s CPU time
(torch's default threads; wall-clock grows when other jobs share the cores).

## How it was made

- Data: `sklearn.datasets.load_digits` (1797 grey 8x8 digits), scaled to [0, 1],
  upsampled bilinearly to 16x16, normalised with the train split's mean/std.
  Stratified split (seed {gt['seed']}): {sizes['train']} train, {sizes['calib']} calibration,
  {sizes['test']} test images. Proxies see train images only; calibration images only
  set activation ranges; accuracies are on the test images.
- Network: `DigitsResNet` (emq/models/digits_cnn.py), a ResNet with a 3x3 stem, three
  stages of two basic blocks (16/32/64 channels), global average pooling and a
  linear head: {len(gt['layers'])} quantizable layers, {sum(gt['params'].values())} weights.
  Trained {gt['train']['epochs']} epochs (SGD, one-cycle lr {gt['train']['lr']}, +-1 px shifts),
  then BatchNorm folded into the convs (so quantized weights include BatchNorm, as in
  a deployed model). `model.safetensors` holds the folded weights.
- Float test accuracy: **{gt['float_test_acc']:.4f}**.
- Candidates: {len(gt['candidates'])} distinct per-layer weight bit-widths from
  {gt['weight_bit_choices']}; activations at {gt['act_bits']} bits. Even ids are uniform per
  layer; odd ids put a uniformly drawn number k in 0..{len(gt['layers']) // 2} of random layers at 2 bits
  and the others uniformly at 3/4/8 bits (2-bit layers per config: min {min(n_low)},
  median {int(np.median(n_low))}, max {max(n_low)}).
- Quantization: post-training, `emq.quant.quantized_model` — weights symmetric per
  output channel (min/max scale), activations asymmetric per tensor with ranges
  calibrated on the calibration split. `test_acc` is top-1 on the test split, a
  fraction in [0, 1].

## Accuracy spread (test_acc over the candidates)

| min | 25% | median | 75% | max |
|-----|-----|--------|-----|-----|
| {q['min']:.4f} | {q['q25']:.4f} | {q['median']:.4f} | {q['q75']:.4f} | {q['max']:.4f} |

## How hard it is for bit-counting baselines

Kendall tau of test_acc with (scipy.stats.kendalltau over all candidates):

| average bits | bit-weighted params (sum bits x weights) | minus the number of 2-bit layers |
|--------------|------------------------------------------|----------------------------------|
| {taus['avg_bits']:.3f} | {taus['bit_params']:.3f} | {taus['neg_num_2bit']:.3f} |

## Layers (bit assignments are keyed by these names)

| layer | weights |
|-------|---------|
{rows}

## Files

- `ground_truth.json` — format `{GT_FORMAT}`: layers, params, float accuracy, candidates
  (`id`, `bits`, `test_acc`), build time and the command.
- `model.safetensors` — trained weights, BatchNorm folded (load into
  `emq.models.digits_cnn.digits_resnet(folded=True)`).
"""


def baseline_taus(gt: dict[str, Any]) -> dict[str, float]:
    """Return Kendall tau of test_acc with simple bit-counting scores (how easy the benchmark is)."""
    from scipy.stats import kendalltau

    layers = gt["layers"]
    bits = np.array([[c["bits"][n] for n in layers] for c in gt["candidates"]], dtype=np.float64)
    params = np.array([gt["params"][n] for n in layers], dtype=np.float64)
    acc = np.array([c["test_acc"] for c in gt["candidates"]])
    scores = {"avg_bits": bits.mean(1), "bit_params": bits @ params, "neg_num_2bit": -(bits == LOW_BITS).sum(1)}
    out = {}
    for name, score in scores.items():
        tau = kendalltau(score, acc)[0] if len(acc) > 1 else float("nan")
        out[name] = float(tau) if np.isfinite(tau) else float("nan")
    return out


# ----------------------------------------------------------------------------- load


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


class MQDigitsBenchmark(Benchmark):
    """A trained digits ResNet and hundreds of weight bit-width configurations with their PTQ test accuracy."""

    name = BENCH_NAME
    family = "mq"
    description = "digits ResNet (16 layers, 175k weights), per-layer weight bits in {2,3,4,8}, A8, PTQ test accuracy"
    trained_weights = True
    measures_ptq_accuracy = True
    act_bits = ACT_BITS

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_out_dir()
        gt_path, w_path = self.root / GT_FILE, self.root / WEIGHTS_FILE
        missing = [p for p in (gt_path, w_path) if not p.is_file()]
        if missing:
            raise BenchmarkNotBuiltError(
                f"benchmark {BENCH_NAME!r} is not built: {', '.join(str(p) for p in missing)} not found; "
                f"run `{BUILD_COMMAND} --seed 0` (about 1-2 minutes on 2 CPU cores)")
        self.gt = load_ground_truth(gt_path)
        self.seed: int = self.gt["seed"]
        self.act_bits = int(self.gt["act_bits"])
        self._state = _load_weights(w_path, self.gt["layers"])
        self._candidates = [Candidate(c["id"], bits=dict(c["bits"])) for c in self.gt["candidates"]]
        self._acc = np.array([c["test_acc"] for c in self.gt["candidates"]], dtype=np.float64)

    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {"test_acc": self._acc.copy()}

    @property
    def layers(self) -> list[str]:
        return list(self.gt["layers"])

    @property
    def params(self) -> dict[str, int]:
        return dict(self.gt["params"])

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        """Return a fresh float copy of the trained (BatchNorm-folded) network in eval mode.

        The candidate's bits are not applied here: the statistics code quantizes with
        `quantized_model(model, candidate.bits, self.act_bits, self.calibration_inputs())`.
        `init_seed` is unused (the weights are trained).
        """
        model = digits_resnet(folded=True)
        model.load_state_dict(self._state, strict=True)
        return model.eval()

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        x, y = digits.batch(seed, size, split_seed=self.seed)
        return Batch(inputs=x, labels=y, source=BATCH_SOURCE, seed=seed)

    def calibration_inputs(self) -> torch.Tensor:
        """Return the calibration-split images (the ones the ground truth's activation ranges came from)."""
        return digits.calibration_split(self.seed)[0]

    def calibration_batch(self) -> Batch:
        """Return the calibration split with its labels (what the trivial predictor `qloss_calib` is measured on)."""
        x, y = digits.calibration_split(self.seed)
        return Batch(inputs=x, labels=y, source="digits-calib-16x16", seed=self.seed)


def _load_weights(path: Path, layers: list[str]) -> dict[str, torch.Tensor]:
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


@register_benchmark(BENCH_NAME, "mq", MQDigitsBenchmark.description, embedded=True)
def _make_mq_digits(data_dir: Path | None = None) -> Benchmark:
    # Embedded: lives under results_dir(), whatever the public data folder is.
    return MQDigitsBenchmark()


@register_builder(BENCH_NAME)
def _build(seed: int = 0, progress: bool = True, num_configs: int | None = None, **options: Any) -> Path:
    """Registry entry for `emq bench build mq-digits`: returns the output folder."""
    if num_configs is not None:
        options["num_configs"] = num_configs
    return Path(build_mq_digits(seed=seed, progress=progress, **options)["out_dir"])
