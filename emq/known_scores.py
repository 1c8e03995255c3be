"""Committed per-candidate values of the known proxies: the chunk files of `results/known_proxies.py`, read back.

A chunk file holds, for a run of candidates, the ground truth, every known-proxy program
(`program:NAME`, or `part:NAME:K` for a program that ranks candidates among each other, such
as AZ-NAS), every independent reference (`reference:NAME`) and the seconds each cost.
`KnownScores` merges the chunk files of one or more folders (say the search split and the
held-out split), keyed by candidate id, and returns any proxy's values on any subset of
them: a rank aggregate is ranked over exactly that subset, as the fitness ranks it.
Reading parses numbers and one JSON line per file, never code, in one pass per file.

Names: `known:NAME` is the library program NAME (`emq.known`), a bare NAME the reference
baseline of that name (`emq.baselines`), with the AZ-NAS aggregates `az_nas_ec` and
`az_nas_3` of the references where their terms are present.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emq.errors import EMQUserError
from emq.score_table import ScoreTable, ScoreTableError

#: What a chunk file's description says it is (its `settings` must match to be skipped or assembled).
CHUNK_FORMAT = "emq-known-proxies-chunk/1"
#: The description fields of a chunk file and their types (checked on reading: a hand-edited file fails in one line).
CHUNK_META = {"chunk": int, "start": int, "stop": int, "command": str, "stats_seconds": (int, float),
              "disk_bytes": int, "threads": str, "device": str}
CHUNK_SETTINGS = {"benchmark": str, "split": str, "limit": (int, type(None)), "total": int, "chunk_size": int,
                  "targets": list, "batch": dict, "stats": list, "cost_sample": int, "programs": dict,
                  "references": list}
#: The networks' init seed of chunk files that do not record one (the script's only setting before it did).
DEFAULT_INIT_SEED = 0
#: The prefix that names a library program rather than a reference baseline.
KNOWN_PREFIX = "known:"


class ChunkError(EMQUserError, ValueError):
    """A chunk file that cannot be used here (damaged, or written with other settings); the message names the fix."""


def chunk_path(folder: Path, chunk: int) -> Path:
    """Return where chunk `chunk`'s per-candidate values go."""
    return folder / f"chunk-{chunk:03d}.scores.csv"


def read_chunk(path: Path, settings: Mapping[str, Any] | None = None) -> ScoreTable:
    """Return chunk file `path`; a damaged file, or one written with other `settings`, is a one-line ChunkError."""
    fix = f"delete {path} and rerun its --chunk command to recompute it"
    try:
        table = ScoreTable.read(path)
    except ScoreTableError as err:
        raise ChunkError(f"{err}; {fix}") from None
    meta = table.meta
    if meta.get("format") != CHUNK_FORMAT or not isinstance(meta.get("settings"), dict):
        raise ChunkError(f"{path}: not a {CHUNK_FORMAT} file (its first line has no chunk settings); {fix}")
    for fields, data in ((CHUNK_META, meta), (CHUNK_SETTINGS, meta["settings"])):
        for name, kind in fields.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise ChunkError(f"{path}: line 1: field {name!r} is missing or not a {_kind_name(kind)}; {fix}")
    seed = meta.get("init_seed", DEFAULT_INIT_SEED)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ChunkError(f"{path}: line 1: field 'init_seed' is not a whole number; {fix}")
    if path.name != chunk_path(path.parent, meta["chunk"]).name:
        raise ChunkError(f"{path}: holds chunk {meta['chunk']}, not the one its name says; {fix}")
    if settings is not None and meta["settings"] != dict(settings):
        differ = sorted(k for k in set(settings) | set(meta["settings"]) if meta["settings"].get(k) != settings.get(k))
        raise ChunkError(f"{path}: written with other settings ({', '.join(differ)} differ); {fix}, "
                         "or use its settings")
    wanted = {f"program:{n}" for n in meta["settings"]["programs"]} | {f"reference:{n}" for n in
                                                                      meta["settings"]["references"]}
    missing = sorted(c for c in wanted if c not in table.scores
                     and not (c.startswith("program:") and any(s.startswith(f"part:{c[8:]}:") for s in table.scores)))
    if missing or list(table.truth) != meta["settings"]["targets"]:
        what = f"no column {missing[0]!r}" if missing else f"truth columns {list(table.truth)}, not its targets"
        raise ChunkError(f"{path}: {what}; {fix}")
    return table


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"int": "whole number", "float": "number", "str": "string", "list": "list", "dict": "object",
                        "NoneType": "null"}[k.__name__] for k in kinds)


