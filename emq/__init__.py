"""EMQ: typed proxy programs over network statistics, and the code to find and reuse them.

`from emq import Proxy` gives the program class (load, save, formula, `score`); it
is imported on first use so that `import emq.<module>` stays cheap and free of cycles.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Proxy"]


def __getattr__(name: str) -> Any:
    if name == "Proxy":
        from emq.proxy import Proxy

        return Proxy
    raise AttributeError(f"module 'emq' has no attribute {name!r}")
