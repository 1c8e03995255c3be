"""Refusing a network that cannot fit in this machine's memory, before building it (one line instead of an OOM kill).

A statistics pass holds the weights, their gradients and several weight-shaped
statistics (`virtual_grad`, `hessian_diag`, ...) at once, in float32 while computing:
`BYTES_PER_PARAM` counts them. Activations come on top and grow with the batch, so
this is a lower bound: it catches a network that can never fit, not every one that
might not.
"""
from __future__ import annotations

import os

from emq.errors import EMQUserError

#: float32 weights + gradient + two weight-shaped statistics being computed.
BYTES_PER_PARAM = 4 * 4


class NetworkTooLargeError(EMQUserError, MemoryError):
    """A candidate network needs more memory than this machine has available; the message gives both figures."""


def available_bytes() -> int | None:
    """Return the memory available to new allocations (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(n_params: int, what: str, available: int | None = None) -> None:
    """Raise NetworkTooLargeError if a network of `n_params` parameters cannot fit in available memory."""
    available = available_bytes() if available is None else available
    need = n_params * BYTES_PER_PARAM
    if available is not None and need > available:
        raise NetworkTooLargeError(
            f"{what}: {n_params:,} parameters need at least {need / 2**30:.1f} GiB for a statistics pass, "
            f"but {available / 2**30:.1f} GiB are available on this machine; score it on a larger machine "
            f"(pid {os.getpid()})")
