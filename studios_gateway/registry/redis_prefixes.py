"""Other gateway clusters on the same Redis, and the one that is likely a typo of ours.

Nodes share sessions only when they use the same CONNECT_REDIS_PREFIX (and db): two
prefixes are two clusters, on purpose (staging and production on one Redis) or by
mistake (``studios`` on some nodes, ``studios:`` or ``studois`` on another). By mistake,
each half serves its own studios and answers "Studio not connected" for the other's,
depending on the node the load balancer picks, and nothing said why. Every live
cluster keeps its nodes' index ``<prefix>:_nodes`` (a minute's TTL, registry.redis), so
once connected the node looks for those indexes (one SCAN of the keyspace at start, cut
after ~100,000 keys) and warns when another prefix is :func:`near` its own; others are
said at info.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["PART_LOOKED_AT", "near", "log_other_clusters", "other_clusters_lines"]

_log = Logger(namespace="studios_gateway.registry.redis")

#: Said when the look for other clusters stopped before the end of the keyspace.
PART_LOOKED_AT = ("looked for other gateway clusters' prefixes among part of this Redis's "
                  "keys only (it holds more than a start should scan); a CONNECT_REDIS_PREFIX "
                  "typo on another node may go unsaid")

#: Characters an operator may add, drop or change without meaning another cluster.
_SEPARATORS = str.maketrans("", "", ":._-/ ")
#: Prefixes shorter than this (folded) may differ by one character on purpose (gw1, gw2).
_TYPO_LENGTH = 5


def _fold(prefix: str) -> str:
    return prefix.lower().translate(_SEPARATORS)


def _one_typo(a: str, b: str) -> bool:
    """Whether `b` is `a` with one character dropped, added, or two neighbours swapped (a
    changed character is not counted: cluster-a and cluster-b are two clusters; nor is a
    digit dropped or added: studios and studios2, tenant1 and tenant10 are numbered)."""
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) == 1:
        return any(b[:i] + b[i + 1:] == a and not b[i].isdigit() for i in range(len(b)))
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return (len(diff) == 2 and diff[1] == diff[0] + 1
                and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    return False


def near(ours: str, theirs: str) -> bool:
    """Whether `theirs` is likely `ours` mistyped: the same but for case and separators
    (``:._-/``, space), or, both at least 5 characters so, one character (not a digit)
    dropped or added, or two swapped."""
    if ours == theirs:
        return False
    a, b = _fold(ours), _fold(theirs)
    return a == b or (min(len(a), len(b)) >= _TYPO_LENGTH and _one_typo(a, b))


def other_clusters_lines(ours: str, prefixes: list[str]) -> list[tuple[str, str]]:
    """(level, line) to say about the other clusters' `prefixes` found on this Redis."""
    close = sorted(p for p in prefixes if near(ours, p))
    far = sorted(p for p in prefixes if p != ours and p not in close)
    out = [("warn", f"gateway nodes with CONNECT_REDIS_PREFIX {p!r} share this Redis, and "
                    f"this node's is {ours!r}: nodes share sessions only under one prefix, so "
                    "these are two clusters, each answering \"Studio not connected\" for the "
                    "other's studios. If they are meant to be one, give every node the same "
                    "prefix (studios-gateway check-config shows each node's); if two, choose "
                    "prefixes that differ by more than case, separators or one character")
           for p in close]
    if far:
        shown = ", ".join(repr(p) for p in far[:10]) + (" ..." if len(far) > 10 else "")
        out.append(("info", f"this Redis also holds the nodes of other gateway clusters "
                            f"(CONNECT_REDIS_PREFIX {shown}); this node's is {ours!r}"))
    return out


def log_other_clusters(store: Any) -> Deferred[None]:
    """Once connected: look for other clusters' node indexes and say them (see above)."""
    def said(found: tuple[list[str], bool]) -> None:
        prefixes, whole = found
        for level, line in other_clusters_lines(store.prefix, prefixes):
            getattr(_log, level)("{line}", line=line)
        if not whole:
            _log.info("{line}", line=PART_LOOKED_AT)

    def failed(f: Failure) -> None:
        _log.info("cannot look for other gateway clusters on this Redis: {why}",
                  why=f.getErrorMessage())

    return store.cluster_prefixes().addCallbacks(said, failed)
