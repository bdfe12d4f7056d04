"""Whether the Redis behind the registry keeps its data across its own restart.

With Redis, the sessions live only there: a Redis without AOF and without RDB
snapshots loses every session (and the login state: used links, logouts) when it
restarts, and every studio's client then hears ``unknown_session``. The gateway
asks once the connection is up (``INFO persistence`` for AOF, ``CONFIG GET save``
for RDB) and warns when neither is on; a managed Redis that refuses ``CONFIG``
is reported as unknown, not as unsafe.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["describe", "check_persistence", "log_persistence"]

_log = Logger(namespace="studios_gateway.registry.redis")


def _aof_enabled(info: str) -> bool | None:
    for line in info.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "aof_enabled":
            return value.strip() == "1"
    return None


def describe(info: str | None, save: str | None) -> tuple[bool | None, str]:
    """(whether Redis persists: True, False or None for unknown; a phrase saying how)
    from the text of ``INFO persistence`` and the value of the ``save`` setting (None:
    either could not be read)."""
    aof = _aof_enabled(info) if info is not None else None
    rdb = None if save is None else bool(save.strip())
    kinds = [k for k, on in (("AOF", aof), (f"RDB snapshots (save {save})", rdb)) if on]
    if kinds:
        return True, " and ".join(kinds)
    if aof is False and rdb is False:
        return False, "neither AOF nor RDB snapshots"
    return None, "cannot tell (INFO persistence or CONFIG GET save was refused)"


def check_persistence(store: Any) -> Deferred[tuple[bool | None, str]]:
    """Ask the store's Redis (its ``command``) how it persists; see :func:`describe`."""

    def text(value: Any) -> str | None:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    def save_of(reply: Any) -> str | None:
        if isinstance(reply, list | tuple) and len(reply) == 2:
            return text(reply[1])
        if isinstance(reply, dict):  # RESP3 clients answer CONFIG GET with a map
            return text(reply.get("save", reply.get(b"save")))
        return None

    info = store.command("INFO", "persistence").addCallbacks(text, lambda _: None)
    save = store.command("CONFIG", "GET", "save").addCallbacks(save_of, lambda _: None)
    return defer.gatherResults([info, save]).addCallback(lambda both: describe(*both))


def log_persistence(store: Any, address: str) -> Deferred[None]:
    """Once: warn when the Redis at `address` does not persist, say how it does otherwise."""

    def report(result: tuple[bool | None, str]) -> None:
        persists, how = result
        if persists is False:
            _log.warn("Redis at {address} persists nothing ({how}): a restart of Redis loses "
                      "every session, used login link and logout; turn on AOF "
                      "(appendonly yes) or RDB snapshots (save ...)", address=address, how=how)
        elif persists is None:
            _log.info("Redis at {address}: whether it persists sessions {how}",
                      address=address, how=how)
        else:
            _log.info("Redis at {address} persists with {how}", address=address, how=how)

    return check_persistence(store).addCallback(report)
