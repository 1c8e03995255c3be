"""The base of every user error, and the one registry type: a leaf module (it imports nothing from the project).

`EMQUserError` means "the input or the environment is wrong, not the code": the CLI
turns it into one line on stderr and exit code 2; anything else is a bug and keeps
its traceback. It lives at the bottom layer so that ops, statistics, benchmarks and
the search all raise the same class (`emq.errors` re-exports it).

`Registry` is a name -> item mapping filled when the package is imported; asking it
for an unknown name raises `UnknownNameError`, whose one line lists the valid names.
"""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class EMQUserError(Exception):
    """Base of every error caused by user input or the environment; the message is the whole report."""


class UnknownNameError(EMQUserError, KeyError):
    """A name no registry entry has; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(dict, Generic[T]):
    """Items of one kind (ops, statistics, benchmarks, baselines, ...) by name.

    A dict, so lookups, `in` and iteration are the usual ones; `registry[name]` of an
    unknown name raises `error` (an `UnknownNameError`) naming the valid names, and
    `add` refuses a name registered twice.
    """

    def __init__(self, kind: str, error: type[UnknownNameError] = UnknownNameError) -> None:
        super().__init__()
        self.kind = kind
        self.error = error

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = item
        return item

    def __missing__(self, name: str) -> T:
        raise self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self)) or 'none registered'}")
