"""The errors that mean "the user's input is wrong": the CLI prints them as one line, no traceback."""
from __future__ import annotations

from emq.baselines import UnknownBaselineError
from emq.bench.base import BenchmarkNotBuiltError
from emq.bench.registry import UnknownBenchmarkError
from emq.proxy import ProxyEvaluationError, ProxyFormatError
from emq.stats import UnknownStatError
from primitives import UnknownOpError


class InputFileError(ValueError):
    """A user-supplied file (ground truth, weights, config) is missing or malformed; the message names it."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    InputFileError,
    ProxyFormatError,
    ProxyEvaluationError,
    UnknownOpError,
    UnknownStatError,
    UnknownBenchmarkError,
    BenchmarkNotBuiltError,
    FileNotFoundError,
    UnknownBaselineError,
)
