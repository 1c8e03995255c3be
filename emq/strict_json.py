"""Reading JSON that users hand us: duplicate keys refused, nesting bounded, never a traceback for bad text.

`json.loads` keeps the last of two equal keys, so `{"seed": 0, "seed": 5}` loads
as seed 5 while a reader of the file sees 0; such files are refused. Nesting
deeper than Python's recursion limit raises RecursionError inside `json`; it is
reported as a ValueError like any other malformed text.
"""
from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice; the message names the key."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate key {key!r} in one JSON object")
        out[key] = value
    return out


def loads_strict(text: str) -> Any:
    """Return the value of JSON `text`; raise ValueError (JSONDecodeError, DuplicateKeyError) if it is malformed."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def describe_json_error(err: ValueError) -> str:
    """Return a short account of a `loads_strict` failure (line and column for syntax errors)."""
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    return f"not valid JSON ({err})"
