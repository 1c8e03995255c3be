"""Proxy programs: one immutable typed program that gives one score per network.

A `Proxy` is a program tree (`emq.program.Node`: statistic leaves, registered ops)
plus free-form `meta`. It owns everything about the program: parsing a formula,
printing it, simplifying it (`emq.simplify`), its canonical form and hash (equal for
programs equal up to commutative argument order and the registered identities),
its JSON form `emq-proxy/1` (a DAG with op *names*; shared subtrees stored once), its
networkx graph (`to_networkx`: common subexpressions as shared nodes), and its size and
depth. Evaluation goes through the one evaluator, `emq.evaluate`.
A proxy may carry fitted layer weights (`emq fit`, `emq.layer_weights`): an optional
`layer_weights` field of the file, applied by every scorer.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emq.atomic import write_json_atomic
from emq.safe_read import read_bytes_limited
from emq.errors import EMQUserError
from emq.evaluate import StackedStats, evaluate_stacked
from emq.layer_weights import LayerWeights
from emq.population import refuse_population
from emq.program import (
    MAX_DEPTH, MAX_FORMULA_CHARS, MAX_NODES, MAX_TREE_SIZE, Node, ProxyFormatError, check_limits, leaf, op_node,
    parse_formula,
)
from emq.simplify import self_cancelling, simplify
from emq.strict_json import describe_json_error, loads_strict
from emq.stats import NetworkStats, stats_with
from primitives import Kind

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["FORMAT", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_FORMULA_CHARS", "MAX_NODES", "MAX_TREE_SIZE",
           "MissingStatError", "Proxy", "ProxyEvaluationError", "ProxyFormatError"]

FORMAT = "emq-proxy/1"
#: Bytes of a proxy JSON file (the program limits are in `emq.program`).
MAX_FILE_BYTES = 2_000_000


class ProxyEvaluationError(EMQUserError, RuntimeError):
    """A program failed on a network's statistics; `reason` is a short, countable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MissingStatError(ProxyEvaluationError):
    """The statistics lack one the program needs."""


