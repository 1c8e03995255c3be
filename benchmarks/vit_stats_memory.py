"""Peak memory, time and cached size of the statistics of one AutoFormer-Ti candidate (README, "ViT statistics and memory").

    python benchmarks/vit_stats_memory.py a 16 cpu      # stat set (a) at batch 16, on the CPU
    python benchmarks/vit_stats_memory.py c 128 cuda    # set (c) at batch 128, on a GPU
    for s in a b c all; do for b in 16 128; do python benchmarks/vit_stats_memory.py $s $b cpu; done; done

Prints one JSON line. The network is arch-000 of ViT-Bench-101's AutoFormer file
(5.32 M parameters, written out here so no data file is needed) at 224x224 on the
`digits` batch. Run one configuration per process: on the CPU the peak is the
process's largest resident size minus its size before the computation; on CUDA the
peak allocated memory after a warm-up at batch 2. "stored" is the statistics held in
memory (float16 storage), "file" the cache file written for the candidate.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from emq.bench.digits import vit_batch  # noqa: E402
from emq.bench.vit_bench101 import IMG_SIZE, NUM_CLASSES  # noqa: E402
from emq.models.autoformer import autoformer  # noqa: E402
from emq.stats.compute import compute_stats  # noqa: E402
from emq.stats.cache import stats_nbytes, write_stats  # noqa: E402
from emq.stats.compute import applicable_stats  # noqa: E402

#: arch-000 of gt_autoformer.pth
ARCH = {"hidden_dim": 192, "depth": 12, "mlp_ratio": [3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 4.0, 3.5, 4.0, 4.0, 4.0, 3.5],
        "num_heads": [4, 4, 3, 4, 3, 3, 4, 4, 3, 3, 3, 4]}
SETS = {
    "a": ("weight", "grad"),
    "b": ("weight", "grad", "act", "act_grad"),
    "c": ("weight", "grad", "act", "act_grad", "attn", "attn_grad", "head_out", "mlp_hidden", "ln_out"),
    "all": applicable_stats(False, "vit"),
}


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(which: str, size: int, device: str) -> dict:
    model = autoformer(ARCH)
    batch = vit_batch("digits", 0, size, num_classes=NUM_CLASSES, resolution=IMG_SIZE)
    if device.startswith("cuda"):  # CUDA context and kernels are set up outside the measurement
        compute_stats(model, vit_batch("digits", 0, 2, num_classes=NUM_CLASSES, resolution=IMG_SIZE), None, SETS[which], device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mb()
    start = time.perf_counter()
    stats = compute_stats(model, batch, None, SETS[which], device=device, store_dtype=torch.float16)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        file_bytes = os.path.getsize(write_stats(Path(folder) / "c.pt", "key", "arch-000", stats))
    return {"set": which, "stats": list(SETS[which]), "batch": size, "device": device,
            "threads": torch.get_num_threads(), "seconds": round(seconds, 2), "peak_extra_mb": round(peak - base),
            "stored_mb": round(stats_nbytes(stats) / 2**20, 1), "file_mb": round(file_bytes / 2**20, 1)}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in SETS:
        sys.exit(f"usage: python {sys.argv[0]} {{{'|'.join(SETS)}}} BATCH cpu|cuda")
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
