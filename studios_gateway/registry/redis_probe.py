"""``studios-gateway check-config --connect``: try the configured Redis once, as a node would.

The gateway itself never stops for Redis: a wrong password, a refused TLS
certificate or a Redis that is down are logged and retried while it serves what it
can. Before a start, an operator wants one answer instead: this connects with the
node's settings (address, ACL user, password, db, TLS), waits for both of its links
(commands, and the subscriber on ``<prefix>:events``), then asks the start-up
questions of :mod:`.redis_persistence`, and compares the settings every node must share
with those of the nodes registered there (:mod:`.node_settings`). Passwords are never
printed: the reasons are Redis's and OpenSSL's words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol

from studios_gateway.registry.redis_persistence import (
    PERSISTS_NOTHING,
    check_eviction,
    check_persistence,
)

__all__ = ["ProbeResult", "probe_redis", "store_from_config"]


def store_from_config(config: Any, clock: IReactorTime, **options: Any) -> Any:
    """The RedisStore a node with `config` (a Config with Redis) uses."""
    from studios_gateway.registry.redis import RedisStore

    host, port = config.redis_address
    return RedisStore(
        address=f"{host}:{port}", user=config.redis_user, password=config.redis_password,
        db=config.redis_db, prefix=config.redis_prefix, tls=config.redis_tls_enable,
        tls_skip_verify=config.redis_tls_skip_verify,
        tls_cert_file=config.redis_tls_cert_file, tls_key_file=config.redis_tls_key_file,
        tls_ca_file=config.redis_tls_ca_file, clock=clock,
        node_id=config.effective_node_id, **options)


def _compare_nodes(node_id: str, settings: Mapping[str, str], records: Mapping[str, str],
                   result: ProbeResult) -> None:
    from studios_gateway.registry.node_settings import (
        compare_nodes,
        disagreement,
        node_records,
    )

    if not records:
        result.notes.append("cluster settings: no node is registered in Redis now")
    here = f"{node_id} (this configuration)"
    for other, theirs in node_records(records):
        diffs = compare_nodes(settings, theirs)
        if diffs:
            result.warnings.append(disagreement(here, other, diffs))
        else:
            result.notes.append(f"cluster settings: node {other} has the same")


@dataclass
class ProbeResult:
    """``problem``: why no node could use this Redis (None: connected); ``notes``: what
    it said about persistence, and warnings (eviction)."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _try_links(node_id: str, records: Mapping[str, str],
               link: Callable[[str, str], Deferred[Any]], result: ProbeResult
               ) -> Deferred[None]:
    """A peer link to each registered node that names its peer address, as a node of
    this configuration would make it (its secret or certificate), to all of them at
    once: one after the other, each node the peer port of which is not reachable from
    here (a host outside the nodes' network) took its connect timeout in turn, minutes
    for a large cluster. Said in the nodes' order."""
    from studios_gateway.registry.node_settings import PEER_ADDRESS, node_records

    tried = [(other, address) for other, theirs in node_records(records)
             if other != node_id and (address := theirs.get(PEER_ADDRESS))]

    def said(outcomes: list[tuple[bool, Any]]) -> None:
        for (other, address), (worked, value) in zip(tried, outcomes, strict=True):
            if worked:
                result.notes.append(f"peer link to node {other} at {address}: accepted")
            else:  # PeerUnavailable, with the reason
                why = getattr(value.value, "reason", None) or value.getErrorMessage()
                result.warnings.append(f"peer link to node {other} at {address}: {why}")

    attempts = [defer.maybeDeferred(link, address, other) for other, address in tried]
    return defer.DeferredList(attempts, consumeErrors=True).addCallback(said)


@defer.inlineCallbacks
def probe_redis(make_store: Callable[[], Any], address: str, clock: IReactorTime,
                wait: float = 10.0, settings: Mapping[str, str] | None = None,
                link: Callable[[str, str], Deferred[Any]] | None = None) -> Any:
    """Connect a store made by `make_store` (a RedisStore), return a :class:`ProbeResult`,
    and stop the store. `wait`: how long to wait for both links before giving up;
    `settings`: this configuration's :func:`.node_settings.shared_settings`, compared
    with every registered node's; `link(address, node id)`: a peer link made as this
    configuration would (peers.link.PeerPool.connect), tried to every registered node."""
    store = make_store()
    result = ProbeResult()
    outcome: Deferred[str | None] = Deferred()

    def settle(value: str | None) -> None:
        if not outcome.called:
            outcome.callback(value)

    store.when_connected().addCallbacks(lambda _: settle(None), lambda f: settle(
        f.getErrorMessage()))
    store.next_connection_failure().addCallbacks(settle, lambda _: None)
    store.next_subscriber_failure().addCallbacks(
        lambda why: settle(f"{why} (on the subscriber connection, channel {store.channel})"),
        lambda _: None)
    timer = clock.callLater(wait, settle, f"no working connection within {wait:g}s "
                            "(is Redis running there, and reachable from this host?)")
    try:
        # A refused or unroutable address is retried quietly by the links: ask once here.
        probe = yield connectProtocol(store.endpoint(), Protocol()).addErrback(
            lambda f: settle(f"cannot connect: {f.getErrorMessage()}"))
        if probe is not None and probe.transport is not None:
            probe.transport.abortConnection()
        if not outcome.called:
            store.start()
        problem = yield outcome
        if problem is not None:
            result.problem = f"Redis at {address}: {problem}"
            return result
        persists, how = yield check_persistence(store)
        if persists is False:
            result.warnings.append(PERSISTS_NOTHING.format(address=address, how=how))
        else:
            result.notes.append(f"Redis at {address}: connected; persistence: {how}")
        risk = yield check_eviction(store)
        if risk is not None:
            result.warnings.append(f"Redis at {address}: {risk}")
        if settings is not None:
            records = yield store.node_records()
            _compare_nodes(store.node_id, settings, records, result)
            if link is not None:
                yield _try_links(store.node_id, records, link, result)
            from studios_gateway.registry.redis_prefixes import PART_LOOKED_AT, other_clusters_lines

            prefixes, whole = yield store.cluster_prefixes()
            for level, line in other_clusters_lines(store.prefix, prefixes):
                (result.warnings if level == "warn" else result.notes).append(line)
            if not whole:
                result.notes.append(PART_LOOKED_AT)
        return result
    finally:
        if timer.active():
            timer.cancel()
        yield store.stop()
