"""The base of every user error: a leaf module (it imports nothing from the project).

`EMQUserError` means "the input or the environment is wrong, not the code": the CLI
turns it into one line on stderr and exit code 2; anything else is a bug and keeps
its traceback. It lives at the bottom layer so that ops, statistics, benchmarks and
the search all raise the same class (`emq.errors` re-exports it). `UnknownNameError`
is what a `primitives.registry.Registry` raises for a name it does not hold.
"""
from __future__ import annotations


class EMQUserError(Exception):
    """Base of every error caused by user input or the environment; the message is the whole report."""


class UnknownNameError(EMQUserError, KeyError):
    """A name no registry entry has; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