class Proxy:
    """A typed program ending in N (one number per network), immutable, with `meta` (how it was found)."""

    __slots__ = ("root", "meta", "layer_weights", "_simple")

    def __init__(self, root: Node, meta: dict[str, Any] | None = None, source: str = "<proxy>",
                 layer_weights: LayerWeights | None = None) -> None:
        if not isinstance(root, Node):
            raise TypeError(f"a Proxy is built from a program Node, got {type(root).__name__}; "
                            "use Proxy.from_formula or Proxy.from_json")
        check_limits(root, source)
        if root.kind != Kind.N:
            raise ProxyFormatError(
                f"{source}: the program ends in type {root.kind.value}; it must end in N (one number per network), "
                "e.g. wrap it in mean_layers(...)")
        self.root = root
        self.meta: dict[str, Any] = dict(meta or {})
        self.layer_weights = layer_weights
        self._simple: Node | None = None

    # ----------------------------------------------------------------- building
    @classmethod
    def from_formula(cls, text: str, meta: dict[str, Any] | None = None) -> "Proxy":
        """Parse `op(arg, ...)` / `stat` syntax, e.g. `mean_layers(l2(mul(abs(grad), weight)))`."""
        return cls(parse_formula(text), meta)

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
        specs: dict[int, dict[str, Any]] = {}
        for i, node in enumerate(nodes):
            where = f"{source}: nodes[{i}]"
            if not isinstance(node, dict) or not isinstance(node.get("id"), int) or isinstance(node.get("id"), bool):
                raise ProxyFormatError(f"{where} must be an object with an integer 'id'")
            nid = node["id"]
            if nid in specs:
                raise ProxyFormatError(f"{where}: duplicate node id {nid}")
            if ("stat" in node) == ("op" in node):
                raise ProxyFormatError(f"{where} (id {nid}) needs exactly one of 'stat' or 'op'")
            if "stat" in node and "inputs" in node:
                raise ProxyFormatError(f"{where} (stat {node['stat']!r}) is a leaf: drop its 'inputs'")
            if "op" in node:
                inputs = node.get("inputs")
                if not isinstance(inputs, list) or not all(isinstance(x, int) for x in inputs):
                    raise ProxyFormatError(f"{where} (op {node['op']!r}): 'inputs' must be a list of node ids")
            specs[nid] = node
        output = data.get("output")
        if isinstance(output, bool) or output not in specs:
            raise ProxyFormatError(f"{source}: field 'output' ({output!r}) is not a node id")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise ProxyFormatError(f"{source}: field 'meta' must be an object")
        built = _build_dag(specs, source)
        unused = sorted(set(specs) - _feeding(specs, output))
        if unused:
            raise ProxyFormatError(f"{source}: node(s) {unused} do not feed the output")
        weights = data.get("layer_weights")
        return cls(built[output], meta, source,
                   None if weights is None else LayerWeights.from_json(weights, source))

    @classmethod
    def load(cls, path: str | Path) -> "Proxy":
        """Read a proxy JSON file (never a pickle): UTF-8, at most MAX_FILE_BYTES, no duplicate keys."""
        path = Path(path)
        raw = read_bytes_limited(path, MAX_FILE_BYTES, "proxy file", ProxyFormatError)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProxyFormatError(f"{path}: not UTF-8 text (a binary or UTF-16 file?); proxy files are UTF-8 "
                                   "JSON, e.g. written by `emq export`") from None
        try:
            data = loads_strict(text)
        except ValueError as err:
            raise ProxyFormatError(f"{path}: {describe_json_error(err)}") from None
        return cls.from_json(data, source=str(path))

    # ------------------------------------------------------------ serialisation
    def to_json(self) -> dict[str, Any]:
        """Return the `emq-proxy/1` dict: distinct subtrees as nodes, children before parents."""
        order = self.root.unique()
        ids = {node: i for i, node in enumerate(order)}
        nodes = [{"id": ids[n], "stat": n.name} if n.is_leaf else
                 {"id": ids[n], "op": n.name, "inputs": [ids[c] for c in n.children]} for n in order]
        return {
            "format": FORMAT,
            "formula": self.formula(),
            "hash": self.canonical_hash(),
            "stats": sorted(self.stats_needed),
            "nodes": nodes,
            "output": ids[self.root],
            "meta": self.meta,
            **({"layer_weights": self.layer_weights.to_json()} if self.layer_weights is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically."""
        return write_json_atomic(path, self.to_json())

    def formula(self) -> str:
        """Return the readable formula as written, e.g. `mean_layers(l2(mul(abs(grad), weight)))`."""
        return self.root.formula()

    def simplified(self) -> "Proxy":
        """Return the program simplified by the registered identities (`emq.simplify`), same meta."""
        simple = self._simplified_root()
        return self if simple is self.root else Proxy(simple, self.meta, layer_weights=self.layer_weights)

    def with_layer_weights(self, weights: LayerWeights | None) -> "Proxy":
        """Return the same program and meta with `weights` on its per-layer terms (None: unweighted)."""
        return Proxy(self.root, self.meta, layer_weights=weights)

    def canonical(self) -> str:
        """Return the canonical formula: simplified, commutative arguments sorted."""
        return self._simplified_root().canonical()

    def canonical_hash(self) -> str:
        """Return a hash equal for programs equal up to commutative argument order and the registered identities."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def self_cancelling(self) -> str | None:
        """Return a self-cancelling subterm (`sub(x, x)`: a constant), or None."""
        return self_cancelling(self.root)

    @property
    def stats_needed(self) -> set[str]:
        return self.root.stats()

    @property
    def size(self) -> int:
        """Nodes of the formula (the measure the search limits against bloat)."""
        return self.root.size

    @property
    def depth(self) -> int:
        return self.root.depth

    def to_networkx(self) -> "nx.DiGraph":
        """Return the program as a networkx DAG: one node per distinct subexpression, edges from arguments to ops.

        Nodes are keyed by the canonical text of their subexpression (`Node.canonical`), so a
        subexpression used twice -- also when written `mul(a, b)` once and `mul(b, a)` once -- is
        one node with several consumers: common subexpressions show as shared nodes. Node
        attributes: `kind` ("stat" for a statistic leaf, "op" for an op; the program language has
        no constants, every leaf reads a statistic), `name` (the statistic or op name) and `type`
        (the value's kind: "T", "S" or "N"). An edge runs from an argument to the op that consumes
        it; its `positions` are the argument indices it fills, in canonical argument order (a
        tuple, as `mul(x, x)` takes one argument twice). The graph attribute `root` is the key of
        the output node, the one sink; the statistics are the sources.
        """
        import networkx as nx  # here: scoring workers import this module and never draw graphs

        graph = nx.DiGraph(root=self.root.canonical())
        for node in self.root.unique():  # children before parents
            key = node.canonical()
            if key in graph:
                continue  # equal up to commutative order to a node already added
            graph.add_node(key, kind="stat" if node.is_leaf else "op", name=node.name, type=node.kind.value)
            for position, child in enumerate(node.canonical_children()):
                edge = (child.canonical(), key)
                graph.add_edge(*edge, positions=graph.edges[edge]["positions"] + (position,)
                               if graph.has_edge(*edge) else (position,))
        return graph

    def __str__(self) -> str:
        return self.formula()

    def __repr__(self) -> str:
        weighted = ", layer-weighted" if self.layer_weights is not None else ""
        return f"Proxy({self.formula()!r}{weighted})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proxy) and self.root == other.root and self.layer_weights == other.layer_weights

    def __hash__(self) -> int:
        return hash(self.root)

    def __getstate__(self) -> tuple:
        return (self.root, self.meta, self.layer_weights)

    def __setstate__(self, state: tuple) -> None:
        self.root, self.meta, self.layer_weights = state
        self._simple = None

    def _simplified_root(self) -> Node:
        if self._simple is None:
            self._simple = simplify(self.root)
        return self._simple

    # --------------------------------------------------------------- evaluation
    def evaluate(self, stats: NetworkStats, dtype: torch.dtype = torch.float32,
                 stacked: StackedStats | None = None) -> float:
        """Return the program's score for one network; inputs are never modified.

        The one evaluator (`emq.evaluate`) with one candidate. The program runs over
        the entries that carry every statistic it needs. Raises MissingStatError when
        no entry has them and ProxyEvaluationError when an op fails; a non-finite
        score is returned as is (callers screen it). A program with rank aggregation
        (`n_rank_log`, ...) has no value for one network alone: PopulationProgramError.
        `stacked`: `StackedStats([stats])` built by a caller scoring several programs on
        this network (stacking a network costs more than most programs on it).
        """
        refuse_population(self.root, "one network scored alone")
        needed = self.stats_needed
        if not any(needed <= t.keys() for t in stats.layers.values()):
            have = sorted(stats.available()) if stats.layers else []
            raise MissingStatError(
                "missing_stat",
                f"no layer has all of {sorted(needed)} (statistics present: {have}); "
                "compute them with a stat set that includes them",
            )
        scores, failures = evaluate_stacked(self, stacked if stacked is not None else StackedStats([stats]), dtype)
        failed = Counter({k: v for k, v in failures.items() if k != "nonfinite"})
        if failed:
            reason = next(iter(failed))
            raise ProxyEvaluationError(reason, f"{self.formula()} failed on this network ({reason})")
        return float(scores[0])

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

        Computes only the statistics the program reads (`emq.stats.compute.compute_stats`,
        on a private copy: the model's weights and mode are never changed), then
        evaluates (a program that ranks candidates among each other, `emq.population`, is
        refused: one network has no rank). `batch` is an `emq.bench.base.Batch`, an `(inputs, labels)` pair, or
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
        from emq.quant.fake_quant import check_act_bits
        from emq.stats.compute import compute_stats

        if isinstance(batch, Batch):
            run_batch = batch
        elif isinstance(batch, torch.Tensor):
            loss_stats = sorted(self.stats_needed & stats_with(needs_loss=True))
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
        if bits is not None:
            check_act_bits(act_bits)
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


def _build_dag(specs: dict[int, dict[str, Any]], source: str) -> dict[int, Node]:
    """Return the node of every id, children built first (Kahn's order: linear; a cycle is refused)."""
    for nid, spec in specs.items():
        for src in spec.get("inputs", []):
            if src not in specs:
                raise ProxyFormatError(f"{source}: node {nid} ({spec['op']}) uses unknown node id {src}")
    waiting = {nid: len(spec.get("inputs", [])) for nid, spec in specs.items()}
    users: dict[int, list[int]] = {nid: [] for nid in specs}
    for nid, spec in specs.items():
        for src in spec.get("inputs", []):
            users[src].append(nid)
    ready = [nid for nid, k in waiting.items() if k == 0]
    built: dict[int, Node] = {}
    while ready:
        nid = ready.pop()
        spec = specs[nid]
        try:
            if "stat" in spec:
                built[nid] = leaf(str(spec["stat"]))
            else:
                built[nid] = op_node(str(spec["op"]), *(built[a] for a in spec["inputs"]))
        except ProxyFormatError as err:
            raise ProxyFormatError(f"{source}: node {nid}: {err}") from None
        for user in users[nid]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(built) != len(specs):
        raise ProxyFormatError(f"{source}: the program has a cycle; proxies must be acyclic")
    return built


def _feeding(specs: dict[int, dict[str, Any]], output: int) -> set[int]:
    """Return the ids the output depends on (itself included)."""
    seen = {output}
    stack = [output]
    while stack:
        for src in specs[stack.pop()].get("inputs", []):
            if src not in seen:
                seen.add(src)
                stack.append(src)
    return seen
