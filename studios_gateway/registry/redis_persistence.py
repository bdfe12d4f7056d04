"""Whether the Redis behind the registry keeps its data across its own restart.

With Redis, the sessions live only there: a Redis without AOF and without RDB
snapshots loses every session (and the login state: used links, logouts) when it
restarts, and every studio's client then hears ``unknown_session``. The gateway
asks once the connection is up (``INFO persistence`` for AOF, ``CONFIG GET save``
for RDB) and warns when neither is on; a managed Redis that refuses ``CONFIG``
is reported as unknown, not as unsafe.

It also asks whether Redis may evict keys when full (``CONFIG GET maxmemory``
and ``maxmemory-policy``): session records have no TTL, and the tunnel holders,
used login links and logouts have one, so any policy but ``noeviction`` under a
``maxmemory`` limit can silently drop a binding, make a used login link work
again or forget a logout. ``noeviction`` makes a full Redis refuse writes, which
the gateway reports, and loses nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["describe", "describe_eviction", "check_eviction", "check_persistence",
           "log_persistence", "PERSISTS_NOTHING"]

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


def describe_eviction(maxmemory: str | None, policy: str | None) -> str | None:
    """The risk, in an operator's words, of Redis's ``maxmemory`` and
    ``maxmemory-policy`` settings (None: no limit, ``noeviction``, or unknown)."""
    if maxmemory is None or policy is None:
        return None
    try:
        limit = int(maxmemory.strip())
    except ValueError:
        return None
    policy = policy.strip().lower()
    if limit <= 0 or policy == "noeviction":
        return None
    if policy.startswith("allkeys"):
        lost = "sessions, tunnel bindings, used login links and logouts"
    else:  # volatile-*: only keys with a TTL
        lost = "tunnel bindings, used login links and logouts"
    return (f"maxmemory {limit} with maxmemory-policy {policy}: when full, Redis "
            f"silently evicts {lost} (a used login link would work again, a "
            f"logged-out cookie open studios again); set maxmemory-policy noeviction")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _config_get(store: Any, name: str) -> Deferred[str | None]:
    """The value of one Redis setting (None: CONFIG refused or an unexpected reply)."""

    def value_of(reply: Any) -> str | None:
        if isinstance(reply, list | tuple) and len(reply) == 2:
            return _text(reply[1])
        if isinstance(reply, dict):  # RESP3 clients answer CONFIG GET with a map
            return _text(reply.get(name, reply.get(name.encode())))
        return None

    d: Deferred[str | None] = store.command("CONFIG", "GET", name).addCallbacks(
        value_of, lambda _: None)
    return d


def check_persistence(store: Any) -> Deferred[tuple[bool | None, str]]:
    """Ask the store's Redis (its ``command``) how it persists; see :func:`describe`."""
    info = store.command("INFO", "persistence").addCallbacks(_text, lambda _: None)
    save = _config_get(store, "save")
    return defer.gatherResults([info, save]).addCallback(lambda both: describe(*both))


def check_eviction(store: Any) -> Deferred[str | None]:
    """Ask the store's Redis whether it may evict the gateway's keys; see
    :func:`describe_eviction`."""
    both = defer.gatherResults([_config_get(store, "maxmemory"),
                                _config_get(store, "maxmemory-policy")])
    return both.addCallback(lambda got: describe_eviction(*got))


#: The warning for a Redis that persists nothing, at start and from check-config --connect
#: (a log format: fields ``address`` and ``how``).
PERSISTS_NOTHING = ("Redis at {address} persists nothing ({how}): a restart of Redis loses "
                    "every session, used login link and logout; turn on AOF (appendonly "
                    "yes) or RDB snapshots (save ...)")


def log_persistence(store: Any, address: str) -> Deferred[None]:
    """Once: warn when the Redis at `address` does not persist, say how it does otherwise;
    warn when it may evict the gateway's keys."""

    def report(result: tuple[bool | None, str]) -> None:
        persists, how = result
        if persists is False:
            _log.warn(PERSISTS_NOTHING, address=address, how=how)
        elif persists is None:
            _log.info("Redis at {address}: whether it persists sessions {how}",
                      address=address, how=how)
        else:
            _log.info("Redis at {address} persists with {how}", address=address, how=how)

    def report_eviction(risk: str | None) -> None:
        if risk is not None:
            _log.warn("Redis at {address}: {risk}", address=address, risk=risk)

    return defer.gatherResults([
        check_persistence(store).addCallback(report),
        check_eviction(store).addCallback(report_eviction),
    ]).addCallback(lambda _: None)
