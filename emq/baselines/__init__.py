"""Hand-designed proxies from the literature, registered by name, scored like any proxy.

Every baseline gives one float per candidate, and a higher score predicts a higher
accuracy (quantities the literature calls "lower is better" are negated). Two kinds:

- *program* baselines are proxy formulas over the cached statistics (`emq.stats`),
  evaluated exactly like discovered programs;
- *model* baselines need the network itself (`fn(net, batch, bits, ctx) -> float`):
  they run on the same network the statistics come from (a private copy, quantized
  when the candidate has bits, eval mode) and the same fixed batch, and their
  per-candidate scores are cached on disk next to the statistics.

On a mixed-precision benchmark every candidate shares one full-precision network, so
weight-only baselines (`params`, `flops`) are constant there; that is their true
value, and the fitness code reports it as a degenerate (constant) scorer.

Layout: `registry` (names, kinds, trivial predictors), `program` (formula baselines),
`model` (network baselines), `structured` (the known-proxy references), `scoring`
(scores per candidate, with the model scores' disk cache). Importing this package
registers every baseline; the names below are its public face.
"""
from emq.baselines.registry import (
    ARCH_PREFIX, BASELINES, Baseline, BaselineContext, BaselineNotApplicableError, UnknownBaselineError,
    applicable_baselines, arch_baseline_names, benchmark_baselines, get_baseline, is_trivial, list_baselines,
    register_baseline, trivial_baselines,
)
from emq.baselines import program as _program  # noqa: F401  (registers the formula baselines)
from emq.baselines.model import HAWQ_V2_SAMPLES, hawq_v2_layer_costs, hawq_v2_traces
from emq.baselines.structured import REFERENCES
from emq.baselines.scoring import (
    arch_scores, baseline_cache_path, baseline_costs, baseline_scores, baseline_seconds, model_baseline_cost,
    model_baseline_scores,
)

# The known-proxy library's references: MeCo, ZiCo, SWAP, the AZ-NAS terms and network-side SynFlow / SNIP /
# grad-norm (emq.baselines.structured).
for _reference in REFERENCES:
    register_baseline(_reference.name, _reference.families, _reference.doc, version=_reference.version)(_reference.fn)

__all__ = [
    "ARCH_PREFIX", "BASELINES", "Baseline", "BaselineContext", "BaselineNotApplicableError", "HAWQ_V2_SAMPLES",
    "UnknownBaselineError", "applicable_baselines", "arch_baseline_names", "arch_scores", "baseline_cache_path",
    "baseline_costs", "baseline_scores", "baseline_seconds", "benchmark_baselines", "get_baseline",
    "hawq_v2_layer_costs", "hawq_v2_traces", "is_trivial", "list_baselines", "model_baseline_cost",
    "model_baseline_scores", "register_baseline", "trivial_baselines",
]
