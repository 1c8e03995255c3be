"""The known bar from committed known-proxy values: chunk files read back equal the values computed."""
from __future__ import annotations

import numpy as np
import pytest

from emq.baselines import baseline_scores
from emq.baselines.structured import rank_aggregate
from emq.known import get_known
from emq.known_scores import CHUNK_FORMAT, ChunkError, KnownScores, chunk_path
from emq.score_table import score_table
from emq.stats.config import StatsConfig
from search.config import RunFolderError
from search.hall_of_fame import load_hall_of_fame
from search.protocol import cut_run
from test_known_bar import KNOWN, _search
from test_search_benchmark import bench  # noqa: F401  (the synthetic benchmark fixture)

#: The library programs written into the test's chunk files: snip reads a plain column, az_nas two ranked parts.
PROGRAMS = ("snip", "az_nas")


def write_chunks(bench, folder, candidates, values, chunk_size=25, batch=None, programs=PROGRAMS):  # noqa: F811
    """Write `values` (name -> per-candidate scores, names as chunk columns) as chunk files of `chunk_size`."""
    truth = bench.ground_truth()
    index = {c.id: i for i, c in enumerate(bench.candidates())}
    rows = np.array([index[c.id] for c in candidates])
    batch = batch or bench.batch(0, StatsConfig().batch_size).describe()
    settings = {"benchmark": bench.name, "split": "search", "limit": None, "total": len(candidates),
                "chunk_size": chunk_size, "targets": ["test_acc"], "batch": batch, "stats": ["weight"],
                "cost_sample": 0, "programs": {n: get_known(n).formula for n in programs},
                "references": sorted(n[len("reference:"):] for n in values if n.startswith("reference:"))}
    for k, start in enumerate(range(0, len(candidates), chunk_size)):
        part = slice(start, start + chunk_size)
        meta = {"format": CHUNK_FORMAT, "settings": settings, "chunk": k, "start": start,
                "stop": min(start + chunk_size, len(candidates)), "command": "test", "stats_seconds": 0.0,
                "disk_bytes": 0, "threads": "1", "device": "cpu"}
        score_table(candidates[part], {"test_acc": truth["test_acc"][rows[part]]},
                    {n: v[part] for n, v in values.items()}, meta).write(chunk_path(folder, k))


def committed(bench, tmp_path, candidates, name, **kwargs):  # noqa: F811
    """Write the KNOWN baselines' real values on `candidates` (and the two programs) into a folder of chunk files."""
    real = baseline_scores(bench, KNOWN, StatsConfig(), progress=False, candidates=candidates)
    rng = np.random.default_rng(len(candidates))
    values = {f"reference:{n}": v for n, v in real.items()}
    values.update({"program:snip": real["snip"], "part:az_nas:0": rng.normal(size=len(candidates)),
                   "part:az_nas:1": rng.normal(size=len(candidates))})
    folder = tmp_path / name
    folder.mkdir()
    write_chunks(bench, folder, candidates, values, **kwargs)
    return folder


def test_reading_a_subset_ranks_an_aggregate_among_that_subset_only(bench, tmp_path):  # noqa: F811
    cands = bench.candidates()[:40]
    folder = committed(bench, tmp_path, cands, "all")
    files = KnownScores.read([folder])
    assert files.names()[:2] == ["known:az_nas", "known:snip"] and "snip" in files.names()
    ids = [c.id for c in cands[5:30]]
    got = files.values(ids, ["known:az_nas", "known:snip", "hawq"])
    parts = {k: files.columns[f"part:az_nas:{k}"][5:30] for k in (0, 1)}
    # n_rank_add: the sum of each part's log(rank / N) among the 25 asked for, not among the 40 in the files.
    assert np.allclose(got["known:az_nas"], rank_aggregate({"a": parts[0], "b": parts[1]}, ("a", "b")))
    assert np.array_equal(got["hawq"], files.columns["reference:hawq"][5:30])
    with pytest.raises(ChunkError, match="'nwot' is not in the chunk files of .*; these files hold known:az_nas"):
        files.values(ids, ["nwot"])
    with pytest.raises(ChunkError, match="1 of 2 candidates \\(first: c59\\) have no values"):
        files.values(["c0", "c59"], ["hawq"])


def test_the_known_bar_from_committed_values_equals_the_one_computed(bench, tmp_path):  # noqa: F811
    from search.known_bar import add_known_bar

    computed, read = (_search(bench, tmp_path / name, ["params"]).run_dir for name in ("computed", "read"))
    cut = cut_run(bench, ["test_acc"], 0.5, 0, "hash")
    folders = [committed(bench, tmp_path, cut.search, "search"), committed(bench, tmp_path, cut.heldout, "heldout")]
    assert add_known_bar(bench, computed, KNOWN, StatsConfig()) == \
        add_known_bar(bench, read, KNOWN, StatsConfig(), scores_from=folders)
    assert load_hall_of_fame(computed)["best_known"] == load_hall_of_fame(read)["best_known"]
    # `all` adds the library programs (known:snip ties its reference; known:az_nas is noise here) and stays judged.
    outcome = add_known_bar(bench, read, ["all"], StatsConfig(), scores_from=folders)
    assert outcome["over_known"]["verdict"] in {"discovery", "no discovery"}
    from search.rescore import verdict_from_scores
    assert verdict_from_scores(read)["agrees"]


