"""The `emq` command line end to end on the embedded benchmark, with a tiny budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from emq.paths import results_dir
from conftest import expected_verdict

needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)


def test_ops_lists_every_op_with_its_signature(run):
    result = run("ops", "--json")
    assert result.exit_code == 0
    ops = json.loads(result.output)
    assert len(ops) >= 40
    assert {"name": "sum_layers", "signature": "S -> N"}.items() <= next(o for o in ops if o["name"] == "sum_layers").items()


def test_bench_list_names_the_embedded_benchmark(run):
    result = run("bench", "list")
    assert result.exit_code == 0 and "mq-digits" in result.output


def test_unknown_benchmark_is_one_line_error_listing_valid_names(run):
    result = run("bench", "show", "no-such-bench")
    assert result.exit_code != 0
    assert "unknown benchmark 'no-such-bench'" in result.output and "mq-digits" in result.output
    assert "Traceback" not in result.output


@needs_mq_digits
def test_bench_show_prints_the_accuracy_spread(run):
    result = run("bench", "show", "mq-digits", "--limit", "2")
    assert result.exit_code == 0
    assert "500 candidates" in result.output and "test_acc" in result.output


@needs_mq_digits
def test_score_proxy_file_and_baselines_end_to_end(run, tmp_path):
    proxy = tmp_path / "p.json"
    from emq.proxy import Proxy

    Proxy.from_formula("n_neg(sum_layers(l2(mul(grad, quant_error))))").save(proxy)
    out = tmp_path / "report.json"
    result = run("score", "mq-digits", "--proxy", str(proxy), "--baseline", "bparams", "--baseline", "params",
                 "--limit", "12", "--bootstrap", "50", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "| p | proxy | test_acc | 12 |" in result.output
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"p", "bparams", "params"}
    assert rows["params"]["flags"] == ["constant"]  # one FP network: #params cannot rank bit configs
    assert report["batch"]["source"] and report["batch"]["seed"] == 0
    # the per-candidate scores beside the report recompute its Kendall exactly
    from emq.fitness import kendall
    from emq.score_table import ScoreTable

    table = ScoreTable.read(tmp_path / "report.scores.csv")
    assert len(table.candidates) == 12 and set(table.scores) == {"p", "baseline:bparams", "baseline:params"}
    assert kendall(table.scores["p"], table.truth["test_acc"]) == rows["p"]["kendall"]
    assert table.meta["proxies"] == {"p": "n_neg(sum_layers(l2(mul(grad, quant_error))))"}


@needs_mq_digits
def test_score_flags_an_input_independent_formula(run):
    result = run("score", "mq-digits", "--formula", "sum_layers(sum(bits))", "--limit", "10", "--bootstrap", "20", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["rows"][0]["flags"] == ["input_independent"]


@needs_mq_digits
def test_score_flags_input_independence_beside_nonfinite_scores(run, monkeypatch):
    # SynFlow on NB201 overflows on a few cells and is data-free: both flags, no rejection (issue 21).
    import emq.scoring

    monkeypatch.setattr(emq.scoring, "degeneracy_flags", lambda scores: ["nonfinite"])
    result = run("score", "mq-digits", "--formula", "sum_layers(sum(bits))", "--limit", "10", "--bootstrap", "20",
                 "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["rows"][0]["flags"] == ["nonfinite", "input_independent"]


@pytest.mark.parametrize("formula, message", [
    ("sum_layers(frob(weight))", "unknown op 'frob'"),
    ("sum_layers(weight)", "receives (T)"),
])
def test_bad_formula_is_a_clear_error_without_traceback(run, formula, message):
    result = run("score", "mq-digits", "--formula", formula)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_malformed_proxy_file_names_the_file(run, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    result = run("score", "mq-digits", "--proxy", str(bad))
    assert result.exit_code != 0 and str(bad) in result.output and "not valid JSON" in result.output


@needs_mq_digits
def test_search_then_export_then_rescore_end_to_end(run, tmp_path):
    out = tmp_path / "run"
    result = run("search", "mq-digits", "--population", "8", "--generations", "2", "--max-search", "24",
                 "--backend", "serial", "--hof-size", "3", "--out", str(out), "--batch-size", "8", "--max-heldout", "40")
    assert result.exit_code == 0, result.output
    assert "best proxy:" in result.output
    for name in ("log.jsonl", "hall_of_fame.json", "summary.md", "evolution.png", "scatter.png", "hall_of_fame.png",
                 "config.json"):
        assert (out / name).is_file(), name
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    hall = json.loads((out / "hall_of_fame.json").read_text())
    assert hall["programs"] and "heldout" in hall["programs"][0] and hall["split"]["heldout"] == 40
    summary = (out / "summary.md").read_text()
    assert "bit_sum" in summary and "evolved #1" in summary and "](hall_of_fame.png)" in summary

    proxy = tmp_path / "best.json"
    result = run("export", str(out), "--top", "1", "-o", str(proxy))
    assert result.exit_code == 0 and proxy.is_file()
    result = run("score", "mq-digits", "--proxy", str(proxy), "--limit", "10", "--bootstrap", "20", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert json.loads(proxy.read_text())["formula"] == hall["programs"][0]["formula"]
    assert "| best | proxy |" in result.output

    # the same folder again without --resume is refused (nothing is overwritten), with the fix in the message
    again = run("search", "mq-digits", "--population", "8", "--generations", "2", "--max-search", "24",
                "--backend", "serial", "--out", str(out), "--batch-size", "8")
    assert again.exit_code != 0 and "--resume" in again.output and "Traceback" not in again.output

    # a seeded search starts from the exported proxy
    seeded = tmp_path / "seeded"
    result = run("search", "mq-digits", "--population", "6", "--generations", "1", "--max-search", "24",
                 "--backend", "serial", "--hof-size", "2", "--out", str(seeded), "--batch-size", "8", "--max-heldout", "40",
                 "--seed-proxies", str(proxy))
    assert result.exit_code == 0, result.output
    first = json.loads((seeded / "checkpoint" / "state.json").read_text())
    formulas = json.dumps(first)
    assert json.loads(proxy.read_text())["formula"] in formulas


def test_search_unknown_target_names_the_columns(run):
    if not (results_dir() / "mq-digits" / "ground_truth.json").exists():
        pytest.skip("results/mq-digits is not built")
    result = run("search", "mq-digits", "--targets", "top5")
    assert result.exit_code != 0 and "unknown column(s) top5" in result.output and "test_acc" in result.output


def test_export_of_a_folder_that_is_not_a_run_is_a_clear_error(run, tmp_path):
    result = run("export", str(tmp_path))
    assert result.exit_code != 0 and "hall_of_fame.json" in result.output and "Traceback" not in result.output


def test_corrupt_vit_ground_truth_is_one_line_naming_the_file(run, tmp_path):
    folder = tmp_path / "vit-bench-101"
    folder.mkdir()
    (folder / "gt_autoformer.pth").write_bytes(b"not a torch file")
    result = run("bench", "show", "vit-bench-101-autoformer", "--data-dir", str(tmp_path))
    assert result.exit_code != 0 and "gt_autoformer.pth" in result.output and "Traceback" not in result.output


def test_vit_record_with_wrong_type_names_the_record(run, tmp_path):
    import torch

    folder = tmp_path / "vit-bench-101"
    folder.mkdir()
    arch = {"hidden_dim": 192, "depth": 12, "mlp_ratio": [4.0] * 12, "num_heads": [3] * 12}
    torch.save([{"arch": arch, "c100_kd_acc": 76.0}, {"arch": arch, "c100_kd_acc": "high"}], folder / "gt_autoformer.pth")
    result = run("bench", "show", "vit-bench-101-autoformer", "--data-dir", str(tmp_path))
    assert result.exit_code != 0 and "c100_kd_acc" in result.output and "1" in result.output
    assert "Traceback" not in result.output


def test_pickle_with_a_global_is_refused_by_the_cli(run, tmp_path):
    import pickle

    folder = tmp_path / "mq-bench-101"
    folder.mkdir()
    # a pickle that would call os.system if unpickled naively
    payload = pickle.dumps({"0": {"bit_cfg": "[4]", "acc": 70.0, "x": __import__("os").getcwd}})
    (folder / "PTQ-GT.pkl").write_bytes(payload)
    result = run("bench", "show", "mq-bench-101", "--data-dir", str(tmp_path))
    assert result.exit_code != 0 and "PTQ-GT.pkl" in result.output and "Traceback" not in result.output


def test_wrong_bit_list_length_is_a_clear_cli_error(run, tmp_path):
    folder = tmp_path / "mq-bench-101"
    folder.mkdir()
    (folder / "PTQ-GT.json").write_text(json.dumps({"0": {"bit_cfg": "[4, 4, 4]", "acc": 70.0}}))
    result = run("bench", "show", "mq-bench-101", "--data-dir", str(tmp_path))
    assert result.exit_code != 0 and "18" in result.output and "Traceback" not in result.output


def test_scoring_a_proxy_on_a_benchmark_without_its_statistic_names_the_statistic(run, tmp_path):
    from emq.proxy import Proxy

    if not (results_dir() / "vit-digits" / "ground_truth.json").exists():
        pytest.skip("results/vit-digits is not built (run: emq bench build vit-digits)")
    proxy = tmp_path / "mq-only.json"
    Proxy.from_formula("n_neg(sum_layers(l2(quant_error)))").save(proxy)
    result = run("score", "vit-digits", "--proxy", str(proxy), "--limit", "4")
    assert result.exit_code != 0 and "quant_error" in result.output and "vit-digits" in result.output
    assert "Traceback" not in result.output


@needs_mq_digits
def test_batch_source_is_an_argument_the_benchmark_checks(run):
    result = run("score", "mq-digits", "--baseline", "params", "--limit", "3", "--batch-source", "gaussian")
    assert result.exit_code == 2
    assert "mq-digits does not take option 'batch_source'" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------- --json on every command that reports
def _json_of(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("args, keys", [
    (["bench", "list", "--json"], {"name", "family", "embedded", "doc", "options"}),
    (["stats", "--list", "--json"], {"name", "doc", "needs_bits", "needs_loss", "layer_local", "family"}),
    (["ops", "--json"], {"name", "signature", "group", "doc"}),
], ids=["bench-list", "stats-list", "ops"])
def test_listing_commands_print_a_json_list_of_records(run, args, keys):
    data = _json_of(run(*args))
    assert isinstance(data, list) and data and all(keys <= set(item) for item in data)


@needs_mq_digits
def test_bench_show_json_is_the_summary_the_text_is_made_from(run):
    data = _json_of(run("bench", "show", "mq-digits", "--limit", "2", "--json"))
    assert data["name"] == "mq-digits" and data["candidates"] == 500 and len(data["first"]) == 2
    assert set(data["columns"]["test_acc"]) == {"n", "missing", "min", "q1", "median", "q3", "max"}
    text = run("bench", "show", "mq-digits", "--limit", "2").output
    assert f"median {data['columns']['test_acc']['median']:.4g}" in text


@needs_mq_digits
def test_stats_json_reports_candidates_and_settings(run):
    data = _json_of(run("stats", "mq-digits", "--limit", "2", "--batch-size", "4", "--stats", "weight", "--json"))
    assert data["benchmark"] == "mq-digits" and data["candidates"] == 2
    assert data["stats"]["batch_size"] == 4 and data["stats"]["stat_names"] == ["weight"]


@needs_mq_digits
def test_search_export_and_verdict_json(run, tmp_path):
    out = tmp_path / "run"
    data = _json_of(run("search", "mq-digits", "--population", "4", "--generations", "1", "--max-search", "12",
                        "--max-heldout", "12", "--backend", "serial", "--batch-size", "8", "--out", str(out), "--json"))
    assert data["run_dir"] == str(out) and data["finished"] and not data["study"] and data["best_formula"]
    paths = _json_of(run("export", str(out), "--top", "2", "-o", str(tmp_path / "p.json"), "--json"))
    assert paths and all(Path(p).is_file() for p in paths)
    record = _json_of(run("verdict", str(out), "--batch-size", "8", "--bootstrap", "20", "--json"))
    assert record["format"] == "emq-verdict/1"
    assert record["verdict"]["verdict"] == expected_verdict([record["verdict"]["difference"]])
    again = _json_of(run("verdict", str(out), "--from-scores", "--json"))
    hall = json.loads((out / "hall_of_fame.json").read_text())
    assert again["agrees"] and again["verdict"]["difference"] == hall["verdict"]["difference"]


def test_no_benchmark_name_is_tested_in_the_cli():
    from emq.bench.registry import BENCHMARKS

    root = Path(__file__).resolve().parent.parent
    code = "\n".join(line for name in ("cli.py", "cli_options.py", "cli_apply.py")
                     for line in (root / name).read_text().splitlines()
                     if not line.startswith("      emq ") and "#" not in line)  # help examples may name them
    names = set(BENCHMARKS) | {"autoformer", "pit"}
    assert [n for n in names if f'"{n}"' in code or f"'{n}'" in code] == []


@needs_mq_digits
def test_fit_a_run_then_score_the_fitted_proxy_end_to_end(run, tmp_path):
    out = tmp_path / "run"
    result = run("search", "mq-digits", "--population", "6", "--generations", "1", "--max-search", "40",
                 "--backend", "serial", "--hof-size", "2", "--out", str(out), "--batch-size", "8", "--max-heldout", "40")
    assert result.exit_code == 0, result.output
    result = run("fit", str(out), "--steps", "20", "--bootstrap", "50", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output[result.output.index("{"):])
    assert record["split"] == {"search": 40, "heldout": 40, "seed": 0, "order": "hash"}
    assert set(record["heldout_before"]) == set(record["heldout_after"]) and record["verdict"] in (
        "discovery", "no discovery")
    fitted = out / "fitted-proxy.json"
    data = json.loads(fitted.read_text())
    assert data["layer_weights"]["weights"] and "fit" in data["meta"]
    assert (out / "fitted-proxy.md").read_text().startswith("# emq fit:")
    result = run("score", "mq-digits", "--proxy", str(fitted), "--limit", "10", "--bootstrap", "20", "--batch-size", "8")
    assert result.exit_code == 0, result.output


@needs_mq_digits
def test_stats_in_worker_processes_writes_the_files_a_serial_pass_writes(run, tmp_path, monkeypatch):
    import torch

    from emq.bench.registry import get_benchmark
    from emq.stats.cache import cache_folder
    from emq.stats.config import StatsConfig

    import emq.stats.fill

    args = ("stats", "mq-digits", "--limit", "20", "--batch-size", "4", "--stats", "weight,grad", "--json")
    monkeypatch.setattr(emq.stats.fill, "MIN_SERIAL_SECONDS", 0.0)  # these 20 are quick: processes anyway
    data = _json_of(run(*args, "--workers", "2"))
    assert data["candidates"] == 20 and data["computed_in_workers"] == 19  # the first timed in the caller
    parallel = cache_folder(get_benchmark("mq-digits"), StatsConfig(batch_size=4, stat_names=("weight", "grad")),
                            tmp_path / "cache")
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "serial"))
    assert _json_of(run(*args))["computed_in_workers"] == 0
    serial = tmp_path / "serial" / parallel.relative_to(tmp_path / "cache")
    files = sorted(p.name for p in parallel.glob("*.pt"))
    assert len(files) == 20 and files == sorted(p.name for p in serial.glob("*.pt"))
    for name in files:
        a, b = (torch.load(folder / name, weights_only=True) for folder in (parallel, serial))
        assert a["checksum"] == b["checksum"]  # the same tensors, byte for byte
