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
`results_dir()/mq-digits/` (`model.safetensors`, `ground_truth.json`, `README.md`,
filled in from `templates/mq-digits.md`). Training and accuracy are in
`emq.bench.mq_digits_train`, reading a build back in `emq.bench.mq_digits_load`.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emq.atomic import write_atomic, write_json_atomic, write_text_atomic
from emq.bench import digits
from emq.bench.base import Batch, Benchmark, BenchmarkNotBuiltError, Candidate
from emq.bench.build_target import check_build_target
from emq.bench.mq_digits_load import (
    BENCH_NAME, BUILD_COMMAND, GT_FILE, GT_FORMAT, README_FILE, WEIGHTS_FILE, default_out_dir, load_ground_truth,
    load_weights,
)
from emq.bench.mq_digits_train import ACT_BITS, TrainConfig, accuracy, deterministic, ptq_accuracy, train_digits_cnn
from emq.bench.readme import render_readme
from emq.bench.registry import register_benchmark, register_builder
from emq.fitness import kendall
from emq.models.digits_cnn import digits_resnet
from emq.quant.layers import quantizable_layers

WEIGHT_BIT_CHOICES = (2, 3, 4, 8)
LOW_BITS = 2
BATCH_SOURCE = "digits-train-16x16"


# ----------------------------------------------------------------------------- build


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
    with deterministic(seed):
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
    write_text_atomic(out / README_FILE, readme_text(gt))
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


def readme_text(gt: dict[str, Any]) -> str:
    """Return the build's README.md, filled in from its ground truth (`templates/mq-digits.md`)."""
    q = _quantiles(np.array([c["test_acc"] for c in gt["candidates"]]))
    n_low = [sum(b == LOW_BITS for b in c["bits"].values()) for c in gt["candidates"]]
    sizes = gt["data"]["split_sizes"]
    taus = baseline_taus(gt)
    return render_readme(BENCH_NAME, {
        "seed": gt["seed"], "num_configs": len(gt["candidates"]),
        "build_seconds": gt["build_seconds"], "build_cpu_seconds": gt["build_cpu_seconds"],
        "train_images": sizes["train"], "calib_images": sizes["calib"], "test_images": sizes["test"],
        "num_layers": len(gt["layers"]), "num_weights": sum(gt["params"].values()),
        "epochs": gt["train"]["epochs"], "lr": gt["train"]["lr"], "float_test_acc": f"{gt['float_test_acc']:.4f}",
        "weight_bit_choices": gt["weight_bit_choices"], "act_bits": gt["act_bits"],
        "max_low_layers": len(gt["layers"]) // 2,
        "low_min": min(n_low), "low_median": int(np.median(n_low)), "low_max": max(n_low),
        **{f"acc_{k}": f"{q[k]:.4f}" for k in ("min", "q25", "median", "q75", "max")},
        **{f"tau_{k}": f"{taus[k]:.3f}" for k in ("avg_bits", "bit_params", "neg_num_2bit")},
        "layer_rows": "\n".join(f"| `{name}` | {gt['params'][name]} |" for name in gt["layers"]),
        "gt_format": GT_FORMAT,
    })


def baseline_taus(gt: dict[str, Any]) -> dict[str, float]:
    """Return Kendall tau of test_acc with simple bit-counting scores (how easy the benchmark is)."""
    layers = gt["layers"]
    bits = np.array([[c["bits"][n] for n in layers] for c in gt["candidates"]], dtype=np.float64)
    params = np.array([gt["params"][n] for n in layers], dtype=np.float64)
    acc = np.array([c["test_acc"] for c in gt["candidates"]])
    scores = {"avg_bits": bits.mean(1), "bit_params": bits @ params, "neg_num_2bit": -(bits == LOW_BITS).sum(1)}
    return {name: kendall(score, acc) for name, score in scores.items()}


# ----------------------------------------------------------------------------- the benchmark


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
        self._state = load_weights(w_path, self.gt["layers"])
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
