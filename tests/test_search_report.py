"""What a run leaves for people: summary.md and the pictures beside it."""
from __future__ import annotations

from search.report import write_summary

HALL = [{"rank": 1, "fitness": 0.5, "formula": "sum_layers(l2(grad))"},
        {"rank": 2, "fitness": 0.25, "formula": "n_add(sum_layers(l2(grad)), mean_layers(l2(grad)))"}]


def log_row(**fields):
    row = {"gen": 0, "evaluations": 4, "rejections": {}, "niches": 2}
    return {**row, **fields}


def test_summary_names_the_most_common_subexpression_of_the_last_population(tmp_path):
    row = log_row(shared_subexpressions=3, top_subexpression={"formula": "l2(grad)", "programs": 5})
    text = write_summary(tmp_path / "summary.md", "run", None, "", HALL, [row]).read_text()
    assert "3 subexpressions are shared by two or more programs of the last population" in text
    assert "`l2(grad)`, by 5." in text


def test_summary_of_a_log_without_subexpression_fields_still_reads(tmp_path):
    text = write_summary(tmp_path / "summary.md", "run", None, "", HALL, [log_row()]).read_text()
    assert "## Search" in text and "subexpressions" not in text
