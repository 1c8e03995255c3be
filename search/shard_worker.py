"""The worker side of a pool: hold one shard of the statistics stacked on a device, score the programs sent to it.

A worker (this process for the serial and threading backends, a loky process, a dask
worker or a ray actor) loads its shard once and keeps it stacked (`MAX_SHARDS` sets
at most, least recently used dropped first), or streams it in pieces when it is over
its `max_bytes`. Shards and pieces are whole stacking blocks, so a candidate's score
does not depend on the shard it sits in. A resident shard keeps a subprogram memo
(`emq.subprogram_memo`): a child's subprograms scored before, in its parent, are read
back, with the same scores. A shard with `sketch` K is the same stack read
through its K-entry sketches (built once per stack), so the full and the sketched
scoring of one set share its tensors. The parent side is `search.pool`.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from emq.evaluate import StackedStats, block_for, evaluate_pieces
from emq.proxy import Proxy
from emq.subprogram_memo import SubprogramMemo
from emq.threads import one_thread
from search.stats_source import LOCK, StatsSource, forget_local


@dataclass(frozen=True)
class Shard:
    """One worker's part of a statistics set and how to hold it (small: sent with every call)."""

    source: StatsSource
    device: str | None = None  # None: a GPU per worker if present, else cpu
    claim_dir: str | None = None  # where workers claim GPU slots (round-robin)
    parent_pid: int | None = None  # local worker processes exit when this process is gone
    max_bytes: int | None = None  # stream the shard in pieces of at most this many bytes instead of keeping it
    block: int = 32  # the evaluator's stacking block of the whole set: shards and pieces are whole blocks
    sketch: int = 0  # score on K-entry sketches of the large statistics where a program can (`emq.sketch`); 0: full
    slices: bool = False  # with sketch K: score the programs a sketch cannot serve on K-entry slices (`emq.sketch`)


