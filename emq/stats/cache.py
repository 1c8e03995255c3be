"""On-disk cache of network statistics: computed once per (benchmark, candidate, batch, config), then loaded.

Layout: `<cache root>/<benchmark>/<config key>/<candidate id>.pt`, one file per
candidate (a plain dict of tensors / ints / strings, written atomically, read with
`weights_only=True`), plus `manifest.json` describing the configuration and the
batch. The config key hashes everything a statistic depends on: CODE_VERSION, the
benchmark (name, weights: its `cache_token` attribute, else for trained weights a
digest of one built model's state dict; activation bits), the batch and
calibration tensors' contents, and the config fields except `device`. Each file's
key adds the candidate's id and `Candidate.fingerprint` (its bits or arch), so a
ground-truth file that reuses an id for another configuration never reads a stale file.

Threads: statistics are computed on one torch intra-op thread (`emq.threads.one_thread`), so a
file holds the same bytes on any machine's core count; `emq.stats.fill` adds processes instead.

Integrity: each file carries a checksum of its content (`content_checksum`), verified on
every read; a file that fails it (or has none) is recomputed with a warning, never used.

Composition: a config that adds structured statistics to a cached one (same settings,
exactly its other statistics) reuses that folder's files and computes only the added ones (`Donor`).

Per-(layer, bits) statistics (`lb_*`, `emq.stats.layer_bits`) are not in the candidate files:
one table per (benchmark, batch, init seed), `layer-bits-table.json` (JSON, checked on read) in the
folder of that neutral config, is computed once and each configuration's values are read from it.

Memory: files hold 16-bit tensors by default (see `emq.stats.compute` for the
float16 / bfloat16 rule); on load, tensors of `SHARED_STATS` that are identical
across candidates (the full-precision weights of a mixed-precision benchmark) are
kept once in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from emq.atomic import save_tensors_atomic, write_json_atomic
from emq.bench.base import Batch, Benchmark, Candidate
from emq.errors import DeviceError
from emq.paths import cache_dir
from emq.stats import STATS, NetworkStats
from emq.stats.compute import compute_stats
from emq.stats.config import StatsConfig
from emq.stats.structured import STRUCTURED_STATS
from emq.threads import one_thread
from emq.stats.layer_bits import LayerBitsTable, compute_layer_bits_table, layer_traces

#: Bump whenever a statistic's definition or the file layout changes: old cache folders are then ignored.
CODE_VERSION = 2  # 2: ViT benchmarks' "all applicable" set gained the transformer statistics
FILE_FORMAT = "emq-stats/1"
LAYER_BITS_FILE = "layer-bits-table.json"
#: Statistics kept once in memory when equal across candidates (MQ: one full-precision network).
SHARED_STATS: tuple[str, ...] = ("weight",)


def check_device(name: str | None) -> str | None:
    """Return `name` if this machine can compute statistics on that torch device (None: the default), else fail."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{name!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise DeviceError(f"{name!r}: EMQ computes statistics on cpu or cuda devices only")
    return name


# ------------------------------------------------------------------------ keys
def tensor_digest(t: torch.Tensor | None) -> str | None:
    """Return a short content hash of a tensor (dtype, shape and bytes)."""
    if t is None:
        return None
    t = t.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of large tensors
    return h.hexdigest()


def calibration_inputs(bench: Benchmark) -> torch.Tensor | None:
    """Return the benchmark's activation-calibration inputs (attribute or method), or None."""
    calib = getattr(bench, "calibration_inputs", None)
    return calib() if callable(calib) else calib


def weights_token(bench: Benchmark) -> str | None:
    """Return what identifies the benchmark's network weights: its `cache_token` attribute if set, else,
    for trained weights, a digest of the first candidate's state dict (a rebuilt benchmark gets a new cache)."""
    token = getattr(bench, "cache_token", None)
    if token is not None or not bench.trained_weights:
        return None if token is None else str(token)
    try:
        cands = bench.candidates()
        state = bench.build_model(cands[0]).state_dict() if cands else {}
    except Exception:  # weights not readable: computing would fail anyway, reading the cache need not
        return None
    h = hashlib.blake2b(digest_size=12)
    for name, t in state.items():
        h.update(name.encode())
        h.update((tensor_digest(t) or "").encode())
    return h.hexdigest()


