"""A run's hall of fame on disk: write and read `hall_of_fame.json`, score it on held-out data, export its proxies.

`hall_of_fame.json` (format `emq-hall-of-fame/1`) lists the best distinct programs,
best first, each with its fitness per target on the search split (and on the
held-out split when the run had one) and its `emq-proxy/1` JSON, so any entry can
be reused without the run folder's other files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from emq.atomic import check_writes, write_json_atomic
from emq.fitness import bootstrap_interval, get_metric
from emq.proxy import Proxy
from emq.safe_read import MAX_JSON_BYTES, read_text_limited
from emq.strict_json import loads_strict
from search.config import ENGINE, RunFolderError, SearchConfig
from search.individual import Program
from search.run_folder import run_folder_files

HOF_FORMAT = "emq-hall-of-fame/1"


def hall_entry(rank: int, ind: Program) -> dict[str, Any]:
    """Return a scored program as a hall-of-fame entry: formula, hash, fitness and per-target values, size."""
    rec = ind.record
    assert rec is not None, "only scored programs enter the hall of fame"
    return {"rank": rank, "formula": ind.proxy.formula(), "hash": ind.hash, "fitness": rec["fitness"],
            "search": dict(rec["targets"]), "search_plain": dict(rec.get("plain", rec["targets"])),
            "size": ind.proxy.size, "flags": list(rec.get("flags", []))}


def rescored_hall(hall: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return a sketched search's hall with its search-split fitness from `records` (scored on the full statistics).

    Each entry keeps its sketched values under `search_sketched` (fitness, search,
    search_plain); `fitness`, `search` and `search_plain` become the full-statistics ones,
    and the hall is ranked again by them (ties keep the sketched order). An entry that
    fails or has no fitness on the full statistics is dropped: it cannot be judged.
    """
    out = []
    for entry, rec in zip(hall, records):
        if rec["fitness"] is None:
            continue
        full = dict(entry, search_sketched={k: entry[k] for k in ("fitness", "search", "search_plain")})
        plain = rec.get("plain", rec["targets"])
        full.update(fitness=rec["fitness"], search=dict(rec["targets"]), search_plain=dict(plain))
        out.append(full)
    out.sort(key=lambda e: -e["fitness"])
    for rank, entry in enumerate(out, start=1):
        entry["rank"] = rank
    return out


def add_heldout(entry: dict[str, Any], scores: np.ndarray, truth: Mapping[str, np.ndarray], metric: str,
                failures: dict[str, int] | None = None, n_boot: int = 1000) -> None:
    """Add held-out correlations (with 95% bootstrap intervals) per target to a hall-of-fame entry."""
    fn = get_metric(metric)
    entry["heldout"] = {t: fn(scores, np.asarray(col)) for t, col in truth.items()}
    entry["heldout_ci"] = {t: list(bootstrap_interval(scores, np.asarray(col), fn, n_boot)) for t, col in truth.items()}
    if failures:
        entry["heldout_failures"] = failures


def write_hall_of_fame(run_dir: Path, hall: list[dict[str, Any]], config: SearchConfig, command: str | None,
                       meta: Mapping[str, Any] | None = None) -> Path:
    """Write hall_of_fame.json: each program with its fitness per target and its `emq-proxy/1` JSON."""
    programs = []
    for entry in hall:
        clean = {k: v for k, v in entry.items() if k != "heldout_scores"}
        proxy_meta = {"fitness": {"metric": config.metric, "search": entry["search"]}, "seed": config.seed,
                      "engine": ENGINE, "rank": entry["rank"], **dict(meta or {})}
        if "heldout" in entry:
            proxy_meta["fitness"]["heldout"] = entry["heldout"]
        clean["proxy"] = Proxy.from_formula(entry["formula"], meta=proxy_meta).to_json()
        programs.append(json_finite(clean))
    data = {"format": HOF_FORMAT, "engine": ENGINE, "metric": config.metric, "joint": config.joint,
            "seed": config.seed, "command": command, **dict(meta or {}), "programs": programs}
    return write_json_atomic(run_dir / "hall_of_fame.json", data)


def json_finite(value: Any) -> Any:
    """Return `value` with non-finite floats replaced by None (JSON has no NaN: undefined correlations are null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    return value


def load_hall_of_fame(run_dir: str | Path) -> dict[str, Any]:
    """Return the content of a run's hall_of_fame.json."""
    path = Path(run_dir) / "hall_of_fame.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished `emq search` run folder?")
    text = read_text_limited(path, MAX_JSON_BYTES, "hall of fame (hall_of_fame.json)", RunFolderError)
    try:
        data = loads_strict(text)
    except ValueError as err:  # syntax, duplicate keys, nesting
        raise RunFolderError(f"{path}: not valid JSON ({err}); the file is damaged, rerun or restore it") from None
    if not isinstance(data, dict) or data.get("format") != HOF_FORMAT:
        found = repr(data.get("format")) if isinstance(data, dict) else f"absent: the file holds a {type(data).__name__}"
        raise RunFolderError(f"{path}: not an {HOF_FORMAT} file (field 'format' is {found}); "
                             "point to a folder written by `emq search`")
    programs = data.get("programs")
    if not isinstance(programs, list) or not all(isinstance(p, dict) and "proxy" in p for p in programs):
        raise RunFolderError(f"{path}: field 'programs' must be a list of objects with a 'proxy'; the file is "
                             "damaged, rerun or restore it")
    for i, entry in enumerate(programs):
        proxy = Proxy.from_json(entry["proxy"], source=f"{path}: programs[{i}].proxy")
        if "formula" in entry and entry["formula"] != proxy.formula():
            raise RunFolderError(f"{path}: programs[{i}] has formula {entry.get('formula')!r} but its proxy is "
                                 f"{proxy.formula()!r}; the file was edited or damaged: rerun or restore it")
    return data


def export_run(run_dir: str | Path, top: int = 1, out: str | Path = "proxy.json") -> list[Path]:
    """Save the `top` best programs of a run as proxy JSON files and return their paths.

    With `top` 1 the file is `out`; with more, `out`'s stem gets the rank
    (`proxy-1.json`, `proxy-2.json`, ...).
    """
    out = Path(out)
    if top < 1:
        raise RunFolderError(f"top must be at least 1, got {top}")
    proxies = export_proxies(run_dir, top)
    if not proxies:
        raise RunFolderError(f"{run_dir}: the hall of fame is empty (no program passed screening)")
    if len(proxies) == 1 and top == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, len(proxies) + 1)]
    # Everything is checked before the first write, so a refused export leaves no partial set behind,
    # and no output may land on a file of the run folder it reads (its hall of fame, config, checkpoint).
    check_writes(paths, run_folder_files(run_dir))
    return [p.save(path) for p, path in zip(proxies, paths)]


def export_proxies(run_dir: str | Path, top: int = 1) -> list[Proxy]:
    """Return the `top` best programs of a run as Proxy objects (meta: fitness per target, seed, engine)."""
    data = load_hall_of_fame(run_dir)
    programs = data["programs"][: max(0, top)]
    return [Proxy.from_json(p["proxy"], source=f"{run_dir}/hall_of_fame.json") for p in programs]
