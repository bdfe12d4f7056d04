"""The dialer's way to a studio whose tunnel another node holds.

Ask the registry which node holds the session's tunnel, then open a stream
through the peer link to that node. When the answer may be stale (the holder
says it no longer has the tunnel, or cannot be reached), the cached entry is
dropped and the registry asked again. If the registry still names a holder that
cannot serve (a node that just died or is draining: its studios are rebinding
elsewhere), the request waits up to `rebind_wait` seconds for the session's
next change in the registry (the rebind, heard over pub/sub) and tries once
more, here or on the new holder, before giving up with StudioUnreachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from studios_gateway.peers.link import PeerPool, PeerUnavailable
from studios_gateway.peers.streams import PeerRefused
from studios_gateway.registry.base import StoreUnavailable, TunnelClaims
from studios_gateway.tunnel.dialer import StudioUnreachable
from studios_gateway.wire.kinds import STREAM_SSH
from studios_gateway.wire.mux import TunnelUnavailable

_log = Logger(namespace="studios_gateway.peers")

REBIND_WAIT = 5.0
#: The same for a new ssh session: a draining node refuses those into the tunnel it keeps
#: while its studio moves (peers.streams), and a studio rebinds up to 8 s after the drain
#: began (the node's paced GoAways, tunnel.server.GOAWAY_LONGEST; an older studios-connect's
#: own spread, studio.client.GOAWAY_SPREAD), so an ssh session waits that long and a bind
#: more.
SSH_REBIND_WAIT = 10.0


def wait_for_change(store: TunnelClaims, clock: Any, session_id: str,
                    timeout: float) -> Deferred[bool]:
    """Fires True when the registry reports a change of `session_id` (or may have missed
    one), False after `timeout` seconds."""
    d: Deferred[bool] = Deferred()

    def heard(sid: str | None) -> None:
        if sid in (session_id, None) and not d.called:
            d.callback(True)

    unsubscribe = store.subscribe(heard)
    def expire() -> None:
        if not d.called:
            d.callback(False)

    timer = clock.callLater(timeout, expire)

    def done(result: bool) -> bool:
        unsubscribe()
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(done)


def make_remote(store: TunnelClaims, pool: PeerPool, node_id: str, node_address: Callable[[], str],
                on_outcome: Callable[[str], None] | None = None, *,
                local: Callable[[str, bytes], Any] | None = None, clock: Any = None,
                rebind_wait: float = REBIND_WAIT) -> Callable[[str, bytes], Deferred[Any]]:
    """remote(session_id, kind) for :class:`~studios_gateway.tunnel.dialer.Dialer`.
    `local` is the table's open_stream (tried again after a wait: the studio may have
    rebound to this very node); without `clock` there is no waiting."""
    outcome = on_outcome or (lambda _: None)

    def forget(session_id: str) -> None:
        invalidate = getattr(store, "invalidate", None)
        if invalidate is not None:
            invalidate(session_id)

    def try_local(session_id: str, kind: bytes) -> Any:
        if local is None:
            return None
        try:
            return local(session_id, kind)
        except TunnelUnavailable:
            return None

    @defer.inlineCallbacks
    def remote(session_id: str, kind: bytes) -> Any:
        why = "not connected"
        waited = False
        for attempt in range(3):
            try:
                holder = yield store.get_tunnel(session_id)
            except StoreUnavailable as e:
                outcome("registry_unavailable")
                raise StudioUnreachable(session_id, f"session registry unavailable ({e.reason})")
            if holder is None:
                break
            if holder.node_id == node_id and holder.node_address == node_address():
                # The registry names us: the studio may have rebound to this very node
                # while this request dialled its old holder (whose claim's change is then
                # heard already, not waited for); else stale, or closing.
                stream = try_local(session_id, kind)
                if stream is not None:
                    outcome("ok")
                    return stream
                why = "not connected"
            else:
                try:
                    stream = yield pool.open(holder.node_address, session_id, kind,
                                             node_id=holder.node_id)
                except PeerRefused as e:
                    why = f"node {holder.node_id}: {e.reason}"
                except PeerUnavailable as e:
                    why = f"node {holder.node_id} unreachable ({e.reason})"
                else:
                    stream.holder = holder
                    outcome("ok")
                    return stream
            if attempt == 1:
                if clock is None or waited:
                    break
                waited = True
                wait = max(rebind_wait, SSH_REBIND_WAIT) if kind == STREAM_SSH else rebind_wait
                changed = yield wait_for_change(store, clock, session_id, wait)
                if not changed:
                    break
                stream = try_local(session_id, kind)
                if stream is not None:
                    outcome("ok")
                    return stream
            forget(session_id)
        outcome("unreachable")
        _log.debug("studio {sid} unreachable through peers: {why}", sid=session_id, why=why)
        raise StudioUnreachable(session_id, why)

    return remote