def bench_fields(bench: Benchmark, batch: Batch) -> dict[str, Any]:
    """Return what, besides the config, the statistics of `bench` depend on."""
    return {
        "benchmark": bench.name,
        "cache_token": weights_token(bench),
        "act_bits": getattr(bench, "act_bits", 8),
        "batch": batch.describe(),
        "batch_inputs": tensor_digest(batch.inputs),
        "batch_labels": tensor_digest(batch.labels),
        "calibration": tensor_digest(calibration_inputs(bench)),
    }


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_key(bench_name: str, config: StatsConfig, extra: dict[str, Any] | None = None) -> str:
    """Return the folder key of one (benchmark, config): a hash including CODE_VERSION."""
    return _hash({"code_version": CODE_VERSION, "bench": bench_name, "config": config.key_fields(), "extra": extra or {}})


def cache_key(bench_name: str, candidate: Candidate, config: StatsConfig, extra: dict[str, Any] | None = None) -> str:
    """Return the key of one candidate's statistics (stored in its file and checked on load).

    It names the candidate by id and by `Candidate.fingerprint` (its bits or arch): a file
    written for another network under the same id is stale and recomputed.
    """
    return f"{config_key(bench_name, config, extra)}/{candidate.id}@{candidate.fingerprint()}"


def safe_name(text: str) -> str:
    """Return `text` as a file-name part (odd characters replaced, a hash appended when anything changed)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100]
    if clean != text or clean.startswith("."):
        clean = f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return clean


def candidate_file(folder: Path, candidate: Candidate) -> Path:
    """Return where `candidate`'s statistics file lies in cache folder `folder` (the layout's one rule)."""
    return folder / f"{safe_name(candidate.id)}.pt"


def cache_folder(bench: Benchmark, config: StatsConfig, cache_root: str | Path | None = None) -> Path:
    """Return the folder holding `bench`'s statistics for `config`."""
    batch = bench.batch(config.batch_seed, config.batch_size)
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / safe_name(bench.name) / config_key(bench.name, config, bench_fields(bench, batch))


# ----------------------------------------------------------------- load / save
def load_or_compute(
    bench: Benchmark,
    candidates: Sequence[Candidate],
    config: StatsConfig | None = None,
    progress: bool = True,
    cache_root: str | Path | None = None,
) -> list[NetworkStats]:
    """Return the statistics of `candidates` (in order), reading the cache and computing what is missing.

    Missing or unreadable files are computed and written atomically (a corrupt file
    is recomputed with a warning). The defaults follow `StatsConfig()` and `cache_dir()`.
    Tensors of `SHARED_STATS` equal across candidates are kept once.
    """
    shared = _SharedTensors(SHARED_STATS)
    return [shared.share(stats) for stats in iter_stats(bench, candidates, config, progress, cache_root)]


