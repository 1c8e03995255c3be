"""A search's resumable state on disk: the checkpoint after every generation, `log.jsonl` and `config.json`.

Everything a generation depends on (population, hall of fame, evaluated programs,
random streams, log) is saved atomically after each generation, as JSON plus one
torch tensor file, so a resumed run continues with exactly the results an
uninterrupted run would have produced.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from emq.atomic import write_json_atomic, write_text_atomic
from emq.proxy import Proxy
from emq.safe_read import MAX_CHECKPOINT_BYTES, MAX_SMALL_TENSOR_BYTES, read_text_limited
from emq.ga import restore_hall
from emq.strict_json import loads_strict
from search.config import ENGINE, ResumeError, SearchConfig
from search.individual import Program
from search.niches import NicheHallOfFame
from search.rng import SearchRNG

STATE_FORMAT = "emq-search-state/2"
#: Checkpoints of earlier engines: readable, but their random draws are not this engine's, so they do not resume.
#: /1: emq-search/1, whose tournaments drew from the variation stream (before DEAP's selection, `search.rng`).
PREVIOUS_STATE_FORMATS = ("emq-search-state/1",)
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"


@dataclass
class SearchState:
    """Everything the next generation depends on; `generation` is the last one finished (-1 before the first)."""

    generation: int
    population: list[Program]
    hof: NicheHallOfFame
    memo: "OrderedDict[str, dict[str, Any]]"  # canonical hash -> evaluation record, least recently used first
    rng: SearchRNG
    log: list[dict[str, Any]] = field(default_factory=list)
    #: Probe fingerprint (`search.screening.probe_fingerprint`) -> hash of the program scored with it, least recently
    #: used first: the functional-equivalence cache. Checkpoints written before it have none (an empty cache).
    fingerprints: "OrderedDict[str, str]" = field(default_factory=OrderedDict)


def state_path(run_dir: Path) -> Path:
    """Return where a run folder's checkpoint (its single commit point) lives."""
    return run_dir / CHECKPOINT_DIR / STATE_FILE


def save_checkpoint(run_dir: Path, state: SearchState, config: SearchConfig) -> None:
    """Write the state atomically: the torch stream file first, then state.json, which names it."""
    folder = run_dir / CHECKPOINT_DIR
    torch_file = f"rng_torch-{state.generation:05d}.pt"
    # The torch file is written first and named by the state: state.json is the single commit point.
    state.rng.save_torch(folder / torch_file)
    data = {
        "format": STATE_FORMAT,
        "engine": ENGINE,
        "generation": state.generation,
        "config": config.to_json(),
        "population": [_entry(ind) for ind in state.population],
        "hall_of_fame": [_entry(ind) for ind in state.hof],
        "memo": [[h, r] for h, r in state.memo.items()],
        "fingerprints": [[f, h] for f, h in state.fingerprints.items()],
        "rng": state.rng.state_json(),
        "torch_rng": torch_file,
        "log": state.log,
    }
    write_json_atomic(folder / STATE_FILE, data)
    for old in folder.glob("rng_torch-*.pt"):
        if old.name != torch_file:
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path, config: SearchConfig) -> tuple[SearchState, SearchConfig]:
    """Return the checkpointed state and the config it was saved with.

    A damaged checkpoint, one an earlier engine wrote (its draws differ: the rest of
    the run would not be the run it started), or `config` contradicting the saved one
    in anything but `generations` and `budget`, is a ResumeError that says what to do.
    """
    path = state_path(run_dir)
    try:
        return _load_checked(path, run_dir, config)
    except ResumeError:
        raise
    except pickle.UnpicklingError:
        raise ResumeError(f"{path.parent}: the random-state file was refused: it holds more than plain tensors "
                          "(nothing in it was run); restore the run folder from a copy or start a new one") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, EOFError, OSError) as err:
        detail = str(err).splitlines()[0][:160] if str(err) else ""
        raise ResumeError(f"{path.parent}: the checkpoint is damaged ({type(err).__name__}: {detail}); "
                          "restore the run folder from a copy, or start a new run folder") from None


def _load_checked(path: Path, run_dir: Path, config: SearchConfig) -> tuple[SearchState, SearchConfig]:
    data = loads_strict(read_text_limited(path, MAX_CHECKPOINT_BYTES, "checkpoint (state.json)", ResumeError))
    if isinstance(data, dict) and data.get("format") in PREVIOUS_STATE_FORMATS:
        made_by = data.get("engine") if isinstance(data.get("engine"), str) else "an earlier engine"
        raise ResumeError(f"{path}: this run was made by the previous engine ({made_by[:40]}), whose random draws "
                          f"differ from {ENGINE}'s, so it cannot resume exactly; start a new run folder (its "
                          "finished results stay readable)")
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not an {STATE_FORMAT} checkpoint; restore the run folder or start a new one")
    saved = SearchConfig.from_json(data["config"])
    _check_state(data, saved, path)
    conflicts = config.resume_conflicts(saved)
    if conflicts:
        mine, theirs = config.to_json(), saved.to_json()
        diff = "; ".join(f"{k}: checkpoint {theirs[k]!r}, asked {mine[k]!r}" for k in conflicts)
        raise ResumeError(f"cannot resume {run_dir}: the settings contradict its checkpoint ({diff}); "
                          "only `generations` and `budget` may change: drop the contradicting options or start a new "
                          "run folder")
    rng = SearchRNG.restore(data["rng"], path.parent / data["torch_rng"], max_bytes=MAX_SMALL_TENSOR_BYTES)
    hof = NicheHallOfFame(config.hof_size, config.niche_threshold)
    restore_hall(hof, [_individual(e) for e in data["hall_of_fame"]])
    memo = OrderedDict((h, r) for h, r in data["memo"])
    fingerprints = OrderedDict((f, h) for f, h in data.get("fingerprints", []))
    state = SearchState(int(data["generation"]), [_individual(e) for e in data["population"]], hof, memo, rng,
                        list(data["log"]), fingerprints)
    return state, saved


