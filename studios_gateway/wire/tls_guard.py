"""Server-side TLS whose handshakes have a deadline and a cap of their own.

Twisted's ``TLSMemoryBIOFactory`` builds and connects the application's protocol
as soon as TCP accepts, before a byte of TLS has arrived. A socket that never
sends its ClientHello then holds everything the application gives a connection
(an HTTP connection slot, a bind timer), and when the application gives up on it
the TLS layer cannot carry out ``loseConnection()``: with data buffered and no
handshake it waits for the handshake, forever.

:class:`GuardedTLSFactory` is a drop-in ``TLSMemoryBIOFactory`` for the
gateway's listeners (tunnel, HTTPS proxy, peers) that instead:

- counts the connections whose handshake has not finished; past
  ``max_pending`` a new socket is closed at accept, before any TLS state is
  made for it (``buildProtocol`` returns None);
- aborts (resets) a connection whose handshake is not done ``timeout`` seconds
  after accept;
- builds and connects the application's protocol only once the handshake is
  done, so a connection in its handshake holds none of the application's
  limits and established users are never starved by it;
- when the application closes, closes TCP as soon as its TLS close_notify is
  out, instead of waiting (for ever, if the peer does not read) for the peer's;
- with ``write_at_once``, encrypts and sends each write when it is made, where
  Twisted's default TLS transport gathers a turn's writes and sends them at the
  end of the turn (a reactor turn of latency per write; the tunnel's multiplexer
  does its own gathering, see docs/decisions/tunnel-scheduling.md);
- frees what its memory BIOs grew to (the handshake, a burst) once the
  connection is quiet (wire/tls_lean.py, wire/tls_memory.py), and the client's
  key share OpenSSL keeps from the handshake (wire/openssl_peer_key.py).

Until the handshake is done the TLS layer's protocol is a placeholder that
learns of the handshake through Twisted's ``IHandshakeListener``, which the TLS
layer calls before it hands over any application byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from studios_gateway.wire import openssl_peer_key
from studios_gateway.wire.tls_lean import LeanTLSProtocol

__all__ = ["GuardedTLSFactory", "HandshakeLimits"]

#: Outcomes reported to ``on_outcome``: handshake done, deadline passed, refused at
#: accept because ``max_pending`` handshakes were in progress, connection ended first.
OK, TIMEOUT, FULL, FAILED = "ok", "timeout", "full", "failed"


@dataclass(frozen=True)
class HandshakeLimits:
    #: Seconds from TCP accept to a finished TLS handshake.
    timeout: float = 10.0
    #: Connections allowed in their handshake at once, per listener.
    max_pending: int = 1000

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.max_pending < 1:
            raise ValueError(f"handshake limits must be positive, not {self}")


@implementer(IHandshakeListener)
class _AwaitingHandshake(Protocol):
    """Stands in for the application's protocol until the handshake is done."""

    def __init__(self, guard: _GuardedTLSProtocol):
        self._guard = guard

    def handshakeCompleted(self) -> None:
        self._guard.handshake_done()


class _GuardedTLSProtocol(LeanTLSProtocol):
    """The guard over Twisted's TLS layer, writing at once (see :class:`_GuardedBuffered`)."""

    factory: GuardedTLSFactory

    def __init__(self, factory: GuardedTLSFactory, addr: Any):
        super().__init__(factory, _AwaitingHandshake(self))
        self._addr = addr
        self._pending = True
        self._deadline: Any = None

    def makeConnection(self, transport: Any) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.limits.timeout,
                                                      self._timed_out)
        super().makeConnection(transport)

    def _timed_out(self) -> None:
        self._deadline = None
        if self._pending:
            self._finish(TIMEOUT)
            self.abortConnection()

    def handshake_done(self) -> None:
        if not self._pending:
            return
        self._finish(OK)
        # The client's key share is of no more use; OpenSSL would keep it (~6.8 KiB with
        # the hybrid key exchange) as long as the connection lives.
        openssl_peer_key.drop(self._tlsConnection)
        app = self.factory.wrappedFactory.buildProtocol(self._addr)
        self._addr = None  # needed for nothing else, and kept as long as the connection
        if app is None:  # the application refuses it (as a factory may at accept)
            self.abortConnection()
            return
        self.wrappedProtocol = app
        # What TLSMemoryBIOProtocol does at accept when it connects the application:
        # the application's transport is this TLS layer.
        ProtocolWrapper.makeConnection(self, self.transport)
        if IHandshakeListener.providedBy(app):
            app.handshakeCompleted()

    def _finish(self, outcome: str) -> None:
        self._pending = False
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.factory.handshake_ended(outcome)

    # Closing: after our close_notify, close TCP; do not wait for the peer's. ----------

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close_after_notify()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()  # a close that waited for the producer happens here
        self._close_after_notify()

    def _close_after_notify(self) -> None:
        """Twisted's TLS layer closes TCP only once the peer answers our close_notify,
        so a peer that never reads keeps the socket for good. Once the close_notify is
        out, everything the application wrote is in TCP's hands: let TCP flush it and
        close."""
        handle = self.getHandle()
        if (self.disconnecting and handle is not None and self.transport is not None
                and handle.get_shutdown() & SSL.SENT_SHUTDOWN):
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._pending:
            self._finish(FAILED)
        super().connectionLost(reason)


class _GuardedBuffered(_GuardedTLSProtocol, BufferingTLSTransport):
    """The guard over Twisted's default TLS transport, which sends a turn's small
    writes together at the end of the turn."""


class GuardedTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory(options, False, wrapped)`` with a deadline and a cap on the
    handshake, and the application connected only after it (see the module's text)."""

    _log = Logger()

    def __init__(self, options: Any, wrapped: IProtocolFactory, *, clock: IReactorTime,
                 limits: HandshakeLimits,
                 on_outcome: Callable[[str], object] = lambda _: None,
                 name: str = "TLS", write_at_once: bool = False):
        super().__init__(options, False, wrapped, clock=clock)
        self._kind = _GuardedTLSProtocol if write_at_once else _GuardedBuffered
        self.clock = clock
        self.limits = limits
        self.name = name
        self._on_outcome = on_outcome
        #: Connections in their handshake right now.
        self.pending = 0
        self._full_logged = False

    def buildProtocol(self, addr: Any) -> _GuardedTLSProtocol | None:  # type: ignore[override]
        # None is how a factory refuses a connection: Twisted closes the socket at accept.
        if self.pending >= self.limits.max_pending:
            self._on_outcome(FULL)
            if not self._full_logged:  # once per episode: a flood must not flood the log
                self._full_logged = True
                self._log.warn("{name}: {n} connections are in their TLS handshake already; "
                               "closing new ones at accept until some finish",
                               name=self.name, n=self.pending)
            return None
        self.pending += 1
        return self._kind(self, addr)

    def handshake_ended(self, outcome: str) -> None:
        self.pending -= 1
        if self.pending < self.limits.max_pending // 2:
            self._full_logged = False
        self._on_outcome(outcome)