def iter_stats(
    bench: Benchmark,
    candidates: Sequence[Candidate],
    config: StatsConfig | None = None,
    progress: bool = True,
    cache_root: str | Path | None = None,
) -> Iterator[NetworkStats]:
    """Yield the statistics of `candidates` one at a time, in order (as `load_or_compute`, holding one in memory).

    For a pass over many large candidates (ViTs at 224x224: tens to hundreds of MB each)
    whose per-candidate results are all that is kept, e.g. scoring program baselines.
    """
    config = config or StatsConfig()
    batch = bench.batch(config.batch_seed, config.batch_size)
    extra = bench_fields(bench, batch)
    root = Path(cache_root) if cache_root is not None else cache_dir()
    folder = root / safe_name(bench.name) / config_key(bench.name, config, extra)
    _write_manifest(folder, bench, config, extra)
    calib = calibration_inputs(bench)
    act_bits = getattr(bench, "act_bits", 8)
    device = config.resolved_device()

    computed = composed = 0
    donor = Donor.find(folder.parent, config, extra)
    table: LayerBitsTable | None = None
    bar = tqdm(candidates, desc=f"stats {bench.name}", unit="net", disable=not progress, leave=False)
    for cand in bar:
        names = config.stats_for(cand, bench.family)
        from_table = [n for n in names if STATS[n].per_layer_bits]
        if from_table:
            if cand.bits is None:
                raise ValueError(f"statistic(s) {from_table} need a bit assignment; candidate {cand.id!r} has none")
            if table is None or ("lb_hessian_error" in from_table and "lb_hessian_error" not in table.values):
                table = layer_bits_table(bench, config, cache_root, hessian="lb_hessian_error" in from_table)
            table_stats = table.network_stats(cand.bits, from_table)
            if len(from_table) == len(names):  # nothing per configuration: no network pass, no file
                yield table_stats
                continue
        path = candidate_file(folder, cand)
        key = cache_key(bench.name, cand, config, extra)
        stats = read_stats(path, key) if path.exists() else None
        if stats is None:
            start = time.perf_counter()
            model = bench.build_model(cand, init_seed=config.init_seed)

            def compute(stat_names: Sequence[str]) -> NetworkStats:
                with one_thread():  # the same bytes whatever the core count (and fill_cache's workers)
                    return compute_stats(
                        model, batch, cand.bits, list(stat_names),
                        act_bits=act_bits, calib_inputs=calib, hessian_samples=config.hessian_samples,
                        seed=config.batch_seed, device=device, store_dtype=config.torch_dtype(),
                        teacher=bench.teacher(),
                    )

            stats = donor.compose(cand, compute) if donor is not None else None
            composed += stats is not None
            if stats is None:
                stats = compute([n for n in names if n not in from_table])
            write_stats(path, key, cand.id, stats, seconds=time.perf_counter() - start)
            computed += 1
            bar.set_postfix(computed=computed, composed=composed)
        if from_table:
            for layer, values in table_stats.layers.items():
                stats.layers.setdefault(layer, {}).update(values)
        yield stats
    bar.close()


# --------------------------------------------------------------- composition
@dataclasses.dataclass(frozen=True)
class Donor:
    """A cached config whose files hold all of a wanted config's statistics but its structured ones.

    Its files are reused and only the structured statistics are computed: those run their
    own passes (`emq.stats.structured`), so computing them apart and joining gives the same
    tensors, entries and order as computing everything together (tests/test_stats.py checks
    it on a network with activation entries). Adding `act_channel_corr` to a 6,000-cell
    search's statistics then costs its own pass, not the whole set again.
    """

    config: StatsConfig
    folder: Path
    extra: dict[str, Any]  # `bench_fields`: what the files depend on besides the config (benchmark name included)
    missing: tuple[str, ...]

    @classmethod
    def find(cls, bench_folder: Path, config: StatsConfig, extra: dict[str, Any]) -> "Donor | None":
        """Return the donor of `config` in `bench_folder`: the sibling folder of the same config with exactly its
        non-structured statistics, its manifest agreeing (batch, weights, code version); else None."""
        if config.stat_names is None:
            return None
        main = tuple(n for n in config.stat_names if n not in STRUCTURED_STATS)
        missing = tuple(n for n in config.stat_names if n in STRUCTURED_STATS)
        if not main or not missing or any(STATS[n].head_entry or STATS[n].per_layer_bits for n in main):
            return None
        donor = dataclasses.replace(config, stat_names=main)
        folder = bench_folder / config_key(str(extra["benchmark"]), donor, extra)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("config") != donor.key_fields() \
                or manifest.get("depends_on") != extra or manifest.get("code_version") != CODE_VERSION:
            return None
        return cls(donor, folder, extra, missing)

    def compose(self, cand: Candidate, compute: Callable[[Sequence[str]], NetworkStats]) -> NetworkStats | None:
        """Return `cand`'s statistics: the donor's file joined with `compute(self.missing)`; None when the donor has
        no readable file for `cand` or the two parts disagree on layers, params or flops (compute everything then)."""
        path = candidate_file(self.folder, cand)
        if not path.exists():
            return None
        cached = read_stats(path, cache_key(str(self.extra["benchmark"]), cand, self.config, self.extra))
        if cached is None:
            return None
        fresh = compute(self.missing)
        order = list(fresh.layers)
        if [n for n in order if n in cached.layers] != list(cached.layers) \
                or any(fresh.params.get(n) != cached.params.get(n) or fresh.flops.get(n) != cached.flops.get(n)
                       for n in cached.layers) \
                or any(fresh.params[n] for n in order if n not in cached.layers):
            return None
        layers = {n: {**cached.layers.get(n, {}), **fresh.layers[n]} for n in order}
        return NetworkStats(layers, dict(fresh.params), dict(fresh.flops))


