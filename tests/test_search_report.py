"""What a run leaves for people: summary.md and the pictures beside it."""
from __future__ import annotations

from emq.proxy import Proxy
from search.report import MAX_DRAWN, layered_positions, plot_hall_of_fame, write_summary

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


def test_hall_of_fame_picture_is_drawn_and_linked_from_the_summary(tmp_path):
    picture = plot_hall_of_fame(HALL, tmp_path / "hall_of_fame.png")
    assert picture is not None and picture.read_bytes().startswith(b"\x89PNG")
    text = write_summary(tmp_path / "summary.md", "run", None, "", HALL, [log_row()]).read_text()
    assert "![hall of fame programs as graphs](hall_of_fame.png)" in text


def test_summary_links_no_picture_that_was_not_drawn(tmp_path):
    assert plot_hall_of_fame([], tmp_path / "hall_of_fame.png") is None
    text = write_summary(tmp_path / "summary.md", "run", None, "", HALL, [log_row()]).read_text()
    assert "](hall_of_fame.png)" not in text


def test_hall_of_fame_picture_shows_at_most_six_programs_and_is_reproducible(tmp_path):
    hall = [{**HALL[i % 2], "rank": i + 1} for i in range(9)]
    first = plot_hall_of_fame(hall, tmp_path / "a.png").read_bytes()
    assert first == plot_hall_of_fame(hall[:MAX_DRAWN], tmp_path / "b.png").read_bytes()
    assert first != plot_hall_of_fame(hall[:2], tmp_path / "c.png").read_bytes()


def test_layers_put_the_score_on_top_and_every_argument_below_its_reader():
    graph = Proxy.from_formula("n_add(sum_layers(l2(sub(weight, grad))), mean_layers(l2(grad)))").to_networkx()
    pos = layered_positions(graph)
    assert set(pos) == set(graph)
    top = max(y for _, y in pos.values())
    assert [n for n, (_, y) in pos.items() if y == top] == [graph.graph["root"]]
    assert all(pos[a][1] < pos[b][1] for a, b in graph.edges)  # every arrow points up
    assert len(set(pos.values())) == len(pos)  # no two nodes on one spot


def test_a_program_without_shared_subexpressions_is_drawn_as_its_tree():
    proxy = Proxy.from_formula("sum_layers(s_mul(std(grad), l2(sub(act, weight))))")
    pos = layered_positions(proxy.to_networkx())
    assert {n: -y for n, (_, y) in pos.items()} == {node.canonical(): len(path) for path, node in proxy.root.walk()}
    assert pos["act"][0] < pos["weight"][0]  # sub(act, weight) reads left to right
