"""Reading the embedded benchmarks' ground_truth.json: parse, then check the header fields every format shares."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_gt_json(path: Path, fmt: str, required: tuple[str, ...], error: type[ValueError], hint: str) -> dict[str, Any]:
    """Return the JSON object at `path` after checking `format`, an integer `seed` and the `required` fields.

    Errors are `error(message)` naming the file and field; `hint` (how to rebuild) ends
    the message of an unreadable file.
    """
    try:
        gt = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}); {hint}") from exc
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