def bit_choices(bench: Benchmark) -> tuple[int, ...]:
    """Return the weight bit-widths of `bench`'s configurations (its `weight_bit_choices`, else those they use)."""
    declared = getattr(bench, "weight_bit_choices", None)
    if declared:
        return tuple(sorted({int(b) for b in declared}))
    return tuple(sorted({int(b) for c in bench.candidates() if c.bits for b in c.bits.values()}))


def layer_bits_table(bench: Benchmark, config: StatsConfig | None = None,
                     cache_root: str | Path | None = None, hessian: bool = True) -> LayerBitsTable:
    """Return `bench`'s per-(layer, bits) table for `config`'s batch, computing and caching it once.

    The file is keyed like the statistics of the neutral config (batch seed, batch size,
    init seed; stat names, dtype and Hessian samples do not change the table) plus the
    bit choices; an unreadable or stale file is recomputed with a warning. `hessian=False` does not
    compute `lb_hessian_error`'s traces when the file lacks them (they cost most of the table).
    """
    config = config or StatsConfig()
    batch = bench.batch(config.batch_seed, config.batch_size)
    neutral = StatsConfig(batch_seed=config.batch_seed, batch_size=config.batch_size, init_seed=config.init_seed)
    choices = bit_choices(bench)
    key = f"{config_key(bench.name, neutral, bench_fields(bench, batch))}/layer-bits{list(choices)}"
    root = Path(cache_root) if cache_root is not None else cache_dir()
    path = root / safe_name(bench.name) / config_key(bench.name, neutral, bench_fields(bench, batch)) / LAYER_BITS_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("key") != key:
                raise ValueError(f"written for key {data.get('key') if isinstance(data, dict) else None!r}")
            table = LayerBitsTable.from_json(data["table"])
            if table.choices != choices:
                raise ValueError(f"bit choices {list(table.choices)}, expected {list(choices)}")
            if hessian and "lb_hessian_error" not in table.values:
                table = table.with_hessian(layer_traces(bench.build_model(bench.candidates()[0], init_seed=
                                                                          config.init_seed), batch,
                                                        config.batch_seed, device=config.resolved_device()))
                write_json_atomic(path, {"key": key, "table": table.to_json()})
            return table
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"per-(layer, bits) table {path} is unreadable ({err}); recomputing it", stacklevel=2)
    cands = bench.candidates()
    if not cands or not choices:
        raise ValueError(f"{bench.name} has no bit configurations: it has no per-(layer, bits) table")
    table = compute_layer_bits_table(
        bench.build_model(cands[0], init_seed=config.init_seed), choices, batch,
        evaluation=bench.calibration_batch(), act_bits=getattr(bench, "act_bits", 8),
        calib_inputs=calibration_inputs(bench), seed=config.batch_seed, hessian=hessian,
        device=config.resolved_device())
    write_json_atomic(path, {"key": key, "table": table.to_json()})
    return table


