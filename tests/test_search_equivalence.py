"""The functional-equivalence cache: a program that behaves on the probe like one already scored is not scored again."""
from __future__ import annotations

import json

import numpy as np
import pytest

from emq.proxy import Proxy
from search.config import SearchConfig
from search.screening import Outcome, probe_fingerprint
from search.synthetic import synthetic_problem

from conftest import search_synthetic, without_timing

# l2 is never negative, so s_abs changes nothing; the simplifier does not know it (two canonical hashes).
TWINS = ("sum_layers(l2(grad))", "sum_layers(s_abs(l2(grad)))")
CONFIG = SearchConfig(population=8, generations=3, seed=1, probe_size=8, hof_size=2, targets=("test_acc",),
                      seed_formulas=TWINS)


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=24, n_heldout=16, probe_size=8)


def search(problem, run_dir, config=CONFIG, **kwargs):
    return search_synthetic(problem, run_dir, config, **kwargs)


def memo(run_dir):
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    return dict(map(tuple, state["memo"])), state


def test_twins_have_two_hashes_and_one_fingerprint():
    a, b = (Proxy.from_formula(f).simplified() for f in TWINS)
    assert a.canonical_hash() != b.canonical_hash()
    probe = np.array([1.0, 2.0, 3.0])
    same = [Outcome("a", "a", probe=probe, probe_other=probe * 2),
            Outcome("b", "b", probe=probe * (1 + 1e-9), probe_other=probe * 2)]
    assert probe_fingerprint(same[0]) == probe_fingerprint(same[1])
    assert probe_fingerprint(Outcome("c", "c", probe=probe + 1e-3, probe_other=probe * 2)) != probe_fingerprint(same[0])
    assert probe_fingerprint(Outcome("d", "d", probe=np.array([np.nan, np.inf, -0.0]))) == \
        probe_fingerprint(Outcome("e", "e", probe=np.array([np.nan, np.inf, 0.0])))


def test_equivalent_program_takes_the_known_record_and_is_counted(problem, tmp_path):
    result = search(problem, tmp_path / "cached")
    first = result.log[0]
    assert first["equivalent_hits"] >= 1
    assert all("equivalent_hits" in row for row in result.log)
    records, state = memo(tmp_path / "cached")
    a, b = (Proxy.from_formula(f).simplified().canonical_hash() for f in TWINS)
    assert records[a]["fitness"] is not None and records[b] == records[a]
    assert a in {h for _, h in state["fingerprints"]} and b not in {h for _, h in state["fingerprints"]}


def test_cache_off_scores_every_program(problem, tmp_path):
    off = SearchConfig(**{**CONFIG.to_json(), "equivalence_cache": False})
    result = search(problem, tmp_path / "plain", config=off)
    assert [row["equivalent_hits"] for row in result.log] == [0] * CONFIG.generations
    records, state = memo(tmp_path / "plain")
    a, b = (Proxy.from_formula(f).simplified().canonical_hash() for f in TWINS)
    assert records[b]["fitness"] == pytest.approx(records[a]["fitness"])  # they are equal: scoring agrees
    assert state["fingerprints"] == []


def test_resume_with_the_cache_equals_an_uninterrupted_run(problem, tmp_path):
    whole = search(problem, tmp_path / "whole")
    search(problem, tmp_path / "parts", stop_after=0)
    resumed = search(problem, tmp_path / "parts", resume=True)
    assert without_timing(resumed.log) == without_timing(whole.log)
    assert [h["formula"] for h in resumed.hall_of_fame] == [h["formula"] for h in whole.hall_of_fame]


def test_checkpoint_without_fingerprints_resumes(problem, tmp_path):
    run_dir = tmp_path / "old"
    search(problem, run_dir, stop_after=0)
    path = run_dir / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["fingerprints"]  # as written before the equivalence cache
    path.write_text(json.dumps(state))
    resumed = search(problem, run_dir, resume=True)
    assert resumed.finished and len(resumed.log) == CONFIG.generations
