"""Best ViT architecture under a parameter budget, by an exported proxy (seeded evolutionary search).

Spaces (`ARCH_SPACES`, `get_space`), each with the arch format of its ground-truth file:

- `autoformer`: ViT-Bench-101's AutoFormer-Ti subnets, `{"hidden_dim", "depth",
  "mlp_ratio": [per layer], "num_heads": [per layer]}`; 224x224x3 input, 100 classes;
- `pit`: ViT-Bench-101's PiT subnets, `{"base_dim", "mlp_ratio", "depth": [3 stages],
  "num_heads": [3 stages]}`, depth and heads drawn from Auto-Prox's fixed triples;
- `vit-digits`: the embedded tiny-ViT space (`emq.bench.vit_digits_space.TinyViTSpace`,
  the same arch format as `autoformer`), 16x16x1 digits, 10 classes.

A candidate is scored as the benchmarks score theirs: the network randomly
initialised from `init_seed`, statistics on the space's fixed batch (ViT-Bench-101:
the benchmark's batch source, digits upsampled by default; vit-digits: the digits train
split), then the proxy. Parameters are counted as `emq.models.autoformer.count_params`
(every trainable parameter), on shape-only ("meta") networks, so counting is free.
Mutation changes one gene; an arch over the budget is shrunk one random step at a
time (a smaller width, one layer fewer, a smaller MLP ratio ...) until it fits.
"""
from __future__ import annotations

import json
import math
import random
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from emq.apply.evolve import Operators, evolve
from emq.bench.base import Batch
from emq.errors import BudgetError, StatUnavailableError
from emq.models.autoformer import AUTOFORMER_TI_SPACE, autoformer, count_params
from emq.models.pit import pit
from emq.proxy import Proxy, ProxyEvaluationError
from emq.stats import STATS
from emq.stats.compute import compute_stats
from primitives.registry import Registry

Arch = dict[str, Any]


def arch_key(arch: Arch) -> str:
    """Return a canonical text form of `arch` (equal archs, equal keys)."""
    return json.dumps(arch, sort_keys=True)


