"""The fair bar: uniform first-N splits, per-candidate scores on disk, the replicate ceiling, data-free proxies kept."""
from __future__ import annotations

import importlib.metadata
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.bench.nb201 import DISTRIBUTION
from emq.fitness import heldout_split, kendall
from emq.replicate_ceiling import replicate_ceiling
from emq.score_table import ScoreTable, ScoreTableError, score_table, scores_path

try:
    importlib.metadata.distribution(DISTRIBUTION)
    HAVE_NB201 = True
except importlib.metadata.PackageNotFoundError:
    HAVE_NB201 = False
needs_nb201 = pytest.mark.skipif(not HAVE_NB201, reason='analog-nasbench is not installed (pip install -e ".[nb201]")')


def test_each_half_is_listed_in_hash_order_with_the_same_members():
    ids = [f"cell{i:05d}" for i in range(2000)]
    by_hash, by_index = heldout_split(ids), heldout_split(ids, order="index")
    assert sorted(by_hash.search) == list(by_index.search) and sorted(by_hash.heldout) == list(by_index.heldout)
    assert list(by_hash.search) != sorted(by_hash.search)  # a permutation, not the candidate order
    # stable under reordering: the same ids come first whatever order the candidates are listed in
    shuffled = list(np.random.default_rng(0).permutation(ids))
    again = heldout_split(shuffled)
    assert [shuffled[i] for i in again.heldout[:50]] == [ids[i] for i in by_hash.heldout[:50]]
    with pytest.raises(ValueError, match="split order"):
        heldout_split(ids, order="sorted")


@needs_nb201
def test_the_first_thousand_nb201_search_cells_are_a_uniform_sample():
    # Before, they all had edge 0->1 = skip (the cells are in lexicographic op order); now each edge's op
    # frequencies match the whole space (chi-square, 4 degrees of freedom per edge).
    from scipy.stats import chisquare

    from emq.bench.nb201 import arch_cell
    from emq.bench.registry import open_benchmark

    bench = open_benchmark("nas-bench-201")
    cands = bench.candidates()
    split = heldout_split([c.id for c in cands])
    for part in (split.search[:1000], split.heldout[:1000], split.search[:32]):
        cells = np.array([arch_cell(cands[i].arch) for i in part])
        assert all(np.unique(cells[:, e]).size > 1 for e in range(cells.shape[1])), "an edge is fixed"
    cells = np.array([arch_cell(cands[i].arch) for i in split.search[:1000]])
    for edge in range(cells.shape[1]):
        counts = np.bincount(cells[:, edge], minlength=5)
        assert chisquare(counts).pvalue > 0.001, (edge, counts)  # every op is 1/5 of the space on every edge
    assert len(split.search) == 7838 and len(split.heldout) == 7787


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=30),
       st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30))
def test_score_tables_read_back_bit_for_bit(values, ids):
    n = min(len(values), len(ids))
    ids = [f"{i}:{t}" for i, t in enumerate(ids[:n])]  # unique, with commas, quotes or newlines inside
    column = np.asarray(values[:n])
    table = score_table(ids, {"acc": column[::-1].copy()}, {"evolved #1": column, "baseline:flops": column * 2},
                        {"metric": "kendall"})
    back = ScoreTable.read_text(table.to_csv())
    assert back.candidates == ids and back.meta == {"metric": "kendall"}
    for a, b in [(back.truth["acc"], column[::-1]), (back.scores["evolved #1"], column),
                 (back.scores["baseline:flops"], column * 2)]:
        assert np.array_equal(a, b, equal_nan=True)
        assert np.array_equal(np.signbit(a[~np.isnan(a)]), np.signbit(b[~np.isnan(b)]))  # -0.0 stays -0.0


@pytest.mark.parametrize("text, match", [
    ("candidate,truth:acc\n", "first line"),
    ("# emq-scores/1 {nope\ncandidate,truth:acc\n", "not valid JSON"),
    ("# emq-scores/1 {}\nid,truth:acc\n", "header"),
    ("# emq-scores/1 {}\ncandidate,truth:acc,x\nc0,0.5\n", "line 3 has 2 fields"),
    ("# emq-scores/1 {}\ncandidate,truth:acc,x\nc0,0.5,__import__('os')\n", "is not a number"),
    ("# emq-scores/1 {}\ncandidate,truth:acc,x\nc0,0.5,infinity\n", "is not a number"),
    ("# emq-scores/1 {}\ncandidate,x\nc0,0.5\n", "no 'truth:<target>' column"),
    ("# emq-scores/1 {}\ncandidate,truth:acc,x,x\nc0,0.5,1,2\n", "appears twice"),
])
def test_a_damaged_score_table_is_a_one_line_error_naming_the_file(tmp_path, text, match):
    path = tmp_path / "scores.csv"
    path.write_text(text)
    with pytest.raises(ScoreTableError, match=match) as err:
        ScoreTable.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_scores_file_sits_beside_its_report(tmp_path):
    assert scores_path(tmp_path / "baselines-heldout-5000.md") == tmp_path / "baselines-heldout-5000.scores.csv"