def write_stats(path: str | Path, key: str, candidate_id: str, stats: NetworkStats, seconds: float = 0.0) -> Path:
    """Write one candidate's statistics atomically as a plain dict (loadable with weights_only=True)."""
    data = {
        "format": FILE_FORMAT,
        "key": key,
        "candidate": candidate_id,
        "layer_order": list(stats.layers),
        "layers": stats.layers,
        "params": {k: int(v) for k, v in stats.params.items()},
        "flops": {k: int(v) for k, v in stats.flops.items()},
        "seconds": float(seconds),
    }
    data["checksum"] = content_checksum(data)
    return save_tensors_atomic(path, data)


def content_checksum(data: dict[str, Any]) -> str:
    """Return a hash of a statistics file's content (every tensor's dtype, shape and bytes, params, flops).

    Stored in the file and verified on read: a flipped byte inside a tensor would
    otherwise load fine and silently change every score computed from it.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([data["key"], data["candidate"], data["layer_order"], data["params"], data["flops"]],
                        sort_keys=True).encode())
    for layer in data["layer_order"]:
        for name in sorted(data["layers"][layer]):
            h.update(f"{layer}/{name}:{tensor_digest(data['layers'][layer][name])};".encode())
    return h.hexdigest()


def read_stats(path: str | Path, key: str | None = None) -> NetworkStats | None:
    """Return the statistics stored at `path`, or None (with a warning) when the file is unreadable or stale."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise ValueError(f"not an {FILE_FORMAT} file")
        if key is not None and data.get("key") != key:
            raise ValueError(f"written for key {data.get('key')!r}, expected {key!r}")
        layers = data["layers"]
        order = data["layer_order"]
        if not isinstance(layers, dict) or set(order) != set(layers):
            raise ValueError("layer table is inconsistent")
        if not all(isinstance(t, torch.Tensor) for stats in layers.values() for t in stats.values()):
            raise ValueError("a statistic is not a tensor")
        if "checksum" not in data:
            raise ValueError("it carries no content checksum (written by an older EMQ)")
        if data["checksum"] != content_checksum(data):
            raise ValueError("its content does not match its checksum (the file was altered or damaged)")
        return NetworkStats({n: dict(layers[n]) for n in order}, dict(data["params"]), dict(data["flops"]))
    except Exception as err:  # any unreadable file is recomputed; the cache must never stop a run
        warnings.warn(f"statistics cache file {path} is unreadable ({type(err).__name__}: {err}); recomputing it",
                      stacklevel=3)
        return None


def _write_manifest(folder: Path, bench: Benchmark, config: StatsConfig, extra: dict[str, Any]) -> None:
    manifest = {
        "format": "emq-stats-cache/1",
        "code_version": CODE_VERSION,
        "benchmark": bench.name,
        "family": bench.family,
        "config": config.key_fields(),
        "depends_on": extra,
        "batch": extra["batch"],
        "stat_names": list(config.stat_names) if config.stat_names is not None else "all applicable",
    }
    path = folder / "manifest.json"
    try:
        if json.loads(path.read_text(encoding="utf-8")) == manifest:
            return
    except (OSError, ValueError):
        pass
    write_json_atomic(path, manifest)


class _SharedTensors:
    """Replaces equal tensors of the given statistics by one shared instance (read-only use assumed)."""

    def __init__(self, stat_names: Sequence[str]) -> None:
        self.stat_names = tuple(stat_names)
        self.seen: dict[tuple[str, str, str], torch.Tensor] = {}

    def share(self, stats: NetworkStats) -> NetworkStats:
        for layer, tensors in stats.layers.items():
            for stat in self.stat_names:
                t = tensors.get(stat)
                if t is None:
                    continue
                key = (layer, stat, tensor_digest(t) or "")
                tensors[stat] = self.seen.setdefault(key, t)
        return stats


def stats_nbytes(stats: NetworkStats | Sequence[NetworkStats]) -> int:
    """Return the bytes of tensor storage held by statistics; shared or expanded storage counts once."""
    items = [stats] if isinstance(stats, NetworkStats) else list(stats)
    seen: set[int] = set()
    total = 0
    for item in items:
        for tensors in item.layers.values():
            for t in tensors.values():
                storage = t.untyped_storage()
                if storage.nbytes() and storage.data_ptr() in seen:
                    continue
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total
