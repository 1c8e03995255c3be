"""SIGTERM (what a batch scheduler sends) as a request to stop the search soon, at a checkpointed point.

`stop_on_signals()` installs the handler for the duration of a job; `run_search`
checks `stop_requested()` after each generation and between the screening batches of
one, so the wait is bounded whatever the population: a generation under way is
abandoned and the last checkpoint stands. The run ends unfinished and the job exits
with code 3: rerunning the same job resumes it. Only the main thread can install
handlers; elsewhere it does nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_STOP = threading.Event()


def stop_requested() -> bool:
    """True once a stop signal arrived (until `clear_stop`)."""
    return _STOP.is_set()


def request_stop() -> None:
    """Ask the running search to stop after its current generation (what the signal handler does)."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, the given signals request a stop instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        request_stop()

    clear_stop()
    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
