"""The embedded image data: scikit-learn's digits, upsampled, normalised and split deterministically.

`sklearn.datasets.load_digits` ships inside the scikit-learn wheel (1797 grey 8x8
images of the digits 0-9, pixel values 0..16), so the embedded benchmarks need no
download. Images are scaled to [0, 1], upsampled bilinearly (16x16 for the digits
CNN, 224x224 when a batch must look like ImageNet input), then normalised with the
mean / std of the *train* split only.

The split is stratified and fixed by a seed: `n_train` train images (proxies are
computed on these, never on test images), `n_calib` calibration images (used only to
calibrate activation ranges for post-training quantization) and the rest as test
images (ground-truth accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from emq.bench.base import Batch

#: Images per split; the test split is what remains of the 1797 images.
N_TRAIN = 1000
N_CALIB = 100
NUM_CLASSES = 10
#: The resolution the digits CNN is trained at.
RESOLUTION = 16

SPLITS = ("train", "calib", "test")


@dataclass(frozen=True)
class DigitsSplit:
    """Indices into `load_digits()` for each split, and the train-split normalisation."""

    seed: int
    train: np.ndarray
    calib: np.ndarray
    test: np.ndarray
    mean: float
    std: float

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown digits split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {name: int(len(self.indices(name))) for name in SPLITS}


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    labels = data.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _upsample(images: np.ndarray, resolution: int) -> torch.Tensor:
    """Return (n, 1, r, r) float32 images, bilinear from 8x8 (align_corners=False)."""
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    if resolution == x.shape[-1]:
        return x.clone()
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


@lru_cache(maxsize=8)
def digits_split(seed: int = 0, n_train: int = N_TRAIN, n_calib: int = N_CALIB) -> DigitsSplit:
    """Return the stratified train / calibration / test split for `seed` (same seed, same split)."""
    from sklearn.model_selection import train_test_split

    images, labels = _raw()
    n = len(labels)
    if n_train < NUM_CLASSES or n_calib < NUM_CLASSES or n_train + n_calib > n - NUM_CLASSES:
        raise ValueError(f"cannot split {n} digits into {n_train} train and {n_calib} calibration images "
                         f"(each split needs at least {NUM_CLASSES} images)")
    all_idx = np.arange(n)
    train, rest = train_test_split(all_idx, train_size=n_train, stratify=labels, random_state=seed)
    calib, test = train_test_split(rest, train_size=n_calib, stratify=labels[rest], random_state=seed + 1)
    # Normalisation statistics of the train split at the training resolution.
    train_px = _upsample(images[np.sort(train)], RESOLUTION)
    mean, std = float(train_px.mean()), float(train_px.std())
    parts = [np.sort(a).astype(np.int64) for a in (train, calib, test)]
    for a in parts:
        a.setflags(write=False)
    return DigitsSplit(seed, parts[0], parts[1], parts[2], mean, std)


def split_tensors(split: str, seed: int = 0, resolution: int = RESOLUTION, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Return all images (n, channels, r, r) and labels (n,) of one split, normalised with train statistics."""
    s = digits_split(seed)
    return _images(s, s.indices(split), resolution, channels)


def train_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the train images (n, 1, 16, 16) and labels."""
    return split_tensors("train", seed)


def calibration_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the calibration images (n, 1, 16, 16) and labels (used only for activation ranges)."""
    return split_tensors("calib", seed)


def test_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the test images (n, 1, 16, 16) and labels (ground truth is measured here)."""
    return split_tensors("test", seed)


# Not a pytest test despite the name.
test_split.__test__ = False  # type: ignore[attr-defined]


def batch(seed: int, size: int, split_seed: int = 0, resolution: int = RESOLUTION, channels: int = 1,
          split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return `size` images and labels drawn without replacement from a split (the train split by default).

    The draw depends only on (`seed`, `size`, `split_seed`), never on global RNG state.
    """
    s = digits_split(split_seed)
    pool = s.indices(split)
    if not 1 <= size <= len(pool):
        raise ValueError(f"batch size must be in 1..{len(pool)} (the digits {split} split), got {size}")
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(len(pool), generator=g)[:size].numpy()
    return _images(s, pool[pick], resolution, channels)


def _images(s: DigitsSplit, idx: np.ndarray, resolution: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _raw()
    x = (_upsample(images[idx], resolution) - s.mean) / s.std
    if channels != 1:
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x, torch.from_numpy(labels[idx].copy())


def vit_batch(source: str, seed: int, size: int, *, num_classes: int, resolution: int) -> Batch:
    """Return the deterministic 3-channel batch of `source` ("digits" or "gaussian") for `seed`.

    For networks made for other images (ViT-Bench-101's 224x224, NAS-Bench-201's
    32x32): the digits train split upsampled to `resolution`, or seeded Gaussian noise
    with labels below `num_classes`; `Batch.source` records which.
    """
    if source == "digits":
        x, y = batch(seed, size, resolution=resolution, channels=3)
        return Batch(inputs=x, labels=y, source=f"digits-train-{resolution}x{resolution}x3", seed=seed)
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(size, 3, resolution, resolution, generator=g)
    y = torch.randint(0, num_classes, (size,), generator=g)
    return Batch(inputs=x, labels=y, source=f"gaussian-{resolution}x{resolution}x3", seed=seed)
