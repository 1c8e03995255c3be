"""The import graph read from the source: no circle inside emq/, and imports flow primitives <- emq <- search <- cli."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"primitives": 0, "emq": 1, "search": 2, "cli": 3, "cli_options": 3, "cli_apply": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("primitives", "emq", "search"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    for name in ("cli", "cli_options", "cli_apply"):  # the command line: cli.py and its two helpers
        out[name] = ROOT / f"{name}.py"
    return out


def _imports(tree: ast.AST) -> list[ast.AST]:
    """Every import statement, lazy ones inside functions included; `if TYPE_CHECKING:` blocks excluded."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level or not node.module:
                    continue
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                targets = [a.name for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def test_no_import_circle_inside_emq():
    graph = import_graph()
    inside = graph.subgraph([m for m in graph if m.split(".")[0] == "emq"])
    assert list(nx.simple_cycles(inside)) == []


def test_imports_flow_one_way_between_layers():
    upward = [(a, b) for a, b in import_graph().edges if LAYERS[a.split(".")[0]] < LAYERS[b.split(".")[0]]]
    assert upward == []


def test_the_graph_sees_lazy_imports():
    # a lazy import inside a function counts: the registry reads the benchmarks package, not the reverse
    graph = import_graph()
    assert graph.has_edge("emq.bench", "emq.bench.mq_digits")
    assert graph.has_edge("emq.proxy", "emq.evaluate")
