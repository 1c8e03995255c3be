"""A search's resumable state on disk: the checkpoint after every generation, `log.jsonl` and `config.json`.

Everything a generation depends on (population, hall of fame, evaluated programs,
random streams, log) is saved atomically after each generation, as JSON plus one
torch tensor file, so a resumed run continues with exactly the results an
uninterrupted run would have produced.
"""
from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from emq.atomic import write_json_atomic, write_text_atomic
from emq.fitness import TrivialChoice
from emq.proxy import Proxy
from emq.strict_json import loads_strict
from search.config import ENGINE, ResumeError, SearchConfig
from search.individual import Program
from search.niches import NicheHallOfFame
from search.rng import SearchRNG

STATE_FORMAT = "emq-search-state/1"
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

    A damaged checkpoint, or `config` contradicting the saved one in anything but
    `generations`, is a ResumeError that says what to do.
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
    data = loads_strict(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not an {STATE_FORMAT} checkpoint; restore the run folder or start a new one")
    saved = SearchConfig.from_json(data["config"])
    conflicts = config.resume_conflicts(saved)
    if conflicts:
        mine, theirs = config.to_json(), saved.to_json()
        diff = "; ".join(f"{k}: checkpoint {theirs[k]!r}, asked {mine[k]!r}" for k in conflicts)
        raise ResumeError(f"cannot resume {run_dir}: the settings contradict its checkpoint ({diff}); "
                          "only `generations` may change: drop the contradicting options or start a new run folder")
    rng = SearchRNG.restore(data["rng"], path.parent / data["torch_rng"])
    hof = NicheHallOfFame(config.hof_size, config.niche_threshold)
    hof.restore([_individual(e) for e in data["hall_of_fame"]])
    memo = OrderedDict((h, r) for h, r in data["memo"])
    state = SearchState(int(data["generation"]), [_individual(e) for e in data["population"]], hof, memo, rng,
                        list(data["log"]))
    return state, saved


def _entry(ind: Program) -> dict[str, Any]:
    return {"formula": ind.proxy.formula(), "record": ind.record}


def _individual(entry: Mapping[str, Any]) -> Program:
    return Program(Proxy.from_formula(entry["formula"]).simplified(), entry["record"])


def write_log(run_dir: Path, log: Sequence[Mapping[str, Any]]) -> Path:
    """Write `log.jsonl`, one JSON line per generation (rewritten whole, atomically, after each one)."""
    return write_text_atomic(run_dir / "log.jsonl", "".join(json.dumps(row) + "\n" for row in log))


def write_run_config(run_dir: Path, config: SearchConfig, stats: Sequence[str], targets: Sequence[str],
                     best_trivial: Mapping[str, TrivialChoice]) -> Path:
    """Write `config.json`: the search config, statistics, targets and each target's trivial control predictor."""
    return write_json_atomic(run_dir / "config.json", {
        "search": config.to_json(), "stats": list(stats), "targets": list(targets),
        "engine": ENGINE, "best_trivial": {t: c.to_json() for t, c in best_trivial.items()}})
