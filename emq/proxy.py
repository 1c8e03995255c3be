"""Proxy programs: typed DAGs over network statistics that give one score per network.

A program's leaves are statistic names (type T, one tensor per layer); its inner
nodes are registered ops. Nodes of type T and S are evaluated per layer;
aggregations turn the per-layer S values into one network number (N), and the
program's output is N. Programs are plain data: JSON (`emq-proxy/1`) with op
*names*, a readable formula, and a canonical hash shared by equal programs.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch

from emq.atomic import write_json_atomic
from emq.errors import EMQUserError
from emq.strict_json import describe_json_error, loads_strict
from emq.stats import STATS, NetworkStats
from primitives import Kind, UnknownOpError, get_op

FORMAT = "emq-proxy/1"

# Limits on a program read from a formula or a file. They sit far above what the
# search builds (max_size 20, max_depth 7 by default) and keep parsing, printing and
# hashing cheap and recursion shallow: a hostile input is refused at parse time,
# with one line naming the limit, before any work.
#: Characters of a formula.
MAX_FORMULA_CHARS = 20_000
#: Nodes of a program (a formula's tree, or a JSON file's DAG).
MAX_NODES = 1_000
#: Nodes on the longest path from the output to a leaf.
MAX_DEPTH = 64
#: Nodes of a DAG's tree expansion (what its formula prints; a reused node counts once per use).
MAX_TREE_SIZE = 10_000
#: Bytes of a proxy JSON file.
MAX_FILE_BYTES = 2_000_000


class ProxyFormatError(EMQUserError, ValueError):
    """A program that cannot be built: unknown op/stat, type error, malformed JSON or formula."""


class ProxyEvaluationError(EMQUserError, RuntimeError):
    """A program failed on a network's statistics; `reason` is a short, countable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MissingStatError(ProxyEvaluationError):
    """The statistics lack one the program needs."""


