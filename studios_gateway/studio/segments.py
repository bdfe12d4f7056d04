"""The size of the tunnel's TCP segments: the path's own, or small after an attempt stalled.

A path that drops packets larger than its MTU without a word (ICMP "fragmentation
needed" filtered somewhere: an MTU black hole) lets a TCP connection open, since its
SYNs are small, and then stalls the first full-size packet: the gateway's certificate
in the TLS handshake. Every attempt then ended before its bind was answered, for as
long as the path stayed so (measured: a 1280-byte path MTU with ICMP dropped, the
studio never bound). Linux's own probing for this (``tcp_mtu_probing``) is off by
default and is a host setting a studio cannot change.

The client answers it as a person would: after an attempt that connected and then
ended before its bind was answered, the next attempt uses the other size, small
segments (:data:`SMALL_MSS`, announced in the SYN, so both ends send them) or the
path's own. A path that is not a black hole binds either way.

One such stall proves little: a gateway too busy to finish TLS handshakes (a restart
under thousands of studios) ends attempts the same way, and a studio on a sound path
then bound with small segments and kept them for good (a few percent of a bulk
transfer's throughput, and more of the gateway's CPU per byte, on every such
studio). So a tunnel bound with small segments after a full-size stall keeps them, and
the next connection tries the path's own size again; only when that stalls too and
small segments bind again (twice in a row: :data:`SURE_AFTER`) does the client keep
small segments on that path, and for :data:`SURE_FOR` at most: a real black hole costs
one more stalled attempt at the first reconnect, and one an hour at most after that.
What the attempts said is kept per gateway listed: a stalled attempt moves on to the
next gateway, whose small bind says nothing of the first one's path (review52: two
listed gateways, the first ending every attempt, made a sound path to the second small
for good).

The same sockets wait at most 2 s between two SYNs (wire/sockopts.py
``cap_retransmissions``, set before the connect): an attempt under way when a silent
path comes back connects within 2 s, where TCP's doubling waits (1, 2, 4 s) held it
until its 10 s timeout and the back-off after it (the studio served again 9.4 s after
a 60 s cut).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from zope.interface import directlyProvides, providedBy

from studios_gateway.wire.sockopts import cap_retransmissions

__all__ = ["SMALL_MSS", "SURE_AFTER", "SURE_FOR", "ClampedTCP", "SegmentSize"]

#: Bytes of payload per TCP segment in small mode: a 1280-byte packet (the least MTU
#: IPv6 allows a link) holds it with IPv6's 40-byte header, TCP's 20 and timestamps' 12.
SMALL_MSS = 1200


#: Binds with small segments right after a full-size attempt stalled, in a row, that
#: make the client keep small segments on that path.
SURE_AFTER = 2

#: Seconds after which a path taken for a black hole is tried with full-size segments
#: once more, at its next connection (a studio on a sound path that was taken for one,
#: by a gateway busy at two restarts in a row, gets its full size back; a real black
#: hole costs one more stalled attempt, at most once per this).
SURE_FOR = 3600.0


class _Path:
    """What the attempts toward one gateway said."""

    __slots__ = ("mss", "small_binds", "after_stall", "sure_since")

    def __init__(self) -> None:
        self.mss: int | None = None
        self.small_binds = 0
        self.after_stall = False
        self.sure_since = 0.0

    @property
    def sure(self) -> bool:
        """Taken for an MTU black hole (small segments kept)."""
        return self.small_binds >= SURE_AFTER


class SegmentSize:
    """Which segment size the next attempt uses, from how the attempts before it ended,
    kept per path (per gateway listed: a stalled attempt moves on to the next gateway, and
    a small bind there says nothing about the path to the one that stalled)."""

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self._paths: dict[Any, _Path] = {}
        self._toward: Any = None

    def _path(self, path: Any) -> _Path:
        known = self._paths.get(path)
        if known is None:
            known = self._paths[path] = _Path()
        return known

    def toward(self, path: Any) -> None:
        """The next connection goes to ``path`` (a gateway): :attr:`mss` is its size. A
        path taken for a black hole :data:`SURE_FOR` ago is given full-size segments
        once more."""
        self._toward = path
        state = self._path(path)
        if (state.sure and self._clock is not None
                and self._clock.seconds() - state.sure_since >= SURE_FOR):
            state.small_binds = SURE_AFTER - 1
            state.mss = None

    @property
    def mss(self) -> int | None:
        """The segment size the next connection announces (None: the path's own)."""
        return self._path(self._toward).mss

    @property
    def small_binds(self) -> int:
        """Binds with small segments right after a full-size stall, in a row, on the path
        of the next connection (a bind with full-size segments starts again at 0)."""
        return self._path(self._toward).small_binds

    @property
    def sure(self) -> bool:
        """The next connection's path is taken for an MTU black hole (small segments)."""
        return self._path(self._toward).sure

    def stalled(self, path: Any = None) -> None:
        """An attempt toward ``path`` (by default the last :meth:`toward`'s) connected and
        ended before its bind was answered: the next one there uses the other size (small
        ones still, once it is taken for a black hole: what stalls them is not the
        path's packet size, a gateway away, say)."""
        state = self._path(self._toward if path is None else path)
        state.mss = None if state.mss and not state.sure else SMALL_MSS
        state.after_stall = True

    def bound(self, path: Any = None) -> int | None:
        """A bind was answered toward ``path`` (by default the last :meth:`toward`'s), with
        its segment size. Returns how many times in a row small segments have now bound
        there right after a full-size attempt there stalled (1, then :data:`SURE_AFTER`:
        the owner says so), else None. The next connection there (once this tunnel ends)
        uses the path's own size again unless the path is taken for a black hole."""
        state = self._path(self._toward if path is None else path)
        after_stall, state.after_stall = state.after_stall, False
        if state.mss is None:
            state.small_binds = 0
            return None
        if not after_stall or state.sure:
            return None  # (small kept, or small after a stall with small: said before)
        state.small_binds += 1
        if not state.sure:
            state.mss = None  # this tunnel keeps its small segments; the next one tries
        elif self._clock is not None:
            state.sure_since = self._clock.seconds()
        return state.small_binds


class _Client(tcp.Client):
    """Twisted's TCP client connection whose socket waits at most 2 s between SYNs and,
    with ``mss``, announces and sends at most that many bytes per segment (set before
    the connect: the SYN carries it)."""

    def __init__(self, *args: Any, mss: int | None) -> None:
        self.mss = mss
        super().__init__(*args)

    def createInternetSocket(self) -> socket.socket:  # noqa: N802 - Twisted's name
        sock: socket.socket = super().createInternetSocket()
        cap_retransmissions(sock)
        if self.mss is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.mss)
            except OSError:
                pass  # not a kernel that takes it: the path's own size, as before
        return sock


class _Connector(tcp.Connector):
    def __init__(self, *args: Any, mss: int | None) -> None:
        self.mss = mss
        super().__init__(*args)

    def _makeTransport(self) -> tcp.Client:  # noqa: N802 - Twisted's name
        return _Client(self.host, self.port, self.bindAddress, self, self.reactor,
                       mss=self.mss)


class ClampedTCP:
    """``reactor`` for a client endpoint, its TCP connections made with the segment size
    ``sizes`` says at each connect and their SYNs' waits capped; everything else is the
    reactor's own (and so are the connections of a reactor that has no sockets: a
    test's memory reactor)."""

    def __init__(self, reactor: Any, sizes: SegmentSize):
        self._reactor = reactor
        self._sizes = sizes
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,  # noqa: N802
                   bindAddress: Any = None) -> Any:  # noqa: N803 - Twisted's names
        if not isinstance(self._reactor, PosixReactorBase):
            return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)
        connector = _Connector(host, port, factory, timeout, bindAddress, self._reactor,
                               mss=self._sizes.mss)
        connector.connect()
        return connector
