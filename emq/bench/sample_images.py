"""Natural-image input batches without a download: random crops of the photos shipped in scikit-learn's wheel.

`sklearn.datasets.load_sample_images` returns two 427x640 RGB photos bundled inside
the scikit-learn wheel (`china.jpg`, `flower.jpg`; decoding needs Pillow, which
matplotlib already requires). Random square crops of them are the closest offline
stand-in for CIFAR-like natural images: real edges, textures and colour
statistics, unlike upsampled digits or noise.

A crop picks a photo uniformly, then a top-left corner uniformly, from a private
generator seeded with `seed` (never the global RNG), and is normalised per channel
with the mean / std of both whole photos. The photos carry no class, so labels are
drawn uniformly from the same generator: loss-based statistics then measure how a
random-initialised network's loss reacts to arbitrary targets, as they do on noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the photos (n, 3, h, w) in [0, 1] and their per-channel mean and std (3, 1, 1)."""
    from sklearn.datasets import load_sample_images

    photos = np.stack(load_sample_images().images).astype(np.float32) / 255.0  # (n, h, w, 3)
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous()
    mean = x.mean(dim=(0, 2, 3)).reshape(3, 1, 1)
    std = x.std(dim=(0, 2, 3)).reshape(3, 1, 1)
    return x, mean, std


def photo_crops(seed: int, size: int, resolution: int = 32, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `size` normalised random crops (size, 3, r, r) of the bundled photos and uniform labels in 0..num_classes-1."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    x, mean, std = _photos()
    n, _, h, w = x.shape
    if not 1 <= resolution <= min(h, w):
        raise ValueError(f"crop resolution must be in 1..{min(h, w)}, got {resolution}")
    g = torch.Generator().manual_seed(int(seed))
    which = torch.randint(0, n, (size,), generator=g)
    top = torch.randint(0, h - resolution + 1, (size,), generator=g)
    left = torch.randint(0, w - resolution + 1, (size,), generator=g)
    crops = torch.stack([x[i, :, t:t + resolution, s:s + resolution]
                         for i, t, s in zip(which.tolist(), top.tolist(), left.tolist())])
    labels = torch.randint(0, num_classes, (size,), generator=g)
    return (crops - mean) / std, labels