class ArchSpace(ABC):
    """A family of ViT archs: sampling, one-gene mutation, crossover, shrinking, building and the scoring batch."""

    name: str = ""
    #: The registered benchmark whose training recipe and test split can train this space's archs
    #: (`emq apply vit --train`), or None.
    trained_by: str | None = None

    def __init__(self) -> None:
        self._params: dict[str, int] = {}

    @abstractmethod
    def sample(self, rng: random.Random) -> Arch:
        """Return a random arch."""

    @abstractmethod
    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Return `arch` with one gene changed."""

    @abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> tuple[Arch, Arch]:
        """Return two children mixing the genes of `a` and `b`."""

    @abstractmethod
    def shrink_moves(self, arch: Arch) -> list[Arch]:
        """Return the archs one gene away from `arch` that may be smaller (`shrink_into` checks which are)."""

    @abstractmethod
    def smallest(self) -> Arch:
        """Return the arch with the fewest parameters."""

    @abstractmethod
    def build(self, arch: Arch, init_seed: int = 0) -> nn.Module:
        """Return the network of `arch`, randomly initialised from `init_seed`, in eval mode."""

    @abstractmethod
    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        """Return the fixed batch candidates are scored on."""

    def params(self, arch: Arch) -> int:
        """Return the number of trainable parameters of `arch` (cached; no memory is allocated)."""
        key = arch_key(arch)
        if key not in self._params:
            with torch.device("meta"):
                self._params[key] = count_params(self.build(arch))
        return self._params[key]

    def shrink_into(self, arch: Arch, max_params: int, rng: random.Random) -> Arch:
        """Return `arch` shrunk by random steps until it has at most `max_params` parameters."""
        while self.params(arch) > max_params:
            moves = self.shrink_moves(arch)
            rng.shuffle(moves)
            smaller = next((m for m in moves if self.params(m) < self.params(arch)), None)
            if smaller is None:
                raise BudgetError(f"cannot shrink {arch_key(arch)} below {self.params(arch)} parameters "
                                  f"(budget {max_params})")
            arch = smaller
        return arch


class LayerwiseSpace(ArchSpace):
    """AutoFormer-style archs: one width and depth, then heads and MLP ratio per layer."""

    def __init__(self, name: str, hidden_dim: tuple[int, ...], depth: tuple[int, ...], mlp_ratio: tuple[float, ...],
                 num_heads: tuple[int, ...], batch_fn: Callable[[int, int], Batch], **build_kwargs: Any) -> None:
        super().__init__()
        self.name = name
        self.hidden_dim = tuple(sorted(int(d) for d in hidden_dim))
        self.depth = tuple(sorted(int(d) for d in depth))
        self.mlp_ratio = tuple(sorted(float(r) for r in mlp_ratio))
        self.num_heads = tuple(sorted(int(h) for h in num_heads))
        self.batch_fn = batch_fn
        self.build_kwargs = build_kwargs

    def _heads(self, dim: int) -> list[int]:
        return [h for h in self.num_heads if dim % h == 0]

    def _layer(self, dim: int, rng: random.Random) -> tuple[float, int]:
        return rng.choice(self.mlp_ratio), rng.choice(self._heads(dim))

    def _make(self, dim: int, layers: list[tuple[float, int]]) -> Arch:
        return {"hidden_dim": dim, "depth": len(layers), "mlp_ratio": [float(r) for r, _ in layers],
                "num_heads": [int(h) for _, h in layers]}

    @staticmethod
    def _layers(arch: Arch) -> list[tuple[float, int]]:
        return list(zip(arch["mlp_ratio"], arch["num_heads"]))

    def sample(self, rng: random.Random) -> Arch:
        dim = rng.choice(self.hidden_dim)
        return self._make(dim, [self._layer(dim, rng) for _ in range(rng.choice(self.depth))])

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        dim, layers = arch["hidden_dim"], self._layers(arch)
        gene = rng.choice(["hidden_dim", "depth", "layer", "layer"])
        if gene == "hidden_dim" and len(self.hidden_dim) > 1:
            dim = rng.choice([d for d in self.hidden_dim if d != dim])
            layers = [(r, h if dim % h == 0 else rng.choice(self._heads(dim))) for r, h in layers]
        elif gene == "depth" and len(self.depth) > 1:
            target = rng.choice([d for d in self.depth if d != len(layers)])
            layers = layers[:target] + [self._layer(dim, rng) for _ in range(target - len(layers))]
        else:
            i = rng.randrange(len(layers))
            ratio, heads = layers[i]
            if rng.random() < 0.5 and len(self.mlp_ratio) > 1:
                ratio = rng.choice([r for r in self.mlp_ratio if r != ratio])
            else:
                heads = rng.choice([h for h in self._heads(dim) if h != heads] or [heads])
            layers[i] = (ratio, heads)
        return self._make(dim, layers)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> tuple[Arch, Arch]:
        children = []
        for first, second in ((a, b), (b, a)):
            dim = first["hidden_dim"] if rng.random() < 0.5 else second["hidden_dim"]
            depth = first["depth"] if rng.random() < 0.5 else second["depth"]
            la, lb = self._layers(first), self._layers(second)
            layers = []
            for i in range(depth):
                options = [x[i] for x in (la, lb) if i < len(x)]
                ratio, heads = rng.choice(options)
                layers.append((ratio, heads if dim % heads == 0 else rng.choice(self._heads(dim))))
            children.append(self._make(dim, layers))
        return children[0], children[1]

    def shrink_moves(self, arch: Arch) -> list[Arch]:
        dim, layers = arch["hidden_dim"], self._layers(arch)
        moves = []
        smaller = [d for d in self.hidden_dim if d < dim]
        if smaller:
            new = max(smaller)
            moves.append(self._make(new, [(r, h if new % h == 0 else self._heads(new)[0]) for r, h in layers]))
        if len(layers) > self.depth[0]:
            moves.append(self._make(dim, layers[:-1]))
        for i, (r, h) in enumerate(layers):
            lower = [x for x in self.mlp_ratio if x < r]
            if lower:
                moves.append(self._make(dim, layers[:i] + [(max(lower), h)] + layers[i + 1:]))
        return moves

    def smallest(self) -> Arch:
        dim = self.hidden_dim[0]
        return self._make(dim, [(self.mlp_ratio[0], self._heads(dim)[0])] * self.depth[0])

    def build(self, arch: Arch, init_seed: int = 0) -> nn.Module:
        return autoformer(arch, init_seed, **self.build_kwargs)

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        return self.batch_fn(seed, size)


#: PiT's choices in ViT-Bench-101 (Auto-Prox samples depth and heads from these triples).
PIT_CHOICES: dict[str, tuple] = {
    "base_dim": (16, 24, 32, 40),
    "mlp_ratio": (2, 4, 6, 8),
    "num_heads": ((2, 2, 2), (2, 2, 4), (2, 2, 8), (2, 4, 4), (2, 4, 8), (2, 8, 8), (4, 4, 4), (4, 4, 8), (4, 8, 8),
                  (8, 8, 8)),
    "depth": ((1, 6, 6), (1, 8, 4), (2, 4, 6), (2, 6, 4), (2, 6, 6), (2, 8, 2), (2, 8, 4), (3, 4, 6), (3, 6, 4),
              (3, 8, 2)),
}


class PiTSpace(ArchSpace):
    """PiT archs: four categorical genes (base_dim, mlp_ratio, the heads triple, the depth triple)."""

    name = "pit"
    genes = ("base_dim", "mlp_ratio", "num_heads", "depth")

    def __init__(self, batch_fn: Callable[[int, int], Batch], choices: dict[str, tuple] = PIT_CHOICES) -> None:
        super().__init__()
        self.choices = choices
        self.batch_fn = batch_fn
        self._smallest: Arch | None = None

    @staticmethod
    def _plain(arch: dict[str, Any]) -> Arch:
        return {g: (list(v) if isinstance(v, (list, tuple)) else v) for g, v in arch.items()}

    def _value(self, gene: str, v: Any) -> Any:
        return tuple(v) if gene in ("num_heads", "depth") else v

    def sample(self, rng: random.Random) -> Arch:
        return self._plain({g: rng.choice(self.choices[g]) for g in self.genes})

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        gene = rng.choice(self.genes)
        current = self._value(gene, arch[gene])
        return self._plain({**arch, gene: rng.choice([v for v in self.choices[gene] if v != current])})

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> tuple[Arch, Arch]:
        mask = {g: rng.random() < 0.5 for g in self.genes}
        return (self._plain({g: (a if mask[g] else b)[g] for g in self.genes}),
                self._plain({g: (b if mask[g] else a)[g] for g in self.genes}))

    def shrink_moves(self, arch: Arch) -> list[Arch]:
        return [self._plain({**arch, g: v}) for g in self.genes for v in self.choices[g]
                if v != self._value(g, arch[g])]

    def smallest(self) -> Arch:
        if self._smallest is None:  # heads and depth come in triples: try every pair once (shapes only)
            archs = [self._plain({"base_dim": min(self.choices["base_dim"]),
                                  "mlp_ratio": min(self.choices["mlp_ratio"]), "num_heads": h, "depth": d})
                     for h in self.choices["num_heads"] for d in self.choices["depth"]]
            self._smallest = min(archs, key=self.params)
        return dict(self._smallest)

    def build(self, arch: Arch, init_seed: int = 0) -> nn.Module:
        return pit(arch, init_seed)

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        return self.batch_fn(seed, size)


def _vit_bench_batch(seed: int, size: int) -> Batch:
    from emq.bench.digits import vit_batch
    from emq.bench.vit_bench101 import IMG_SIZE, NUM_CLASSES, resolve_batch_source

    return vit_batch(resolve_batch_source(None), seed, size, num_classes=NUM_CLASSES, resolution=IMG_SIZE)


def _vit_digits_space() -> LayerwiseSpace:
    """Return the tiny-ViT space of the built vit-digits benchmark (its defaults when not built)."""
    from emq.bench import digits
    from emq.bench.vit_digits_load import BENCH_NAME, GT_FILE, default_out_dir, load_ground_truth
    from emq.bench.vit_digits_space import TinyViTSpace, space_from_json

    path = default_out_dir() / GT_FILE
    gt = load_ground_truth(path) if path.is_file() else None
    space = space_from_json(gt["space"]) if gt else TinyViTSpace()
    split_seed = gt["seed"] if gt else 0

    def batch_fn(seed: int, size: int) -> Batch:
        x, y = digits.batch(seed, size, split_seed=split_seed, resolution=space.img_size, channels=space.in_chans)
        return Batch(inputs=x, labels=y, source="digits-train-16x16", seed=seed)

    layerwise = LayerwiseSpace("vit-digits", space.hidden_dim, space.depth, space.mlp_ratio, space.num_heads,
                               batch_fn, img_size=space.img_size, patch_size=space.patch_size, in_chans=space.in_chans,
                               num_classes=space.num_classes)
    layerwise.trained_by = BENCH_NAME
    return layerwise


ARCH_SPACES: Registry[Callable[[], ArchSpace]] = Registry("arch space")
ARCH_SPACES.add("autoformer", lambda: LayerwiseSpace("autoformer", batch_fn=_vit_bench_batch, num_classes=100,
                                                     **AUTOFORMER_TI_SPACE))
ARCH_SPACES.add("pit", lambda: PiTSpace(_vit_bench_batch))
ARCH_SPACES.add("vit-digits", _vit_digits_space)


def get_space(name: str) -> ArchSpace:
    """Return arch space `name`, or fail listing the known ones."""
    return ARCH_SPACES[name]()


# ------------------------------------------------------------------------------ search
class ArchObjective:
    """A proxy as a function of an arch: random-init network, statistics on the space's batch, then the program."""

    def __init__(self, proxy: Proxy, space: ArchSpace, *, init_seed: int = 0, batch_seed: int = 0,
                 batch_size: int = 16, hessian_samples: int = 2, device: torch.device | str = "cpu",
                 store_dtype: torch.dtype = torch.float32) -> None:
        bit_stats = sorted(n for n in proxy.stats_needed if STATS[n].needs_bits)
        if bit_stats:
            raise StatUnavailableError(
                f"proxy {proxy.formula()} needs statistic(s) {', '.join(bit_stats)}, which the {space.name} space "
                f"lacks: its networks carry no bit assignment (use it for bit allocation: emq apply mq)")
        self.proxy = proxy
        self.space = space
        self.init_seed = init_seed
        self.batch = space.batch(batch_seed, batch_size)
        self._kwargs = dict(hessian_samples=hessian_samples, seed=batch_seed, device=device, store_dtype=store_dtype)
        self._cache: dict[str, float] = {}
        self.seconds = 0.0

    def score(self, arch: Arch) -> float:
        """Return the proxy's score of `arch` (NaN when the program fails on it); cached."""
        key = arch_key(arch)
        if key not in self._cache:
            start = time.perf_counter()
            model = self.space.build(arch, self.init_seed)
            stats = compute_stats(model, self.batch, None, sorted(self.proxy.stats_needed), act_bits=None,
                                  **self._kwargs)
            try:
                self._cache[key] = self.proxy.evaluate(stats)
            except ProxyEvaluationError as err:
                if err.reason == "missing_stat":
                    raise StatUnavailableError(f"proxy {self.proxy.formula()} cannot run on {self.space.name} "
                                               f"networks: {err.detail}") from None
                self._cache[key] = math.nan
            self.seconds += time.perf_counter() - start
        return self._cache[key]

    @property
    def evaluations(self) -> int:
        return len(self._cache)