def shard_bounds(n: int, shards: int, block: int | None = None) -> list[tuple[int, int]]:
    """Return at most `shards` contiguous, near-equal, non-empty [start, stop) ranges covering n candidates.

    Cuts fall on multiples of `block` (the evaluator's stacking block), so every
    candidate is stacked with the same neighbours whatever the number of shards:
    scores are bit-identical between backends and worker counts.
    """
    block = block or block_for(n)
    blocks = -(-n // block)
    k = max(1, min(shards, blocks))
    cuts = [min(n, round(i * blocks / k) * block) for i in range(k + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


#: Shards a worker keeps stacked (least recently used dropped first): a search set and maybe a scoring set.
MAX_SHARDS = 3
_SHARDS: OrderedDict[tuple, list[StackedStats]] = OrderedDict()
_DEVICE: dict[str, str] = {}
#: Candidates per stacked piece when a shard is loaded to be kept: the file copies of one piece are the
#: only transient memory above the stacked shard.
LOAD_PIECE = 32


def unregister_local(source: StatsSource) -> None:
    """Forget statistics registered in this process and the stacks this process's workers built from them."""
    with LOCK:
        forget_local(source)
        for key in [k for k in _SHARDS if k[0].startswith(source.token)]:
            del _SHARDS[key]


def worker_device(preferred: str | None = None, claim_dir: str | None = None) -> str:
    """Return this worker's device: `preferred`, else one CUDA device per worker (round-robin), else cpu."""
    if preferred:
        return preferred
    if not torch.cuda.is_available():
        return "cpu"
    key = claim_dir or ""
    with LOCK:
        if key not in _DEVICE:
            _DEVICE[key] = f"cuda:{_claim_slot(claim_dir) % torch.cuda.device_count()}"
        return _DEVICE[key]


def _claim_slot(claim_dir: str | None) -> int:
    # Each worker process takes the next free slot number (an exclusive file create is atomic),
    # so N workers on one machine spread over the visible GPUs in turn.
    if claim_dir is None:
        return os.getpid()
    os.makedirs(claim_dir, exist_ok=True)
    slot = 0
    while True:
        try:
            fd = os.open(os.path.join(claim_dir, f"slot-{slot}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return slot
        except FileExistsError:
            slot += 1


def _stack_pieces(source: StatsSource, device: str, piece: int, block: int) -> Iterator[tuple[int, StackedStats]]:
    """Yield (offset, stacked statistics) of consecutive pieces of about `piece` candidates of `source`.

    Pieces are whole stacking blocks (see `shard_bounds`), so they stack exactly as one large set would.
    """
    size = max(block, piece // block * block)
    for a in range(0, source.n, size):
        yield a, StackedStats(source.part(a, min(source.n, a + size)).load(), device, block=block)


def _resident(source: StatsSource, device: str, block: int) -> list[tuple[int, StackedStats]]:
    key = (source.token, device, block)
    with LOCK:
        if key in _SHARDS:
            _SHARDS.move_to_end(key)
            return _SHARDS[key]
        # Loaded and stacked in pieces, so the transient file copies stay one piece, not a second shard.
        # A resident shard scores program after program: it keeps their subprograms' per-layer values.
        memo = SubprogramMemo()
        pieces = [(a, stacked.enable_memo(memo, a)) for a, stacked in _stack_pieces(source, device, LOAD_PIECE, block)]
        _SHARDS[key] = pieces
        while len(_SHARDS) > MAX_SHARDS:
            _SHARDS.popitem(last=False)
        return pieces


def _pieces(shard: Shard, device: str) -> Iterator[tuple[int, StackedStats]]:
    for offset, stacked in _full_pieces(shard, device):
        yield offset, stacked.with_sketch(shard.sketch, shard.slices)


def _full_pieces(shard: Shard, device: str) -> Iterator[tuple[int, StackedStats]]:
    source = shard.source
    if shard.max_bytes is None or source.n == 0:
        yield from _resident(source, device, shard.block)
        return
    per_candidate = max(1, source.nbytes() // source.n)
    if per_candidate * source.n <= shard.max_bytes:
        yield from _resident(source, device, shard.block)
        return
    # Over the bound: read it again on every call, one piece at a time (the previous piece is freed first).
    yield from _stack_pieces(source, device, max(1, shard.max_bytes // per_candidate), shard.block)


def evaluate_shard(shard: Shard, programs: Sequence[Proxy]) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Return the scores [program, candidate] of `programs` on the shard's candidates, and each program's failures."""
    watch_parent(shard.parent_pid)
    device = worker_device(shard.device, shard.claim_dir)
    # no_grad is scoped: a global switch would leak into the caller's process (serial, threading)
    with torch.no_grad(), one_thread():
        scores, failures = evaluate_pieces(programs, _pieces(shard, device), shard.source.n)
    return scores, [dict(f) for f in failures]


def init_loky_worker(threads: int) -> None:
    """loky executor initializer: share the cores, and keep the shard (it is not a leak)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # loky restarts a worker whose memory grew by 300 MB since its first job, taking it for a leak:
    # a resident shard grows it by design, and a restart would reload the shard every call.
    from joblib.externals.loky import process_executor

    process_executor._MAX_MEMORY_LEAK_SIZE = float("inf")


#: Seconds between a worker's checks that the search process still exists.
PARENT_POLL_S = 1.0
_WATCHING: list[int] = []


def watch_parent(parent_pid: int | None) -> None:
    """In a local worker process, start (once) a thread that ends the process when `parent_pid` is gone.

    loky keeps idle workers and does not notice a parent killed with SIGKILL, so
    orphaned workers (each holding a shard of the statistics) would stay alive.
    When the parent dies the worker is re-parented, and its parent pid changes.
    """
    if parent_pid is None or parent_pid == os.getpid() or os.getppid() != parent_pid:
        return  # in-process, or not a direct child (a dask or ray worker): nothing to watch
    with LOCK:
        if _WATCHING:
            return
        _WATCHING.append(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="emq-parent-watch", daemon=True).start()
