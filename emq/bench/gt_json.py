"""Reading the embedded benchmarks' ground_truth.json: parse, then check the header fields every format shares."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from emq.strict_json import describe_json_error, loads_strict


def read_gt_json(path: Path, fmt: str, required: tuple[str, ...], error: type[ValueError], hint: str) -> dict[str, Any]:
    """Return the JSON object at `path` (duplicate keys refused) after checking `format`, an integer `seed` and the `required` fields.

    Errors are `error(message)` naming the file and field; `hint` (how to rebuild) ends
    the message of an unreadable file.
    """
    try:
        gt = loads_strict(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; {hint}") from None
    except ValueError as exc:  # syntax, duplicate keys, nesting
        raise error(f"{path}: {describe_json_error(exc)}; {hint}") from None
    if not isinstance(gt, dict):
        raise error(f"{path}: expected a JSON object at the top level")
    for key in ("format", "seed", *required):
        if key not in gt:
            raise error(f"{path}: field {key!r} is missing")
    if gt["format"] != fmt:
        raise error(f"{path}: field 'format' is {gt['format']!r}, expected {fmt!r}")
    if not isinstance(gt["seed"], int) or isinstance(gt["seed"], bool):
        raise error(f"{path}: field 'seed' must be an integer")
    return gt