@dataclass
class ArchSearchResult:
    """The best arch found under the budget, with its parameters, score and the search's record."""

    space: str
    arch: Arch
    params: int
    score: float
    max_params: int
    proxy: str
    evaluations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score if math.isfinite(self.score) else str(self.score)
        return data


def check_params_budget(space: ArchSpace, max_params: int) -> None:
    """Fail when even the smallest arch of `space` has more than `max_params` parameters."""
    low = space.params(space.smallest())
    if low > max_params:
        raise BudgetError(f"--max-params {max_params} is below the smallest {space.name} arch "
                          f"({low} parameters: {arch_key(space.smallest())}); raise the budget")


def search_arch(
    objective: ArchObjective,
    max_params: int,
    *,
    population: int = 16,
    generations: int = 6,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> ArchSearchResult:
    """Return the arch with the highest proxy score among those the GA visits, all within `max_params`."""
    space = objective.space
    check_params_budget(space, max_params)
    start = time.perf_counter()
    ops = Operators(
        sample=space.sample,
        mutate=space.mutate,
        crossover=space.crossover,
        repair=lambda a, rng: space.shrink_into(a, max_params, rng),
        key=arch_key,
    )
    result = evolve(ops, objective.score, population=population, generations=generations, seed=seed,
                    progress=progress)
    best = result.best
    assert space.params(best) <= max_params, "search returned an arch over the budget"
    top = [{"arch": a, "params": space.params(a), "score": s} for a, s in result.top]
    return ArchSearchResult(space.name, best, space.params(best), objective.score(best), max_params,
                            objective.proxy.formula(), result.evaluations, time.perf_counter() - start,
                            result.history, top)
