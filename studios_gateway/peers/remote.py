"""The dialer's way to a studio whose tunnel another node holds.

Ask the registry which node holds the session's tunnel, then open a stream
through the peer link to that node. When the answer may be stale (the holder
says it no longer has the tunnel, or cannot be reached while the client is
rebinding elsewhere), the cached entry is dropped and the registry asked once
more before giving up with StudioUnreachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from studios_gateway.peers.link import PeerPool, PeerUnavailable
from studios_gateway.peers.streams import PeerRefused
from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.tunnel.dialer import StudioUnreachable

_log = Logger(namespace="studios_gateway.peers")


def make_remote(store: Any, pool: PeerPool, node_id: str, node_address: Callable[[], str],
                on_outcome: Callable[[str], None] | None = None
                ) -> Callable[[str, bytes], Deferred[Any]]:
    """remote(session_id, kind) for :class:`~studios_gateway.tunnel.dialer.Dialer`."""
    outcome = on_outcome or (lambda _: None)

    def forget(session_id: str) -> None:
        invalidate = getattr(store, "invalidate", None)
        if invalidate is not None:
            invalidate(session_id)

    @defer.inlineCallbacks
    def remote(session_id: str, kind: bytes) -> Any:
        why = "not connected"
        for attempt in (1, 2):
            try:
                holder = yield store.get_tunnel(session_id)
            except StoreUnavailable as e:
                outcome("registry_unavailable")
                raise StudioUnreachable(session_id, f"session registry unavailable ({e.reason})")
            if holder is None:
                break
            if holder.node_id == node_id and holder.node_address == node_address():
                why = "not connected"  # the registry still names us: stale, or closing
            else:
                try:
                    stream = yield pool.open(holder.node_address, session_id, kind)
                except PeerRefused as e:
                    why = f"node {holder.node_id}: {e.reason}"
                except PeerUnavailable as e:
                    why = f"node {holder.node_id} unreachable ({e.reason})"
                else:
                    outcome("ok")
                    return stream
            if attempt == 1:
                forget(session_id)
        outcome("unreachable")
        _log.debug("studio {sid} unreachable through peers: {why}", sid=session_id, why=why)
        raise StudioUnreachable(session_id, why)

    return remote
