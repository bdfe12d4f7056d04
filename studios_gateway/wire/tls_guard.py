"""Server-side TLS whose handshakes have a deadline and a cap of their own.

Twisted's ``TLSMemoryBIOFactory`` builds and connects the application's protocol
as soon as TCP accepts, before a byte of TLS has arrived. A socket that never
sends its ClientHello then holds everything the application gives a connection
(an HTTP connection slot, a bind timer), and when the application gives up on it
the TLS layer cannot carry out ``loseConnection()``: with data buffered and no
handshake it waits for the handshake, forever.

:class:`GuardedTLSFactory` is a drop-in ``TLSMemoryBIOFactory`` for the
gateway's listeners (tunnel, HTTPS proxy, peers) that instead:

- counts the connections whose handshake has not finished; at ``max_pending``
  it stops accepting on the ports it was told of (:meth:`GuardedTLSFactory.listening_on`)
  until one finishes, so new connections wait in the kernel's listen queue at no
  cost to either side (a TCP connect completes there; the client's ClientHello
  waits in the socket); a socket accepted past the cap anyway (a port it was not
  told of) is closed at accept, before any TLS state is made for it
  (``buildProtocol`` returns None);
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
  key share OpenSSL keeps from the handshake (wire/openssl_peer_key.py);
- with ``plain_http`` (the HTTPS proxy), answers a plain-HTTP request sent to the port
  in HTTP (a redirect to https:// or 400) instead of closing without a word; the first
  read alone is looked at (wire/plain_http.py).

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
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from studios_gateway.wire import openssl_peer_key
from studios_gateway.wire.plain_http import FirstRead, PlainAnswers
from studios_gateway.wire.tls_lean import LeanTLSProtocol

__all__ = ["GuardedTLSFactory", "HandshakeLimits"]

#: Outcomes reported to ``on_outcome``: handshake done, deadline passed, refused at
#: accept because ``max_pending`` handshakes were in progress, connection ended first,
#: a plain-HTTP request answered in HTTP (``plain_http``; counted when it closes).
OK, TIMEOUT, FULL, FAILED, PLAIN_HTTP = "ok", "timeout", "full", "failed", "plain_http"


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
    #: A plain-HTTP request was answered (set on those connections only): the outcome.
    _plain = False

    def __init__(self, factory: GuardedTLSFactory, addr: Any):
        super().__init__(factory, _AwaitingHandshake(self))
        self._addr = addr
        self._pending = True
        self._held = False  # handshake done, place kept until setup_done (hold_until_setup)
        self._deadline: Any = None

    def makeConnection(self, transport: Any) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.limits.timeout,
                                                      self._timed_out)
        plain = self.factory.plain_http
        if plain is not None and getattr(transport, "protocol", None) is self:
            # The first read goes through FirstRead, which hands TCP back to this layer.
            transport.protocol = FirstRead(self, transport, plain)
        super().makeConnection(transport)

    def _timed_out(self) -> None:
        self._deadline = None
        if self._pending:
            self._finish(PLAIN_HTTP if self._plain else TIMEOUT)
            self.abortConnection()

    def plain_http_answered(self, status: str) -> None:
        """A plain-HTTP request was answered with ``status`` (wire/plain_http.py); the
        connection closes as soon as the client does, at the deadline at the latest."""
        self._plain = True
        self.factory._log.debug("{name}: a plain-HTTP request from {peer} was answered "
                                "{status} (the port speaks HTTPS)", name=self.factory.name,
                                peer=str(getattr(self._addr, "host", self._addr)),
                                status=status)

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
        self.connect_application(self.transport)
        if IHandshakeListener.providedBy(app):
            app.handshakeCompleted()

    def _finish(self, outcome: str) -> None:
        self._pending = False
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._held = outcome == OK and self.factory.hold_until_setup
        self.factory.handshake_ended(outcome, release=not self._held)

    def setup_done(self) -> None:
        """The application's word that this connection is set up (the tunnel: its bind is
        answered): with ``hold_until_setup`` it kept its place under ``max_pending`` until
        now."""
        if self._held:
            self._held = False
            self.factory.release()

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
            self._finish(PLAIN_HTTP if self._plain else FAILED)
        self.setup_done()
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
                 on_pause: Callable[[], object] = lambda: None,
                 name: str = "TLS", write_at_once: bool = False,
                 hold_until_setup: bool = False, plain_http: PlainAnswers | None = None):
        super().__init__(options, False, wrapped, clock=clock)
        self._kind = _GuardedTLSProtocol if write_at_once else _GuardedBuffered
        self.clock = clock
        self.limits = limits
        self.name = name
        self._on_outcome = on_outcome
        self._on_pause = on_pause
        #: A connection keeps its place under ``max_pending`` after its handshake, until
        #: the application calls its transport's ``setup_done`` (or it closes).
        self.hold_until_setup = hold_until_setup
        #: What a plain-HTTP request sent to this port is answered with; None: it is
        #: closed as any other bytes that are not TLS (the tunnel and peer ports).
        self.plain_http = plain_http
        #: Connections being set up right now: in their handshake, or done with it and
        #: held (``hold_until_setup``).
        self.pending = 0
        self._full_logged = False
        #: The listening ports this factory accepts on (listening_on), and whether their
        #: accepting is paused because ``max_pending`` handshakes are in progress.
        self._ports: list[Any] = []
        self.paused = False

    def listening_on(self, port: Any) -> None:
        """Accept on ``port`` (a listening ``twisted.internet.tcp.Port`` serving this
        factory) only while there is room under ``max_pending``.

        Closing at accept costs a client a whole attempt: its TCP connect, its key
        share, and then its retry's backoff (8 s for a studio). Paused, the kernel keeps
        completing connections into the listen queue (its backlog), where each waits
        with its ClientHello at no cost to either side until the gateway has room; the
        handshake's deadline starts at accept. Twisted's port accepts up to
        ``numberAccepts`` sockets per readable event whatever its factory says, so each
        accept round is bounded to the room left."""
        accept = getattr(port, "doRead", None)
        if accept is None or not hasattr(port, "stopReading"):
            return  # not a port that reads (its own accepting is not ours to pause)

        def bounded() -> None:
            room = self.limits.max_pending - self.pending
            if room <= 0:
                self._pause()
                return
            port.numberAccepts = max(1, min(port.numberAccepts, room))
            accept()

        port.doRead = bounded
        self._ports.append(port)

    def buildProtocol(self, addr: Any) -> _GuardedTLSProtocol | None:  # type: ignore[override]
        # None is how a factory refuses a connection: Twisted closes the socket at accept.
        if self.pending >= self.limits.max_pending:
            self._on_outcome(FULL)
            self._say_full("closing new ones at accept")
            return None
        self.pending += 1
        if self.pending >= self.limits.max_pending and self._ports:
            self._pause()
        return self._kind(self, addr)

    def handshake_ended(self, outcome: str, release: bool = True) -> None:
        if release:
            self.release()
        self._on_outcome(outcome)

    def release(self) -> None:
        """A place under ``max_pending`` is free again."""
        self.pending -= 1
        if self.pending < self.limits.max_pending // 2:
            self._full_logged = False
        if self.paused and self.pending < self.limits.max_pending:
            self._resume()

    def _pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self._on_pause()
        for port in self._listening():
            port.stopReading()
        self._say_full("new ones wait in the listen queue")

    def _say_full(self, meanwhile: str) -> None:
        """The cap is reached: one warning per episode (a flood must not flood the log)."""
        if not self._full_logged:
            self._full_logged = True
            self._log.warn("{name}: {n} connections are being set up (TLS handshake{bind}); "
                           "{meanwhile} until one is done (CONNECT_TLS_MAX_HANDSHAKES)",
                           name=self.name, n=self.pending, meanwhile=meanwhile,
                           bind=", bind" if self.hold_until_setup else "")

    def _resume(self) -> None:
        self.paused = False
        for port in self._listening():
            port.startReading()

    def _listening(self) -> list[Any]:
        """The ports still listening (a port stopped for good is forgotten)."""
        self._ports = [p for p in self._ports
                       if getattr(p, "connected", False) and not getattr(p, "disconnecting", False)]
        return self._ports