def test_committed_values_on_another_batch_or_missing_a_split_are_refused(bench, tmp_path):  # noqa: F811
    from search.known_bar import add_known_bar

    run = _search(bench, tmp_path / "run", ["params"]).run_dir
    cut = cut_run(bench, ["test_acc"], 0.5, 0, "hash")
    other = bench.batch(7, StatsConfig().batch_size).describe()
    elsewhere = committed(bench, tmp_path, cut.search, "elsewhere", batch=other)
    with pytest.raises(RunFolderError, match="computed on batch .* with init seed 0, but the run .* scored batch"):
        add_known_bar(bench, run, KNOWN, StatsConfig(), scores_from=[elsewhere])
    import json

    foreign = committed(bench, tmp_path, cut.search, "foreign")
    for path in foreign.glob("chunk-*.scores.csv"):  # the same values, said to be another benchmark's
        head, rest = path.read_text().split("\n", 1)
        meta = json.loads(head.split(" ", 2)[2])
        meta["settings"]["benchmark"] = "vit-digits"
        path.write_text(f"# emq-scores/1 {json.dumps(meta, sort_keys=True)}\n{rest}")
    with pytest.raises(RunFolderError, match="known-proxy values of vit-digits, but the run .* is on synthetic-mq"):
        add_known_bar(bench, run, KNOWN, StatsConfig(), scores_from=[foreign])
    search_only = committed(bench, tmp_path, cut.search, "search")
    with pytest.raises(ChunkError, match=f"{len(cut.heldout)} of {len(cut.heldout)} candidates .* have no values"):
        add_known_bar(bench, run, KNOWN, StatsConfig(), scores_from=[search_only])
    with pytest.raises(RunFolderError, match="`known:NAME` and `all` read committed values; give --known-scores"):
        add_known_bar(bench, run, ["known:snip"], StatsConfig())


def test_emq_verdict_reads_the_known_bar_from_committed_files(bench, tmp_path, run, monkeypatch):  # noqa: F811
    import json

    import emq.bench.registry

    monkeypatch.setattr(emq.bench.registry, "open_benchmark", lambda *args, **kwargs: bench)
    folder = _search(bench, tmp_path / "run", ["params"]).run_dir
    cut = cut_run(bench, ["test_acc"], 0.5, 0, "hash")
    search, heldout = (committed(bench, tmp_path, c, n) for c, n in ((cut.search, "s"), (cut.heldout, "h")))
    result = run("verdict", str(folder), "--known-bar", "all", "--known-scores", str(search),
                 "--known-scores", str(heldout), "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    chosen = load_hall_of_fame(folder)["best_known"]["test_acc"]["name"]
    assert outcome == load_hall_of_fame(folder)["verdict"] and "over_known" in outcome
    assert chosen in KnownScores.read([search]).names()
    refused = run("verdict", str(folder), "--known-scores", str(search))
    assert refused.exit_code == 2 and "--known-scores is read by --known-bar" in refused.output


def test_a_held_out_folder_holding_only_the_chosen_proxy_gives_the_same_known_bar(bench, tmp_path):  # noqa: F811
    from search.known_bar import add_known_bar

    full, lean = (_search(bench, tmp_path / name, ["params"]).run_dir for name in ("full", "lean"))
    cut = cut_run(bench, ["test_acc"], 0.5, 0, "hash")
    search = committed(bench, tmp_path, cut.search, "search")
    heldout = committed(bench, tmp_path, cut.heldout, "heldout")
    reference = add_known_bar(bench, full, KNOWN, StatsConfig(), scores_from=[search, heldout])
    chosen = load_hall_of_fame(full)["best_known"]["test_acc"]["name"]
    only = tmp_path / "heldout-chosen"
    only.mkdir()
    real = baseline_scores(bench, [chosen], StatsConfig(), progress=False, candidates=cut.heldout)
    write_chunks(bench, only, cut.heldout, {f"reference:{chosen}": real[chosen]}, programs=())
    assert add_known_bar(bench, lean, KNOWN, StatsConfig(), scores_from=[search, only]) == reference
    other = next(n for n in KNOWN if n != chosen)
    files = KnownScores.read([search, only])
    assert other in files.names()  # held on the search split ...
    with pytest.raises(ChunkError, match=f"'{other}' has values for only some of these .* --names {other}"):
        files.values([c.id for c in cut.search + cut.heldout], [other])  # ... not on the held-out one


def test_a_study_on_two_batches_takes_each_runs_folders_from_a_mixed_list(bench, tmp_path):  # noqa: F811
    from search.known_bar import add_known_bar

    run = _search(bench, tmp_path / "run", ["params"]).run_dir
    cut = cut_run(bench, ["test_acc"], 0.5, 0, "hash")
    other = bench.batch(7, StatsConfig().batch_size).describe()
    own = [committed(bench, tmp_path, cut.search, "search"), committed(bench, tmp_path, cut.heldout, "heldout")]
    foreign = [committed(bench, tmp_path, c, f"{n}-7", batch=other) for c, n in ((cut.search, "s"), (cut.heldout, "h"))]
    alone = add_known_bar(bench, run, KNOWN, StatsConfig(), scores_from=own)
    assert add_known_bar(bench, run, KNOWN, StatsConfig(), scores_from=[foreign[0], *own, foreign[1]]) == alone
