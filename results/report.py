"""What the report scripts under results/ share: the line that reproduces a report, and writing it out."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from emq.atomic import write_text_atomic


def reproduce_line(command: str, out: Path | None) -> str:
    """Return the report's "Reproduce: `...`" line: `command`, with `--out` when the report is written to a file."""
    return f"Reproduce: `{command}" + (f" --out {out}`" if out else "`")


def publish(lines: Sequence[str], out: Path | None) -> None:
    """Print the report and, with `out`, write it there atomically."""
    text = "\n".join(lines) + "\n"
    if out:
        write_text_atomic(out, text)
    print(text, end="")
