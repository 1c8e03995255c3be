"""The known-proxy library (NASWOT, MeCo, ZiCo, SWAP, ... as programs): see `emq.known.library`."""
from emq.known.library import (
    KNOWN_PREFIX, KnownProxy, KnownProxyNotApplicableError, UnknownKnownProxyError, get_known, is_known_spec,
    known_proxies, resolve_known,
)

__all__ = ["KNOWN_PREFIX", "KnownProxy", "KnownProxyNotApplicableError", "UnknownKnownProxyError", "get_known",
           "is_known_spec", "known_proxies", "resolve_known"]