@dataclass
class Proxy:
    """A typed program. `graph` nodes carry `stat` (leaf) or `op` (name) and `type`; edges carry `arg`."""

    graph: nx.DiGraph
    output: int
    meta: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_formula(cls, text: str, meta: dict[str, Any] | None = None) -> "Proxy":
        """Parse `op(arg, ...)` / `stat` syntax, e.g. `mean_layers(l2(mul(abs(grad), weight)))`."""
        graph = nx.DiGraph()
        output = _FormulaParser(text, graph).parse()
        proxy = cls(graph, output, dict(meta or {}))
        proxy.validate()
        return proxy

    @classmethod
    def from_json(cls, data: Any, source: str = "<json>") -> "Proxy":
        """Build from the `emq-proxy/1` dict; errors name `source` and the offending field/node."""
        if not isinstance(data, dict):
            raise ProxyFormatError(f"{source}: a proxy file must hold a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ProxyFormatError(
                f"{source}: field 'format' is {data.get('format')!r}; expected {FORMAT!r} (is this an EMQ proxy file?)"
            )
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise ProxyFormatError(f"{source}: field 'nodes' must be a non-empty list of node objects")
        if len(nodes) > MAX_NODES:
            raise ProxyFormatError(f"{source}: field 'nodes' has {len(nodes)} nodes; programs may have at most "
                                   f"{MAX_NODES}")
        graph = nx.DiGraph()
        for i, node in enumerate(nodes):
            where = f"{source}: nodes[{i}]"
            if not isinstance(node, dict) or not isinstance(node.get("id"), int):
                raise ProxyFormatError(f"{where} must be an object with an integer 'id'")
            nid = node["id"]
            if nid in graph:
                raise ProxyFormatError(f"{where}: duplicate node id {nid}")
            if ("stat" in node) == ("op" in node):
                raise ProxyFormatError(f"{where} (id {nid}) needs exactly one of 'stat' or 'op'")
            if "stat" in node:
                graph.add_node(nid, stat=str(node["stat"]))
            else:
                inputs = node.get("inputs")
                if not isinstance(inputs, list) or not all(isinstance(x, int) for x in inputs):
                    raise ProxyFormatError(f"{where} (op {node['op']!r}): 'inputs' must be a list of node ids")
                graph.add_node(nid, op=str(node["op"]), args=list(inputs))
        for nid, attrs in list(graph.nodes(data=True)):
            for src in attrs.get("args", []):
                if src not in graph:
                    raise ProxyFormatError(f"{source}: node {nid} ({attrs['op']}) uses unknown node id {src}")
                graph.add_edge(src, nid)
        output = data.get("output")
        if output not in graph:
            raise ProxyFormatError(f"{source}: field 'output' ({output!r}) is not a node id")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise ProxyFormatError(f"{source}: field 'meta' must be an object")
        proxy = cls(graph, output, meta)
        proxy.validate(source)
        return proxy

    @classmethod
    def load(cls, path: str | Path) -> "Proxy":
        """Read a proxy JSON file (never a pickle): UTF-8, at most MAX_FILE_BYTES, no duplicate keys."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ProxyFormatError(f"{path}: {path.stat().st_size} bytes; a proxy file may have at most "
                                       f"{MAX_FILE_BYTES} (is this a proxy file?)")
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ProxyFormatError(f"{path}: no such proxy file") from None
        except IsADirectoryError:
            raise ProxyFormatError(f"{path}: is a folder; give a proxy JSON file") from None
        except UnicodeDecodeError:
            raise ProxyFormatError(f"{path}: not UTF-8 text (a binary or UTF-16 file?); proxy files are UTF-8 "
                                   "JSON, e.g. written by `emq export`") from None
        try:
            data = loads_strict(text)
        except ValueError as err:
            raise ProxyFormatError(f"{path}: {describe_json_error(err)}") from None
        return cls.from_json(data, source=str(path))

    # --------------------------------------------------------------- validation
    def validate(self, source: str = "<proxy>") -> None:
        """Check ops/stats exist, arities and types match, the graph is acyclic and ends in N."""
        g = self.graph
        if not nx.is_directed_acyclic_graph(g):
            raise ProxyFormatError(f"{source}: the program has a cycle; proxies must be acyclic")
        for nid in nx.topological_sort(g):
            attrs = g.nodes[nid]
            if "stat" in attrs:
                if attrs["stat"] not in STATS:
                    raise ProxyFormatError(
                        f"{source}: node {nid}: unknown statistic {attrs['stat']!r}; known: {', '.join(sorted(STATS))}"
                    )
                attrs["type"] = Kind.T
                continue
            try:
                op = get_op(attrs["op"])
            except UnknownOpError as err:
                raise ProxyFormatError(f"{source}: node {nid}: {err}") from None
            args = attrs["args"]
            if len(args) != op.arity:
                raise ProxyFormatError(
                    f"{source}: node {nid} ({op.name}) takes {op.arity} input(s) ({op.signature()}), got {len(args)}"
                )
            got = tuple(g.nodes[a]["type"] for a in args)
            if got != op.inputs:
                shown = ", ".join(k.value for k in got)
                raise ProxyFormatError(
                    f"{source}: node {nid} ({op.name}) has signature {op.signature()} but receives ({shown}); "
                    "reduce a T to S with a reduction (mean, l2, ...) and S to N with an aggregation (mean_layers, ...)"
                )
            attrs["type"] = op.output
        if self.output not in g:
            raise ProxyFormatError(f"{source}: output node {self.output} does not exist")
        self._check_limits(source)
        out_type = g.nodes[self.output]["type"]
        if out_type != Kind.N:
            raise ProxyFormatError(
                f"{source}: the program ends in type {out_type.value}; it must end in N (one number per network), "
                "e.g. wrap it in mean_layers(...)"
            )
        unused = set(g) - nx.ancestors(g, self.output) - {self.output}
        if unused:
            raise ProxyFormatError(f"{source}: node(s) {sorted(unused)} do not feed the output")

    def _check_limits(self, source: str) -> None:
        """Refuse programs over MAX_NODES, MAX_DEPTH or MAX_TREE_SIZE (counted without recursion)."""
        g = self.graph
        if g.number_of_nodes() > MAX_NODES:
            raise ProxyFormatError(f"{source}: the program has {g.number_of_nodes()} nodes; at most {MAX_NODES} "
                                   "are allowed")
        depth: dict[int, int] = {}
        tree: dict[int, int] = {}
        for nid in nx.topological_sort(g):
            args = g.nodes[nid].get("args", [])
            depth[nid] = 1 + max((depth[a] for a in args), default=0)
            tree[nid] = 1 + sum(tree[a] for a in args)
            if depth[nid] > MAX_DEPTH:
                raise ProxyFormatError(f"{source}: the program is deeper than {MAX_DEPTH} nodes (the limit)")
            if tree[nid] > MAX_TREE_SIZE:
                raise ProxyFormatError(f"{source}: the program's formula would have more than {MAX_TREE_SIZE} nodes "
                                       "(shared nodes count once per use; the limit)")

    # ------------------------------------------------------------ serialisation
    def to_json(self) -> dict[str, Any]:
        """Return the `emq-proxy/1` dict (node ids renumbered in topological order)."""
        order = self._order()
        ids = {nid: i for i, nid in enumerate(order)}
        nodes = []
        for nid in order:
            attrs = self.graph.nodes[nid]
            if "stat" in attrs:
                nodes.append({"id": ids[nid], "stat": attrs["stat"]})
            else:
                nodes.append({"id": ids[nid], "op": attrs["op"], "inputs": [ids[a] for a in attrs["args"]]})
        return {
            "format": FORMAT,
            "formula": self.formula(),
            "hash": self.canonical_hash(),
            "stats": sorted(self.stats_needed),
            "nodes": nodes,
            "output": ids[self.output],
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically."""
        return write_json_atomic(path, self.to_json())

    def formula(self) -> str:
        """Return the readable formula, e.g. `mean_layers(l2(mul(abs(grad), weight)))`."""
        return self._render(self.output, canonical=False)

    def canonical_hash(self) -> str:
        """Return a hash equal for programs that are the same up to node ids and commutative argument order."""
        return hashlib.sha256(self._render(self.output, canonical=True).encode()).hexdigest()[:16]

    @property
    def stats_needed(self) -> set[str]:
        return {a["stat"] for _, a in self.graph.nodes(data=True) if "stat" in a}

    @property
    def size(self) -> int:
        """Number of nodes (the measure the search limits against bloat)."""
        return self.graph.number_of_nodes()

    def __str__(self) -> str:
        return self.formula()

    # --------------------------------------------------------------- evaluation
    def evaluate(self, stats: NetworkStats, dtype: torch.dtype = torch.float32) -> float:
        """Return the program's score for one network; inputs are never modified.

        The program runs over the layers that carry every statistic it needs (so
        per-block transformer statistics and per-layer weights can coexist).
        Raises MissingStatError when no layer has them and ProxyEvaluationError
        when an op fails; a non-finite score is returned as is (callers screen it).
        """
        needed = self.stats_needed
        layers = {name: t for name, t in stats.layers.items() if needed <= t.keys()}
        if not layers:
            have = sorted(set().union(*(t.keys() for t in stats.layers.values()))) if stats.layers else []
            raise MissingStatError(
                "missing_stat",
                f"no layer has all of {sorted(needed)} (statistics present: {have}); "
                "compute them with a stat set that includes them",
            )
        order = self._order()
        layer_nodes = [n for n in order if self.graph.nodes[n]["type"] != Kind.N]
        net_nodes = [n for n in order if self.graph.nodes[n]["type"] == Kind.N]
        per_layer: list[dict[int, torch.Tensor]] = []
        for layer, tensors in layers.items():
            values: dict[int, torch.Tensor] = {}
            for nid in layer_nodes:
                attrs = self.graph.nodes[nid]
                if "stat" in attrs:
                    values[nid] = tensors[attrs["stat"]].to(dtype)
                else:
                    values[nid] = self._apply(nid, [values[a] for a in attrs["args"]], layer)
            per_layer.append(values)
        params = torch.tensor([float(stats.params.get(name, 0)) for name in layers], dtype=dtype)
        net: dict[int, torch.Tensor] = {}
        for nid in net_nodes:
            attrs = self.graph.nodes[nid]
            op = get_op(attrs["op"])
            if op.is_aggregation:
                (child,) = attrs["args"]
                stacked = torch.stack([v[child].reshape(()) for v in per_layer])
                net[nid] = self._apply(nid, [stacked, params.to(stacked.device)], "network")
            else:
                net[nid] = self._apply(nid, [net[a] for a in attrs["args"]], "network")
        return float(net[self.output])

    def evaluate_many(self, stats_list: list[NetworkStats], dtype: torch.dtype = torch.float32) -> np.ndarray:
        """Return scores for several networks (errors propagate; see `evaluate`)."""
        return np.array([self.evaluate(s, dtype) for s in stats_list], dtype=np.float64)

    def score(
        self,
        model: torch.nn.Module,
        batch: Any,
        bits: dict[str, int] | None = None,
        *,
        calib_inputs: torch.Tensor | None = None,
        act_bits: int | None = None,
        hessian_samples: int | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        store_dtype: torch.dtype = torch.float32,
    ) -> float:
        """Return the program's score for `model` on `batch` (with weight `bits` per layer for MQ).

        Computes only the statistics the program reads (`emq.stats_compute.compute_stats`,
        on a private copy: the model's weights and mode are never changed), then
        evaluates. `batch` is an `emq.bench.base.Batch`, an `(inputs, labels)` pair, or
        an inputs tensor when the program needs no loss-derived statistic. With `bits`,
        activations are quantized to `act_bits`, calibrated on `calib_inputs`.

        The defaults are the settings the program was found with, read from
        `meta["stats"]` of an exported proxy (`act_bits`, `hessian_samples`, and where
        activations were calibrated), else 8 bits, 2 samples and the batch itself. When
        the search calibrated on a benchmark's calibration images, `calib_inputs` must be
        given: calibrating on the scored batch would feed the program other statistics
        than the ones it was selected on.
        """
        # Imported here: the statistics code sits above this module (it imports the quantizers).
        from emq.bench.base import Batch
        from emq.stats_compute import compute_stats

        if isinstance(batch, Batch):
            run_batch = batch
        elif isinstance(batch, torch.Tensor):
            loss_stats = sorted(self.stats_needed & {"grad", "act_grad", "hessian_diag", "attn_grad"})
            if loss_stats:
                raise ValueError(f"the program needs {loss_stats}, derivatives of the loss: pass (inputs, labels)")
            run_batch = Batch(batch, torch.zeros(batch.shape[0], dtype=torch.long), "tensor", seed)
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            run_batch = Batch(batch[0], batch[1], "tensor", seed)
        else:
            raise TypeError(f"batch must be a Batch, an (inputs, labels) pair or an inputs tensor, "
                            f"got {type(batch).__name__}")
        found = self.meta.get("stats", {}) if isinstance(self.meta.get("stats"), dict) else {}
        act_bits = act_bits if act_bits is not None else found.get("act_bits", 8)
        hessian_samples = hessian_samples if hessian_samples is not None else found.get("hessian_samples", 2)
        calibration = found.get("calibration", "batch")
        if bits is not None and act_bits is not None and calib_inputs is None and calibration != "batch":
            raise ValueError(f"this proxy was found with activations calibrated on {calibration}; pass those images "
                             "as calib_inputs= (e.g. bench.calibration_inputs()) so it sees the statistics it was "
                             "selected on")
        inputs = run_batch.inputs
        if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0 or inputs.shape[0] == 0:
            # statistics of no inputs are all zeros: the score would be a meaningless 0.0
            raise ValueError("the batch is empty: give at least one input")
        if isinstance(run_batch.labels, torch.Tensor) and run_batch.labels.shape[:1] != inputs.shape[:1]:
            raise ValueError(f"the batch has {inputs.shape[0]} inputs but {run_batch.labels.shape[0]} labels")
        stats = compute_stats(model, run_batch, bits, sorted(self.stats_needed), act_bits=act_bits,
                              calib_inputs=calib_inputs, hessian_samples=hessian_samples, seed=seed,
                              device=device, store_dtype=store_dtype)
        return self.evaluate(stats)

    # ---------------------------------------------------------------- internals
    def _order(self) -> list[int]:
        return list(nx.lexicographical_topological_sort(self.graph))

    def _apply(self, nid: int, args: list[torch.Tensor], where: str) -> torch.Tensor:
        op = get_op(self.graph.nodes[nid]["op"])
        try:
            out = op.fn(*args)
        except Exception as err:  # an op failing on real data is a countable outcome, not a crash
            raise ProxyEvaluationError(f"op_error:{op.name}", f"{op.name} failed at {where}: {err}") from err
        if op.output != Kind.T and out.numel() != 1:
            raise ProxyEvaluationError(f"shape:{op.name}", f"{op.name} returned shape {tuple(out.shape)} for type {op.output.value}")
        return out

    def _render(self, nid: int, canonical: bool) -> str:
        attrs = self.graph.nodes[nid]
        if "stat" in attrs:
            return attrs["stat"]
        op = get_op(attrs["op"])
        parts = [self._render(a, canonical) for a in attrs["args"]]
        if canonical and op.commutative:
            parts.sort()
        return f"{op.name}({', '.join(parts)})"