def library_of(programs: Mapping[str, str], where: Path) -> dict[str, Any]:
    """Return the library entries (`emq.known`) of a chunk's programs, refusing any whose formula changed since."""
    from emq.known import get_known

    library = {n: get_known(n) for n in programs}
    changed = [n for n, formula in programs.items() if library[n].formula != formula]
    if changed:
        raise ChunkError(f"{where}: the programs {', '.join(changed)} changed since these chunks were computed; "
                         "delete the chunk files and recompute them")
    return library


def part_columns(library: Mapping[str, Any]) -> list[str]:
    """Return the program columns of a chunk file: `program:NAME`, or `part:NAME:K` for each part of a program that
    ranks candidates among each other (joined only once every chunk is read: `emq.population`)."""
    from emq.population import Expansion

    expansion = Expansion.of([e.proxy for e in library.values()])
    columns = []
    for name, split, where in zip(library, expansion.splits, expansion.where):
        columns += [f"program:{name}"] if split is None else [f"part:{name}:{k}" for k in range(len(where))]
    return columns


def named_values(columns: Mapping[str, np.ndarray], library: Mapping[str, Any]) -> tuple[dict[str, np.ndarray],
                                                                                         dict[str, np.ndarray]]:
    """Return (programs, references) by name from a chunk's columns over some candidates.

    A program's parts are joined over exactly these candidates (a rank aggregate ranks
    among them); the references gain the AZ-NAS aggregates whose terms are all present.
    """
    from emq.baselines.structured import AGGREGATES, rank_aggregate
    from emq.population import Expansion

    expansion = Expansion.of([e.proxy for e in library.values()])
    parts = [(columns[c], Counter()) for c in part_columns(library)]
    programs = {name: scores for name, (scores, _) in zip(library, expansion.assemble(parts))}
    references = {c[len("reference:"):]: v for c, v in columns.items() if c.startswith("reference:")}
    for name, terms in AGGREGATES.items():
        if all(t in references for t in terms):
            references[name] = rank_aggregate(references, terms)
    return programs, references


