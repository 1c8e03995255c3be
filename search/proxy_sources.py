"""Proxies named by a user: proxy files (emq-proxy/1), search run folders (their best program), the known-proxy
library (`known:NAME`), formulas."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from emq.atomic import check_writes
from emq.known import is_known_spec, resolve_known
from emq.proxy import Proxy
from search.config import RunFolderError
from search.hall_of_fame import export_proxies
from emq.score_table import scores_path
from search.run_folder import run_folder_files


def check_report_path(out_file: str | Path | None, sources: Sequence[str | Path] = ()) -> None:
    """Fail before any work if report `out_file` is unsafe or would replace a proxy file or run-folder file it reads."""
    inputs = [q for p in map(Path, sources) if not is_known_spec(p)
              for q in (run_folder_files(p) if p.is_dir() else [p])]
    check_writes([out_file, None if out_file is None else scores_path(out_file)], inputs)


def load_proxies(paths: Sequence[str | Path] = (), formulas: Sequence[str] = (),
                 offered: Iterable[str] | None = None) -> dict[str, Proxy]:
    """Return the proxies by name, in order: files and run folders by file stem or folder name, then formulas.

    `known:NAME[,NAME...]` names proxies of the known-proxy library (`emq.known`) by
    their names, and `known` every one of them, or with `offered` (a benchmark's
    statistics) every one it can compute. A formula may be named, `NAME=FORMULA`; unnamed
    ones are `formula`, or `formula1`, `formula2` ... when there are several. Every proxy
    is parsed here, so a bad one fails before any heavy work.
    """
    proxies: dict[str, Proxy] = {}
    for path in map(Path, paths):
        if is_known_spec(path):
            proxies.update(resolve_known(str(path), offered))
        elif path.is_dir():
            best = export_proxies(path, 1)
            if not best:
                raise RunFolderError(f"{path}: the hall of fame is empty (no program passed screening)")
            proxies[path.name] = best[0]
        else:
            proxies[path.stem] = Proxy.load(path)
    for i, text in enumerate(formulas):
        name, sep, formula = text.partition("=")
        if not sep:
            name, formula = (f"formula{i + 1}" if len(formulas) > 1 else "formula"), text
        proxies[name.strip()] = Proxy.from_formula(formula)
    return proxies
