"""The known-proxy library: the field's hand-designed proxies written as EMQ programs, shipped as proxy files.

Each `NAME.json` beside this module is an `emq-proxy/1` file whose `meta.known` says
what the program is: `title`, `paper`, `definition` (the published proxy, in words),
`reference` (the baseline that computes the same proxy on the network itself, with its
own code: `emq.baselines`), `stats` (what to name in `--stats`) and `fidelity` (how the
program's scores relate to the reference's: exact, a constant factor, or what differs).

`known:NAME` names one wherever a proxy file is read (`emq score --proxy known:naswot`,
`emq search --seed-proxies known:naswot,meco`); `known` names every one whose statistics
a benchmark offers (`emq search --seed-proxies known`). `emq proxies list` prints them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable

from emq.errors import EMQUserError, UnknownNameError
from emq.proxy import Proxy
from emq.strict_json import loads_strict

#: What names the library where a proxy file is accepted: `known` (all) or `known:NAME[,NAME...]`.
KNOWN_PREFIX = "known"


class UnknownKnownProxyError(UnknownNameError):
    """A `known:NAME` that the library does not ship; the message lists the names it does."""


class KnownProxyNotApplicableError(EMQUserError, ValueError):
    """A named known proxy reads statistics a benchmark does not offer (e.g. a teacher's)."""


@dataclass(frozen=True)
class KnownProxy:
    """One library entry: the program and what it stands for."""

    name: str
    title: str
    paper: str
    definition: str
    reference: str
    stats: tuple[str, ...]
    fidelity: str
    proxy: Proxy

    @property
    def formula(self) -> str:
        return self.proxy.formula()

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "paper": self.paper, "definition": self.definition,
                "reference": self.reference, "stats": list(self.stats), "fidelity": self.fidelity,
                "formula": self.formula}


@lru_cache(maxsize=1)
def known_proxies() -> dict[str, KnownProxy]:
    """Return the library by name (the JSON files shipped in this package, read once)."""
    out: dict[str, KnownProxy] = {}
    folder = resources.files("emq.known")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        source = f"emq/known/{entry.name}"
        proxy = Proxy.from_json(loads_strict(entry.read_text(encoding="utf-8")), source)
        info = proxy.meta.get("known", {})
        name = entry.name[: -len(".json")]
        if info.get("name") != name:
            raise ValueError(f"{source}: meta.known.name is {info.get('name')!r}, not the file's name {name!r}")
        stats = tuple(info["stats"])
        if set(stats) != proxy.stats_needed:
            raise ValueError(f"{source}: meta.known.stats {sorted(stats)} differ from the program's "
                             f"{sorted(proxy.stats_needed)}")
        out[name] = KnownProxy(name, info["title"], info["paper"], info["definition"], info["reference"], stats,
                               info["fidelity"], proxy)
    return out


def get_known(name: str) -> KnownProxy:
    """Return library entry `name`, or fail listing the names the library ships."""
    library = known_proxies()
    if name not in library:
        raise UnknownKnownProxyError(f"unknown known proxy {name!r}; the library has: {', '.join(library)} "
                                     "(emq proxies list)")
    return library[name]


def is_known_spec(text: object) -> bool:
    """True when `text` names library proxies (`known` or `known:NAME[,NAME...]`) rather than a file."""
    text = str(text)
    return text == KNOWN_PREFIX or text.startswith(KNOWN_PREFIX + ":")


def resolve_known(spec: str, offered: Iterable[str] | None = None) -> dict[str, Proxy]:
    """Return the proxies a `known` / `known:NAME,...` spec names, by name.

    `offered`: the statistics available (a benchmark's, or a search's --stats); `known`
    then keeps the proxies that read only those, and a named proxy that reads others is
    refused (one line).
    """
    spec = str(spec)
    if not is_known_spec(spec):
        raise ValueError(f"{spec!r} does not name known proxies (known, or known:NAME[,NAME...])")
    available = None if offered is None else set(offered)
    names = [n.strip() for n in spec[len(KNOWN_PREFIX) + 1:].split(",") if n.strip()]
    if not names:
        return {e.name: e.proxy for e in known_proxies().values()
                if available is None or set(e.stats) <= available}
    out = {}
    for name in names:
        entry = get_known(name)
        missing = sorted(set(entry.stats) - available) if available is not None else []
        if missing:
            raise KnownProxyNotApplicableError(
                f"known proxy {name!r} reads {', '.join(missing)}, not among the statistics computed here: add them to "
                "--stats (emq stats --list; a teacher's exist only on benchmarks with a distillation teacher)")
        out[name] = entry.proxy
    return out
