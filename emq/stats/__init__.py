"""Network statistics, the inputs of every proxy program: the catalogue (re-exported here), and beside it

`compute` (one network on one batch), `structured` (small per-layer matrices), `transformer`
(where a ViT exposes its statistics), `cache` (on disk, keyed by `config.StatsConfig`),
`stage_features` / `teacher` (DisWOT's sample relations), `hessian_trace` (HAWQ-v2) and `layer_bits`
(the per-(layer, bits) table of the separable MQ statistics).
Only the catalogue is imported here, so `from emq.stats import NetworkStats` stays cheap.
"""
from emq.stats.catalogue import (
    BASE_STATS, BIT_STATS, FAMILY_STATS, LAYER_BITS_STATS, STATS, TRANSFORMER_STATS, NetworkStats, StatInfo, UnknownStatError,
    check_stat_names, register_stat, stats_with,
)

__all__ = [
    "BASE_STATS", "BIT_STATS", "FAMILY_STATS", "LAYER_BITS_STATS", "STATS", "TRANSFORMER_STATS", "NetworkStats", "StatInfo",
    "UnknownStatError", "check_stat_names", "register_stat", "stats_with",
]
