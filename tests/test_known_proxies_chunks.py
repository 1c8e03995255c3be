"""results/known_proxies.py in chunks: chunk files assemble into the unchunked table, resume, and refuse damage."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from emq.paths import REPO_ROOT, results_dir

pytestmark = pytest.mark.skipif(
    not (results_dir() / "vit-digits" / "ground_truth.json").exists(),
    reason="results/vit-digits is not built (run: emq bench build vit-digits)",
)

#: Five held-out ViTs of vit-digits, two targets: seconds of work, yet AZ-NAS's rank aggregate spans both chunks.
COMMON = ["vit-digits", "--split", "heldout", "--limit", "5", "--targets", "test_acc,test_acc_kd", "--batch-size", "8",
          "--bootstrap", "50", "--cost-sample", "1"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("known_proxies_script", REPO_ROOT / "results" / "known_proxies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def chunked(script, tmp_path_factory, one_thread):
    """Return (folder, unchunked report, assembled report): 5 candidates unchunked, then as chunks of 3 and 2."""
    folder = tmp_path_factory.mktemp("known")
    cache = folder / "cache"
    chunks = folder / "chunks"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMQ_CACHE_DIR", str(cache))
        assert script.main([*COMMON, "--out", str(folder / "whole.md")]) == 0
        for k in (0, 1):
            assert script.main([*COMMON, "--chunk", str(k), "--chunk-size", "3", "--chunk-dir", str(chunks)]) == 0
    args = [*COMMON, "--chunk-size", "3", "--chunk-dir", str(chunks), "--assemble"]
    assert script.main([*args, "--out", str(folder / "assembled.md")]) == 0
    return folder, (folder / "whole.md").read_text(), (folder / "assembled.md").read_text()


def table_rows(report: str) -> list[list[str]]:
    """Return the proxy rows of a report's tables without the cost column (timings differ from run to run)."""
    rows = [line.split(" | ") for line in report.splitlines() if re.match(r"\| [a-z_]+ \| [+-n]", line)]
    return [row[:7] + row[8:] for row in rows]


def test_assembled_chunks_give_the_unchunked_tables_numbers(chunked):
    _, whole, assembled = chunked
    assert len(table_rows(whole)) == 2 * 14 and table_rows(assembled) == table_rows(whole)
    # AZ-NAS ranks over all five cells, not within a chunk: its line equals the unchunked one too.
    assert [l for l in assembled.splitlines() if l.startswith("AZ-NAS")] == \
        [l for l in whole.splitlines() if l.startswith("AZ-NAS")]
    assert "all 5 cells (2 chunks)" in assembled and "ranked over the 5 cells assembled" in assembled
    assert "--chunk K --chunk-size 3" in assembled


def test_a_chunk_deletes_its_statistics_and_a_rerun_skips_it(script, chunked, capsys, monkeypatch):
    folder, _, _ = chunked
    monkeypatch.setenv("EMQ_CACHE_DIR", str(folder / "cache"))
    assert not list((folder / "cache").glob("known-proxies-chunk-*"))
    before = (folder / "chunks" / "chunk-001.scores.csv").read_bytes()
    assert script.main([*COMMON, "--chunk", "1", "--chunk-size", "3", "--chunk-dir", str(folder / "chunks")]) == 0
    assert "already in" in capsys.readouterr().out
    assert (folder / "chunks" / "chunk-001.scores.csv").read_bytes() == before
    other = [*COMMON[:-1], "2", "--chunk", "1", "--chunk-size", "3", "--chunk-dir", str(folder / "chunks")]
    assert script.main(other) == 2
    assert "written with other settings (cost_sample differ)" in capsys.readouterr().err


def test_a_partial_table_says_which_chunks_it_covers(script, chunked, tmp_path):
    folder, _, _ = chunked
    (tmp_path / "chunk-001.scores.csv").write_bytes((folder / "chunks" / "chunk-001.scores.csv").read_bytes())
    assert script.main([*COMMON, "--chunk-size", "3", "--chunk-dir", str(tmp_path), "--assemble",
                        "--out", str(tmp_path / "partial.md")]) == 0
    assert "**partial: 2 of 5 cells (chunks 1 of 0-1)**" in (tmp_path / "partial.md").read_text()


@pytest.mark.parametrize("damage", [
    lambda text: text.rstrip("\n").rsplit(",", 1)[0] + ",oops\n",
    lambda text: text.split("\n", 1)[0] + "\n",
    lambda text: text.replace('"chunk": 1', '"chunk": "1"'),
    lambda text: "__import__('os').system('echo hi')\n" + text,
], ids=["bad-row", "truncated", "bad-meta", "code"])
def test_a_damaged_chunk_file_is_one_line_naming_it_and_the_fix(script, chunked, tmp_path, capsys, damage):
    folder, _, _ = chunked
    path = tmp_path / "chunk-001.scores.csv"
    path.write_text(damage((folder / "chunks" / "chunk-001.scores.csv").read_text()))
    assert script.main([*COMMON, "--chunk-size", "3", "--chunk-dir", str(tmp_path), "--assemble"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "rerun its --chunk command" in err


def test_a_chunk_past_the_split_names_the_last_one(script, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    assert script.main([*COMMON, "--chunk", "2", "--chunk-size", "3", "--chunk-dir", str(tmp_path)]) == 2
    assert "chunks 0..1 of --chunk-size 3" in capsys.readouterr().err


def test_programs_only_chunks_hold_the_same_program_values_and_record_their_batch(script, chunked, tmp_path,
                                                                                   monkeypatch):
    import numpy as np

    from emq.known_scores import KnownScores, chunk_path, read_chunk

    folder, _, _ = chunked
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    lean, other = tmp_path / "lean", tmp_path / "batch1"
    chunk = ["--chunk", "0", "--chunk-size", "3", "--programs-only"]
    assert script.main([*COMMON, *chunk, "--chunk-dir", str(lean)]) == 0
    assert script.main([*COMMON, *chunk, "--batch-seed", "1", "--chunk-dir", str(other)]) == 0
    full, slim = read_chunk(chunk_path(folder / "chunks", 0)), read_chunk(chunk_path(lean, 0))
    assert slim.meta["settings"]["references"] == [] and not [c for c in slim.scores if c.startswith("reference:")]
    programs = [c for c in full.scores if c.startswith(("program:", "part:"))]
    assert programs and all(np.array_equal(full.scores[c], slim.scores[c], equal_nan=True) for c in programs)
    assert read_chunk(chunk_path(other, 0)).meta["settings"]["batch"]["seed"] == 1
    assert KnownScores.read([other]).batch["seed"] == 1 and "known:naswot" in KnownScores.read([other]).names()
