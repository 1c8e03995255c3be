"""The known-proxy library (emq/known): each program reproduces its independent reference, and the names plumb through."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emq.baselines import BaselineContext, get_baseline
from emq.baselines.structured import AGGREGATES, rank_aggregate
from emq.bench.base import Batch
from emq.evaluate import StackedStats, evaluate_stacked
from emq.fitness import kendall
from emq.known import (
    KnownProxyNotApplicableError, UnknownKnownProxyError, get_known, is_known_spec, known_proxies, resolve_known,
)
from emq.models.nb201 import nb201
from emq.paths import results_dir
from emq.stats.compute import compute_stats, prepare_network
from search.config import SearchConfig
from search.proxy_sources import load_proxies

#: Cells from small to large (op ids: 0 skip, 1 zeroize, 2 conv3x3, 3 conv1x1, 4 avgpool).
CELLS = [(3, 0, 0, 4, 1, 0), (2, 0, 4, 3, 0, 1), (3, 3, 0, 2, 4, 3), (2, 4, 3, 0, 2, 2), (2, 2, 3, 2, 3, 2),
         (4, 3, 2, 0, 3, 4), (2, 2, 2, 2, 2, 2)]
#: Relative tolerance of each program against its reference on these networks (the file's `fidelity` says why).
TOLERANCE = {"naswot": 1e-5, "meco": 1e-4, "swap": 0.0, "az_expressivity": 1e-4, "snip": 5e-3, "grad_norm": 5e-3,
             "jacov": 1e-2, "zico": 1e-4, "grasp": 0.1}


def test_every_library_file_loads_with_its_paper_reference_and_statistics():
    library = known_proxies()
    assert {"naswot", "meco", "zico", "swap", "synflow", "snip", "grad_norm", "fisher", "jacov", "grasp", "diswot",
            "az_expressivity", "az_complexity", "az_nas"} <= set(library)
    for entry in library.values():
        assert entry.paper and entry.definition and entry.fidelity
        assert set(entry.stats) == entry.proxy.stats_needed
        assert entry.reference in AGGREGATES or get_baseline(entry.reference)


def test_every_known_proxy_fits_a_search_so_it_can_seed_one():
    limits = SearchConfig()
    for entry in known_proxies().values():
        simple = entry.proxy.simplified()
        assert simple.size <= limits.max_size and simple.depth <= limits.max_depth, entry.name


def test_known_names_one_all_or_those_a_benchmark_offers():
    assert is_known_spec("known") and is_known_spec(Path("known:naswot")) and not is_known_spec("known.json")
    assert list(resolve_known("known:naswot,meco")) == ["naswot", "meco"]
    assert set(resolve_known("known")) == set(known_proxies())
    assert set(resolve_known("known", offered=["act_codes_kernel", "weight", "grad"])) == {"naswot", "snip",
                                                                                          "grad_norm"}
    with pytest.raises(UnknownKnownProxyError, match="naswot"):
        resolve_known("known:nasbot")
    with pytest.raises(KnownProxyNotApplicableError, match="teacher_relation"):
        resolve_known("known:diswot", offered=["relation", "semantic"])


def test_proxy_sources_read_the_library_beside_files_and_formulas(tmp_path):
    get_known("snip").proxy.save(tmp_path / "mine.json")
    found = load_proxies([tmp_path / "mine.json", Path("known:naswot")], ["x=sum_layers(l2(grad))"])
    assert list(found) == ["mine", "naswot", "x"]
    assert found["naswot"].formula() == get_known("naswot").formula


# ------------------------------------------------------------------ programs against their references


@pytest.fixture(scope="module")
def nb201_scores(one_thread):
    """Program and reference scores of every known proxy that applies to NB201, on CELLS (a Gaussian batch of 16)."""
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g), "gaussian", 0)
    library = {n: e for n, e in known_proxies().items() if n != "diswot"}
    names = sorted(set().union(*(e.stats for e in library.values())) | {"flops"})
    ctx = BaselineContext(device=torch.device("cpu"), seed=0, act_bits=None)
    stats, references = [], {}
    refs = {e.reference for e in library.values() if e.reference not in AGGREGATES} | {"az_progressivity"}
    for cell in CELLS:
        model = nb201(cell)
        stats.append(compute_stats(model, batch, None, names, store_dtype=torch.float16))
        for ref in refs:
            net = prepare_network(model, None, act_bits=None)
            references.setdefault(ref, []).append(get_baseline(ref).fn(net, batch, None, ctx)
                                                  if get_baseline(ref).kind == "model"
                                                  else get_baseline(ref).proxy().evaluate(stats[-1]))
    stacked = StackedStats(stats)
    programs = {n: evaluate_stacked(e.proxy, stacked)[0] for n, e in library.items()}
    references = {k: np.array(v, dtype=np.float64) for k, v in references.items()}
    for name, terms in AGGREGATES.items():
        references[name] = rank_aggregate(references, terms)
    return programs, references


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_each_program_equals_its_reference_within_float_tolerance(name, nb201_scores):
    programs, references = nb201_scores
    reference = references[get_known(name).reference]
    np.testing.assert_allclose(programs[name], reference, rtol=TOLERANCE[name], atol=1e-6)


def test_synflow_program_equals_its_reference_until_float32_overflows(nb201_scores):
    programs, references = nb201_scores
    fits = references["synflow_net"] < np.finfo(np.float32).max
    assert not fits.all(), "these cells should include SynFlow values beyond float32 (the documented limit)"
    np.testing.assert_allclose(programs["synflow"][fits], references["synflow_net"][fits], rtol=5e-3)
    assert np.all(programs["synflow"][~fits] == np.inf)


def test_fisher_program_is_a_constant_times_its_reference(nb201_scores):
    programs, references = nb201_scores
    np.testing.assert_allclose(programs["fisher"] / references["fisher"], 2 * 16, rtol=1e-2)


def test_the_az_nas_program_ranks_like_expressivity_plus_flops(nb201_scores):
    programs, references = nb201_scores
    np.testing.assert_allclose(programs["az_nas"], references["az_nas_ec"], rtol=1e-6)
    assert np.array_equal(programs["az_complexity"], references["flops"])


def test_every_program_ranks_these_networks_like_its_reference(nb201_scores):
    programs, references = nb201_scores
    for name, scores in programs.items():  # SynFlow's overflowed values tie at +inf
        assert kendall(scores, references[get_known(name).reference]) >= (0.8 if name == "synflow" else 0.99), name


# ------------------------------------------------------------------ command line

needs_vit_digits = pytest.mark.skipif(
    not (results_dir() / "vit-digits" / "ground_truth.json").exists(),
    reason="results/vit-digits is not built (run: emq bench build vit-digits)",
)


def test_emq_proxies_list_names_every_known_proxy(run):
    import json

    result = run("proxies", "list", "--json")
    assert result.exit_code == 0, result.output
    assert {row["name"] for row in json.loads(result.output)} == set(known_proxies())


@needs_vit_digits
def test_score_adds_the_statistics_known_proxies_read_to_the_default_set(run):
    import json

    result = run("score", "vit-digits", "--proxy", "known:naswot,meco", "--limit", "6", "--bootstrap", "20",
                 "--batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added_stats"] == {"naswot": ["act_codes_kernel"], "meco": ["act_channel_corr"]}
    assert {"act_codes_kernel", "act_channel_corr", "weight", "grad"} <= set(report["stats_config"]["stat_names"])
    assert {r["name"] for r in report["rows"]} == {"naswot", "meco"}
    result = run("score", "vit-digits", "--proxy", "known:az_expressivity", "--limit", "3", "--bootstrap", "20",
                 "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "Statistics added to the default set for the proxies that read them: act_channel_cov (az_expressivity)" \
        in result.output and "| az_expressivity | proxy | test_acc |" in result.output


@needs_vit_digits
def test_score_with_explicit_stats_lacking_one_names_proxy_statistic_and_the_fix(run):
    result = run("score", "vit-digits", "--proxy", "known:naswot,meco", "--limit", "6", "--bootstrap", "20",
                 "--batch-size", "8", "--stats", "act_codes_kernel")
    assert result.exit_code == 2
    message = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(message) == 1 and "'meco'" in message[0] and "act_channel_corr" in message[0]
    assert message[0].endswith("add it: --stats act_codes_kernel,act_channel_corr")
    result = run("score", "vit-digits", "--proxy", "known:naswot,meco", "--limit", "6", "--bootstrap", "20",
                 "--batch-size", "8", "--stats", "act_codes_kernel,act_channel_corr", "--baseline", "nwot")
    assert result.exit_code == 0, result.output
    assert "| naswot | proxy | test_acc |" in result.output and "| meco | proxy | test_acc |" in result.output
    assert "Statistics added" not in result.output


@needs_vit_digits
def test_a_search_is_seeded_with_the_known_proxies_its_statistics_allow(tmp_path):
    from emq.stats.config import StatsConfig
    from search.session import SearchRequest, plan_search

    stats = StatsConfig(stat_names=("act_codes_kernel", "act_channel_corr", "weight", "grad"))
    plan = plan_search(SearchRequest("vit-digits", out=tmp_path / "run", stats=stats, seed_proxies=(Path("known"),)))
    assert set(plan.search_config.seed_formulas) == {get_known(n).formula for n in ("naswot", "meco", "snip",
                                                                                     "grad_norm")}
    with pytest.raises(KnownProxyNotApplicableError, match="zico"):
        plan_search(SearchRequest("vit-digits", out=tmp_path / "run", stats=stats,
                                  seed_proxies=(Path("known:zico"),)))


def test_a_job_file_names_the_library_beside_files_relative_to_itself(tmp_path):
    from search.job import Job

    path = tmp_path / "job.toml"
    path.write_text('[benchmark]\nname = "vit-digits"\n\n[search]\nseed_proxies = ["known:naswot", "mine.json"]\n\n'
                    '[output]\ndir = "out"\n')
    job = Job.load(path)
    assert job.search["seed_proxies"] == (Path("known:naswot"), tmp_path / "mine.json")
