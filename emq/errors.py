"""The errors that mean "the input or the environment is wrong, not the code": one line, no traceback.

The base class lives in the leaf module `primitives.errors` (it imports nothing from
the project), so ops, statistics, benchmarks and the search raise one class; this
module adds the domain's kinds and imports nothing else. The CLI turns every
`EMQUserError` into one line on stderr and exit code 2 (as click does for bad
options); any other exception is a bug and keeps its traceback. A message names
the file, field or option at fault and says how to fix it.
"""
from __future__ import annotations

from primitives.errors import EMQUserError, UnknownNameError

__all__ = ["EMQUserError", "UnknownNameError", "InputFileError", "BudgetError", "StatUnavailableError",
           "NotSeparableError", "UnsafeOutputError", "BuildTargetError", "DeviceError", "one_line"]


class InputFileError(EMQUserError, ValueError):
    """A user-supplied file (ground truth, weights, config) is missing or malformed; the message names it."""


class BudgetError(EMQUserError, ValueError):
    """A size or parameter budget no configuration of the space can meet; the message gives the smallest possible."""


class StatUnavailableError(EMQUserError, ValueError):
    """A proxy needs a statistic the network or space does not have (e.g. `quant_error` on a ViT); the message names it."""


class NotSeparableError(EMQUserError, ValueError):
    """Exact integer programming was asked for a proxy that is not a sum of per-layer terms; the message says why."""


class UnsafeOutputError(EMQUserError, ValueError):
    """An output path that must not be written: a special file, a directory, a symlink, or one of the command's inputs."""


class BuildTargetError(EMQUserError, ValueError):
    """A benchmark build would replace existing data without `--overwrite`, or its settings cannot build anything."""


class DeviceError(EMQUserError, ValueError):
    """A torch device that does not exist here (a typo, or CUDA asked for on a machine without it)."""


def one_line(message: str) -> str:
    """Return `message` folded onto one line (the CLI's contract: one line per user error)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())