#: The torch random-state file a checkpoint may name: a plain file beside state.json, never a path elsewhere.
TORCH_RNG_NAME = re.compile(r"rng_torch-\d{5,}\.pt")


def _check_state(data: Mapping[str, Any], config: SearchConfig, path: Path) -> None:
    """Raise ResumeError naming the field when a checkpoint's content is not what `save_checkpoint` writes.

    Checked before anything is rebuilt from it, so a damaged or hand-edited state.json is one line,
    not a traceback in the middle of the next generation.
    """
    def bad(field: str, why: str) -> ResumeError:
        return ResumeError(f"{path}: field {field!r} {why}; the checkpoint is damaged: restore the run folder "
                           "from a copy, or start a new run folder")

    generation, log = data.get("generation"), data.get("log")
    if not isinstance(log, list) or not all(isinstance(row, dict) for row in log):
        raise bad("log", "must be a list of objects (one per generation)")
    if not isinstance(generation, int) or isinstance(generation, bool) or not 0 <= generation < config.generations:
        raise bad("generation", f"must be an integer in 0..{config.generations - 1} (the run's generations), "
                                f"got {generation!r}")
    if len(log) != generation + 1:
        raise bad("log", f"has {len(log)} rows for generation {generation} (one per finished generation)")
    population = data.get("population")
    if not isinstance(population, list) or not 1 <= len(population) <= config.population:
        raise bad("population", f"must list 1..{config.population} programs")
    hall = data.get("hall_of_fame")
    if not isinstance(hall, list) or len(hall) > config.hof_size:
        raise bad("hall_of_fame", f"must list at most {config.hof_size} programs")
    for name, entries, scored in (("population", population, False), ("hall_of_fame", hall, True)):
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("formula"), str):
                raise bad(f"{name}[{i}]", "must be an object with a 'formula'")
            _check_record(entry.get("record"), scored, lambda why: bad(f"{name}[{i}].record", why))
    memo = data.get("memo")
    if not isinstance(memo, list) or not all(isinstance(m, list) and len(m) == 2 and isinstance(m[0], str)
                                             for m in memo):
        raise bad("memo", "must be a list of [hash, record] pairs")
    for i, (_, record) in enumerate(memo):
        _check_record(record, False, lambda why: bad(f"memo[{i}]", why))
    fingerprints = data.get("fingerprints", [])  # absent in checkpoints written before the equivalence cache
    if not isinstance(fingerprints, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in fingerprints):
        raise bad("fingerprints", "must be a list of [fingerprint, hash] pairs")
    if not isinstance(data.get("torch_rng"), str) or not TORCH_RNG_NAME.fullmatch(data["torch_rng"]):
        raise bad("torch_rng", f"must name a file rng_torch-NNNNN.pt beside state.json, got {data.get('torch_rng')!r}")


def _check_record(record: Any, scored: bool, bad: Callable[[str], ResumeError]) -> None:
    """Check one evaluation record: a scored one has a finite fitness and probe scores; a rejected one a reason."""
    if not isinstance(record, dict):
        raise bad("must be an evaluation record (an object)")
    fitness = record.get("fitness")
    if fitness is None:
        if scored or not isinstance(record.get("reason"), str):
            raise bad("has no fitness" + ("" if scored else " and no rejection reason"))
        return
    if isinstance(fitness, bool) or not isinstance(fitness, (int, float)) or not math.isfinite(fitness):
        raise bad(f"fitness must be a finite number, got {fitness!r}")
    probe = record.get("probe")
    if not isinstance(probe, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in probe):
        raise bad("must carry its probe scores (a list of numbers)")
    if not isinstance(record.get("targets"), dict):
        raise bad("must carry its fitness per target (an object)")


def _entry(ind: Program) -> dict[str, Any]:
    return {"formula": ind.proxy.formula(), "record": ind.record}


def _individual(entry: Mapping[str, Any]) -> Program:
    return Program(Proxy.from_formula(entry["formula"]).simplified(), entry["record"])


def write_log(run_dir: Path, log: Sequence[Mapping[str, Any]]) -> Path:
    """Write `log.jsonl`, one JSON line per generation (rewritten whole, atomically, after each one)."""
    return write_text_atomic(run_dir / "log.jsonl", "".join(json.dumps(row) + "\n" for row in log))