class _FormulaParser:
    """Recursive-descent parser for `name(arg, ...)` formulas; identifiers without parentheses are statistics."""

    _TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\()|(\))|(,))")

    def __init__(self, text: str, graph: nx.DiGraph) -> None:
        self.text = text
        self.graph = graph
        self.pos = 0

    def parse(self) -> int:
        if not isinstance(self.text, str):
            raise ProxyFormatError(f"a formula must be text, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ProxyFormatError("empty formula")
        if len(self.text) > MAX_FORMULA_CHARS:
            raise ProxyFormatError(f"formula of {len(self.text)} characters; at most {MAX_FORMULA_CHARS} are allowed")
        nid = self._expr(1)
        if self.text[self.pos:].strip():
            self._fail("unexpected text after the end of the formula")
        return nid

    def _fail(self, message: str) -> None:
        shown = self.text if len(self.text) <= 200 else self.text[:200] + "..."
        raise ProxyFormatError(f"formula {shown!r}, column {self.pos + 1}: {message}")

    def _next(self) -> tuple[str, str]:
        m = self._TOKEN.match(self.text, self.pos)
        if not m:
            self._fail("expected a name, '(', ')' or ','")
        self.pos = m.end()
        if m.group(1):
            return "name", m.group(1)
        return "punct", m.group(2) or m.group(3) or m.group(4)

    def _peek(self) -> str | None:
        m = self._TOKEN.match(self.text, self.pos)
        return (m.group(2) or m.group(3) or m.group(4)) if m and not m.group(1) else None

    def _expr(self, depth: int) -> int:
        if depth > MAX_DEPTH:
            self._fail(f"nested deeper than {MAX_DEPTH} levels (the limit)")
        kind, value = self._next()
        if kind != "name":
            self._fail(f"expected a name, got {value!r}")
        nid = self.graph.number_of_nodes()
        if nid >= MAX_NODES:
            self._fail(f"more than {MAX_NODES} nodes (the limit)")
        if self._peek() != "(":
            self.graph.add_node(nid, stat=value)
            return nid
        self._next()  # "("
        self.graph.add_node(nid, op=value, args=[])
        args: list[int] = []
        if self._peek() == ")":
            self._next()
        else:
            while True:
                args.append(self._expr(depth + 1))
                _, sep = self._next()
                if sep == ")":
                    break
                if sep != ",":
                    self._fail(f"expected ',' or ')', got {sep!r}")
        self.graph.nodes[nid]["args"] = args
        for a in args:
            self.graph.add_edge(a, nid)
        return nid

