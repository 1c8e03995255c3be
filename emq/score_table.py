"""Per-candidate scores on disk: each candidate's ground truth and every scorer's value, as one CSV file.

Every run folder (`heldout_scores.csv`), study run and `emq score --out` writes one, so
any correlation or verdict can be recomputed from committed numbers alone, without
statistics or networks. Layout: a first line `# emq-scores/1 {json}` (what was scored:
benchmark, split, metric, the chosen trivial predictors), then a CSV header
`candidate, truth:<target>..., <scorer>...` and one row per candidate. Names are quoted;
floats are written with `repr` (they read back bit for bit), nan, inf and -inf as Python spells them.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emq.atomic import write_text_atomic
from emq.errors import EMQUserError
from emq.safe_read import read_text_limited

SCORE_TABLE_FORMAT = "emq-scores/1"
TRUTH_PREFIX = "truth:"
#: Largest score table read (about 40 scorers x 15,625 NB201 cells is 15 MB).
MAX_SCORE_TABLE_BYTES = 256 * 2**20


class ScoreTableError(EMQUserError, ValueError):
    """A score table that cannot be read (not one EMQ wrote, or damaged); the message names the file."""


@dataclass
class ScoreTable:
    """Candidates (by id), their ground truth per target and each scorer's values, aligned by row."""

    candidates: list[str]
    truth: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.candidates)
        for kind, columns in (("truth", self.truth), ("scores", self.scores)):
            for name, values in columns.items():
                if len(values) != n:
                    raise ValueError(f"{kind} column {name!r} has {len(values)} values for {n} candidates")
        clash = [n for n in self.scores if n.startswith(TRUTH_PREFIX) or n == "candidate"]
        if clash:
            raise ValueError(f"scorer names {clash} clash with the table's own columns")

    def to_csv(self) -> str:
        """Return the table as text (meta line, header, one row per candidate)."""
        out = io.StringIO(newline="")
        out.write(f"# {SCORE_TABLE_FORMAT} {json.dumps(self.meta, sort_keys=True, allow_nan=False)}\n")
        # Names quoted, numbers not: a name holding a comma, quote, \r or \n reads back as written.
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["candidate", *(TRUTH_PREFIX + t for t in self.truth), *self.scores])
        columns = [*self.truth.values(), *self.scores.values()]
        for i, cid in enumerate(self.candidates):
            writer.writerow([cid, *(float(c[i]) for c in columns)])  # str(float) is the shortest exact repr
        return out.getvalue()

    def write(self, path: str | Path) -> Path:
        """Write the table to `path` atomically; return `path`."""
        return write_text_atomic(path, self.to_csv())

    @classmethod
    def read(cls, path: str | Path) -> "ScoreTable":
        """Return the table at `path`; a file EMQ did not write, or a damaged one, is a one-line ScoreTableError."""
        path = Path(path)
        return cls.read_text(read_text_limited(path, MAX_SCORE_TABLE_BYTES, "score table", ScoreTableError), path)

    @classmethod
    def read_text(cls, text: str, path: str | Path = "<text>") -> "ScoreTable":
        """Return the table `to_csv` wrote as `text` (`path` names it in errors)."""
        path = Path(path)
        first, _, body = text.partition("\n")
        prefix = f"# {SCORE_TABLE_FORMAT} "
        if not first.startswith(prefix):
            raise ScoreTableError(f"{path}: not an {SCORE_TABLE_FORMAT} score table (its first line must start "
                                  f"with '{prefix.strip()}'); point to a file written by EMQ")
        try:
            meta = json.loads(first[len(prefix):])
        except ValueError as err:
            raise ScoreTableError(f"{path}: line 1: the description is not valid JSON ({err})") from None
        rows = list(csv.reader(io.StringIO(body, newline="")))  # ids may hold \r or \n inside quotes
        if not rows or not rows[0] or rows[0][0] != "candidate":
            raise ScoreTableError(f"{path}: line 2 must be the header 'candidate,truth:<target>,...'")
        header = rows[0]
        if len(set(header)) != len(header):
            raise ScoreTableError(f"{path}: line 2: a column name appears twice")
        values = np.empty((len(rows) - 1, len(header) - 1))
        for r, row in enumerate(rows[1:]):
            if len(row) != len(header):
                raise ScoreTableError(f"{path}: line {r + 3} has {len(row)} fields, the header {len(header)}")
            for c, cell in enumerate(row[1:]):
                values[r, c] = _number(cell, path, r + 3, header[c + 1])
        names = header[1:]
        truth = {n[len(TRUTH_PREFIX):]: values[:, i] for i, n in enumerate(names) if n.startswith(TRUTH_PREFIX)}
        scores = {n: values[:, i] for i, n in enumerate(names) if not n.startswith(TRUTH_PREFIX)}
        if not truth:
            raise ScoreTableError(f"{path}: no 'truth:<target>' column; the file is damaged, rerun or restore it")
        return cls([row[0] for row in rows[1:]], truth, scores, meta if isinstance(meta, dict) else {})


def _number(cell: str, path: Path, line: int, column: str) -> float:
    # float() also reads 'nan', 'inf', '-inf' (as written) and nothing that executes; reject other words.
    try:
        value = float(cell)
    except ValueError:
        raise ScoreTableError(f"{path}: line {line}, column {column!r}: {cell[:40]!r} is not a number") from None
    if not math.isfinite(value) and cell.strip().lower() not in ("nan", "inf", "-inf"):
        raise ScoreTableError(f"{path}: line {line}, column {column!r}: {cell[:40]!r} is not a number")
    return value


def scores_path(report: str | Path) -> Path:
    """Return where a report's per-candidate scores go: `table.md` -> `table.scores.csv`."""
    report = Path(report)
    return report.with_name(report.stem + ".scores.csv")


def score_table(candidates: Sequence[Any], truth: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray],
                meta: Mapping[str, Any] | None = None) -> ScoreTable:
    """Return a ScoreTable of `candidates` (objects with `.id`, or ids) and their aligned columns."""
    ids = [str(getattr(c, "id", c)) for c in candidates]
    return ScoreTable(ids, {t: np.asarray(v, dtype=np.float64) for t, v in truth.items()},
                      {n: np.asarray(v, dtype=np.float64) for n, v in scores.items()}, dict(meta or {}))
