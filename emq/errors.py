"""The errors that mean "the user's input is wrong": the CLI prints them as one line, no traceback."""
from __future__ import annotations

from emq.baselines import UnknownBaselineError
from emq.bench.base import BenchmarkNotBuiltError
from emq.bench.mq_bench101 import MQBenchFileError
from emq.bench.mq_digits import GroundTruthError
from emq.bench.safe_pickle import UnsafePickleError
from emq.bench.registry import UnknownBenchmarkError
from emq.proxy import ProxyEvaluationError, ProxyFormatError
from emq.stats import UnknownStatError
from primitives import UnknownOpError


class InputFileError(ValueError):
    """A user-supplied file (ground truth, weights, config) is missing or malformed; the message names it."""


class BudgetError(ValueError):
    """A size or parameter budget no configuration of the space can meet; the message gives the smallest possible."""


class StatUnavailableError(ValueError):
    """A proxy needs a statistic the network or space does not have (e.g. `quant_error` on a ViT); the message names it."""


class NotSeparableError(ValueError):
    """Exact integer programming was asked for a proxy that is not a sum of per-layer terms; the message says why."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    InputFileError,
    BudgetError,
    StatUnavailableError,
    NotSeparableError,
    ProxyFormatError,
    ProxyEvaluationError,
    UnknownOpError,
    UnknownStatError,
    UnknownBenchmarkError,
    BenchmarkNotBuiltError,
    FileNotFoundError,
    UnknownBaselineError,
    MQBenchFileError,
    GroundTruthError,
    UnsafePickleError,
)