def test_replicate_ceiling_predicts_each_twin_by_the_rest_of_its_class():
    # Class a: 1, 3 (each predicted by the other: 3, 1); class b: 10, 12, 14 (predicted 13, 12, 11); c: no twin.
    classes = ["a", "a", "b", "b", "b", "c", "a"]
    truth = np.array([1.0, 3.0, 10.0, 12.0, 14.0, 5.0, np.nan])  # the NaN member of a is left out
    ceiling = replicate_ceiling(classes, truth)
    assert (ceiling.n_cells, ceiling.n_classes) == (5, 2)
    assert ceiling.value == pytest.approx(kendall(np.array([3.0, 1.0, 13.0, 12.0, 11.0]), truth[:5]))
    noiseless = replicate_ceiling(["a", "a", "b", "b", "c", "c"], np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))
    assert noiseless.value == pytest.approx(1.0)
    assert np.isnan(replicate_ceiling(["a", "b", "c"], np.array([1.0, 2.0, 3.0])).value)


@needs_nb201
def test_nb201_ceiling_is_below_one_and_far_above_the_best_proxies():
    from emq.bench.registry import open_benchmark

    bench = open_benchmark("nas-bench-201")
    cands = bench.candidates()
    classes = [bench.function_class(c) for c in cands]
    truth = bench.ground_truth()
    ceilings = {t: replicate_ceiling(classes, truth[t]) for t in ("fp_acc", "ptq_acc", "ptq_drop")}
    assert 0.85 < ceilings["fp_acc"].value < 0.99 and ceilings["fp_acc"].n_cells > 10_000
    assert ceilings["ptq_drop"].value < ceilings["fp_acc"].value  # the int8 drop is noisier than the accuracy
    assert Counter(classes).most_common(1)[0][1] > 100  # the degenerate cells (output ignores the input) are one class


@needs_nb201
def test_synflow_and_naswot_as_programs_pass_screening_on_nb201(tmp_path):
    # SynFlow reads only the weights (its virtual gradient uses an all-ones input); NASWOT's log-determinant
    # may be -inf on a singular kernel (test_search_screening covers that rule). Both beat FLOPs held out on
    # NB201, so the screens must keep them.
    import dataclasses

    from emq.bench.registry import open_benchmark
    from emq.evaluate import StackedStats
    from emq.known.library import get_known
    from emq.proxy import Proxy
    from emq.stats.cache import load_or_compute
    from emq.stats.config import StatsConfig
    from search.screening import INPUT_INDEPENDENT, ScreenInputs, ScreenLimits, screen_and_score

    bench = open_benchmark("nas-bench-201")
    cands = [bench.candidates()[i] for i in heldout_split(bench.candidate_ids()).search[:8]]
    config = StatsConfig(stat_names=("weight", "virtual_grad", "act_codes_kernel", "params", "flops"), batch_size=8,
                         device="cpu")
    main = load_or_compute(bench, cands, config, progress=False, cache_root=tmp_path)
    other = load_or_compute(bench, cands, dataclasses.replace(config, batch_seed=1), progress=False,
                            cache_root=tmp_path)
    inputs = ScreenInputs.build(StackedStats(main), StackedStats(other), list(range(len(cands))))
    synflow = Proxy.from_formula("sum_layers(sum(abs(mul(weight, virtual_grad))))")
    out = screen_and_score(synflow, inputs, ScreenLimits())
    assert out.reason is None and out.detail["flags"] == [INPUT_INDEPENDENT]
    assert screen_and_score(synflow, inputs, ScreenLimits(reject_input_independent=True)).reason == INPUT_INDEPENDENT
    naswot = get_known("naswot").proxy
    out = screen_and_score(naswot, inputs, ScreenLimits())
    assert out.reason is None and "flags" not in out.detail and np.isfinite(out.scores).sum() >= len(cands) - 1


def test_score_table_meta_is_json(tmp_path):
    table = score_table(["a", "b", "c"], {"acc": [1, 2, 3]}, {"p": [3, 2, 1]}, {"best_trivial": {"acc": "flops"}})
    path = table.write(tmp_path / "t.csv")
    first = path.read_text().splitlines()[0]
    assert json.loads(first.split(" ", 2)[2]) == {"best_trivial": {"acc": "flops"}}


@needs_nb201
def test_study_states_the_heldout_replicate_ceiling_beside_its_verdict(tmp_path):
    from emq.bench.registry import open_benchmark
    from search.config import SearchConfig
    from search.protocol import cut_run
    from search.study import heldout_ceiling, load_study, write_study

    bench = open_benchmark("nas-bench-201")
    config = SearchConfig(targets=["fp_acc"])
    ceiling = heldout_ceiling(bench, config, 1000, 5000)
    truth = bench.ground_truth()["fp_acc"]
    cut = cut_run(bench, ["fp_acc"], 0.5, 0, "hash", 1000, 5000)
    expected = replicate_ceiling([bench.function_class(c) for c in cut.heldout], truth[cut.split.heldout])
    assert ceiling["fp_acc"]["kendall"] == pytest.approx(expected.value)
    assert ceiling["fp_acc"]["n_cells"] == expected.n_cells and 0.85 < expected.value < 0.99
    write_study(tmp_path, bench.name, "emq search nas-bench-201", [], 6, ceiling)
    assert load_study(tmp_path)["replicate_ceiling"]["fp_acc"]["kendall"] == pytest.approx(expected.value)
    line = [x for x in (tmp_path / "study.md").read_text().splitlines() if x.startswith("Replicate ceiling (fp_acc")]
    assert f"Kendall {expected.value:+.3f}" in line[0] and f"on the {expected.n_cells} held-out cells" in line[0]