@dataclass
class KnownScores:
    """The known proxies' per-candidate values from chunk files, keyed by candidate id.

    Files may hold different proxies (the search split's chunks every program, the held-out
    split's only the one the search split chose, which saves hours): a proxy is scored on
    a set of candidates only when every one of them has its values (`present`).
    """

    benchmark: str
    sources: list[Path]
    rows: dict[str, int]
    columns: dict[str, np.ndarray]
    library: dict[str, Any]
    batch: dict[str, Any]
    init_seed: int
    truth: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    @classmethod
    def read(cls, folders: Sequence[str | Path]) -> "KnownScores":
        """Merge every chunk file of `folders`; they must share one benchmark, batch and init seed (each program's
        formula is checked against the library's: `library_of`)."""
        paths = [p for f in folders for p in sorted(Path(f).glob("chunk-*.scores.csv"))]
        if not paths:
            where = ", ".join(str(f) for f in folders) or "(no folder)"
            raise ChunkError(f"{where}: no chunk-KKK.scores.csv file; compute them with results/known_proxies.py "
                             "--chunk K (its docstring has the commands)")
        tables = [read_chunk(p) for p in paths]
        first = tables[0].meta
        for path, table in zip(paths[1:], tables[1:]):
            for field in ("benchmark", "batch"):
                if table.meta["settings"][field] != first["settings"][field]:
                    raise ChunkError(f"{path}: its {field} differ from {paths[0]}'s; known-proxy values are only "
                                     "comparable on one benchmark and batch: give folders computed alike")
            if table.meta.get("init_seed", DEFAULT_INIT_SEED) != first.get("init_seed", DEFAULT_INIT_SEED):
                raise ChunkError(f"{path}: its init seed differs from {paths[0]}'s; give folders computed alike")
        names = list(dict.fromkeys(n for t in tables for n in t.scores))
        rows: dict[str, int] = {}
        for path, table in zip(paths, tables):
            for cid in table.candidates:
                if cid in rows:
                    raise ChunkError(f"{path}: candidate {cid} is also in another chunk file; give each split's "
                                     "folder once")
                rows[cid] = len(rows)
        columns = {n: np.concatenate([t.scores[n] if n in t.scores else np.full(len(t.candidates), np.nan)
                                      for t in tables]) for n in names}
        present = {n: np.concatenate([np.full(len(t.candidates), n in t.scores) for t in tables]) for n in names}
        targets = [t for t in tables[0].truth if all(t in tab.truth for tab in tables)]
        truth = {t: np.concatenate([tab.truth[t] for tab in tables]) for t in targets}
        programs: dict[str, str] = {}
        for table in tables:
            programs.update(table.meta["settings"]["programs"])
        return cls(first["settings"]["benchmark"], paths, rows, columns, library_of(programs, paths[0]),
                   dict(first["settings"]["batch"]), int(first.get("init_seed", DEFAULT_INIT_SEED)), truth, present)

    def names(self) -> list[str]:
        """Return every proxy these files can score on some candidates: `known:NAME` programs, then references."""
        programs, references = self._named(np.zeros(1, dtype=np.int64), anywhere=True)  # names, not values
        return [KNOWN_PREFIX + n for n in programs] + sorted(references)

    def values(self, candidate_ids: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Return each of `names` on `candidate_ids`, in order (rank aggregates ranked among exactly these)."""
        programs, references = self._named(self._index(candidate_ids))
        out = {}
        for name in names:
            found = (programs.get(name[len(KNOWN_PREFIX):]) if name.startswith(KNOWN_PREFIX)
                     else references.get(name))
            if found is None:
                if name in self.names():
                    raise ChunkError(f"{name!r} has values for only some of these {len(candidate_ids)} candidates in "
                                     f"{self._where()}; compute the chunks of the others with results/known_proxies.py "
                                     f"--names {name.removeprefix(KNOWN_PREFIX)}")
                raise ChunkError(f"{name!r} is not in {self._where()}; these files hold {', '.join(self.names())}")
            out[name] = found
        return out

    def _named(self, index: np.ndarray, anywhere: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return (programs, references) over rows `index`, from the columns present on all of them (`anywhere`:
        on any row, for listing names)."""
        held = [c for c in self.columns if (self.present[c].any() if anywhere else self.present[c][index].all())]
        columns = {c: self.columns[c][index] for c in held}
        library = {n: e for n, e in self.library.items() if all(c in columns for c in part_columns({n: e}))}
        return named_values(columns, library)

    def truth_on(self, candidate_ids: Sequence[str], target: str) -> np.ndarray:
        """Return the ground truth `target` the files recorded for `candidate_ids`, in order."""
        if target not in self.truth:
            raise ChunkError(f"{self._where()} hold no truth column {target!r} (they hold {', '.join(self.truth)})")
        return self.truth[target][self._index(candidate_ids)]

    def _index(self, candidate_ids: Sequence[str]) -> np.ndarray:
        absent = [c for c in candidate_ids if c not in self.rows]
        if absent:
            raise ChunkError(f"{len(absent)} of {len(candidate_ids)} candidates (first: {absent[0]}) have no values "
                             f"in {self._where()}; compute the chunks that hold them with results/known_proxies.py")
        return np.fromiter((self.rows[c] for c in candidate_ids), dtype=np.int64, count=len(candidate_ids))

    def _where(self) -> str:
        folders = sorted({str(p.parent) for p in self.sources})
        return "the chunk files of " + ", ".join(folders)
