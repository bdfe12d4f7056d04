"""Socket options for tunnels and tool connections: Nagle off, bulk-sized buffers.

:func:`bulk_buffers` and :func:`write_through` change one TCP transport by giving it
a subclass of its Twisted class with the option in it (:func:`_fit`); on a listener's
connection they also give its port that class, so the port's later connections are
made with it and need nothing set on them: a single attribute added to a Twisted TCP
transport after it was made costs CPython an attribute dict of its own (~830 bytes),
and per-connection closures ~500 more: ~1.3-1.6 KiB per idle tunnel
(docs/decisions/tunnel-framing.md "Memory per idle tunnel"). The class's methods also
replace Twisted's for the hot path: a read is one call from the reactor to the
protocol (:meth:`_AdaptiveReads.doRead`), a write one call to ``send``.
"""

from __future__ import annotations

import fcntl
import socket
import sys
import termios
from typing import Any

from twisted.internet import main
from twisted.internet.endpoints import _WrappingProtocol
from twisted.internet.tcp import EWOULDBLOCK
from twisted.internet.tcp import Connection as _TwistedConnection

# Read size and write-buffer threshold (see bulk_buffers) for the tunnel's TCP
# connection and for the connect client's connections to the tool.
TUNNEL_BUFFER = 512 * 1024
TOOL_BUFFER = 256 * 1024
# The most a tunnel's TCP socket keeps unsent in the kernel (see unsent_bound).
TUNNEL_UNSENT = 128 * 1024
# The longest wait between two retransmissions on a tunnel's TCP socket (see
# retransmit_cap), in milliseconds.
TUNNEL_RTO_MAX_MS = 2000
# Linux's option (6.15 and later); Python 3.11's socket module does not name it.
TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)
# How much longer than its ping timeout a tunnel's data may go unacknowledged before its
# kernel ends the connection (see unacked_limit): the pings say it first.
TUNNEL_UNACKED_MARGIN = 5.0
# The read size while reads are small (see bulk_buffers): under glibc's mmap threshold
# (128 KiB by default), so a read's buffer comes from the heap.
SMALL_READ = 64 * 1024


def _tcp_under(transport: Any, attribute: str) -> Any:
    """The transport under ``transport`` (through TLS wrappers) whose class has ``attribute``.

    The class, not the instance: Twisted's protocol wrappers forward unknown
    attributes to the transport they wrap.
    """
    seen = 0
    while transport is not None and seen < 4:
        if getattr(type(transport), attribute, None) is not None:
            return transport
        transport = getattr(transport, "transport", None)
        seen += 1
    return None


def no_delay(transport: Any) -> None:
    """Turn Nagle off on the TCP socket under ``transport`` (through TLS wrappers).

    A tunnel carries many small request/answer exchanges; with Nagle on, each
    can wait for a delayed ACK (~40 ms) at every hop.
    """
    tcp = _tcp_under(transport, "setTcpNoDelay")
    if tcp is not None:
        try:
            tcp.setTcpNoDelay(True)
        except OSError:
            pass  # not a TCP socket (a test transport, a UNIX socket): nothing to do


def bytes_waiting(transport: Any) -> bool:
    """Whether the TCP socket under ``transport`` (through TLS wrappers) holds bytes the
    process has not read yet (``FIONREAD``): a request on its way to a connection about to
    be closed. False when that cannot be told (not a TCP socket, already closed)."""
    tcp = _tcp_under(transport, "setTcpNoDelay")
    if tcp is None:
        return False
    try:
        got = fcntl.ioctl(tcp.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return False
    return int.from_bytes(got, sys.byteorder) > 0


def ack_now(transport: Any) -> None:
    """Acknowledge at once what the TCP socket under ``transport`` has received
    (``TCP_QUICKACK``, Linux), instead of after the delayed-ACK timer (40 ms at least).

    A peer that writes twice in a row with Nagle on holds its second write until the
    first is acknowledged: OpenSSH's ssh sends its KEXINIT, then (once it has read the
    server's) its key exchange message, with Nagle on until it has logged in, and a
    third of logins through the gateway waited 40 ms for that ACK.
    """
    option = getattr(socket, "TCP_QUICKACK", None)
    tcp = _tcp_under(transport, "getHandle")
    if option is None or tcp is None:
        return
    try:
        tcp.getHandle().setsockopt(socket.IPPROTO_TCP, option, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a test transport, a UNIX socket): nothing to do


def unsent_bound(transport: Any, size: int = TUNNEL_UNSENT) -> None:
    """Keep at most about ``size`` bytes not yet sent in the kernel under ``transport``
    (``TCP_NOTSENT_LOWAT``): the socket reads as full past it, so what else is to go
    waits in the multiplexer, where a small frame overtakes bulk ones.

    Linux lets a socket's unsent data grow to its autotuned send buffer (up to
    ``tcp_wmem``'s 4 MiB): beside a download on a 20 Mbit/s uplink a tunnel held ~0.7 MiB
    unsent, and every WebSocket message or keystroke on it waited behind that, ~300 ms
    (docs/decisions/tunnel-scheduling.md, "On a slow path"). The data in flight (the
    congestion window) is not bounded by this, so throughput is not either while the
    process refills the socket in the time ``size`` takes to go out.
    """
    tcp = _tcp_under(transport, "setTcpNoDelay")
    sock = getattr(tcp, "socket", None) if tcp is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, size)
    except OSError:
        pass  # not a TCP socket, or a kernel without the option: unbounded, as before


def retransmit_cap(transport: Any, ms: int = TUNNEL_RTO_MAX_MS) -> None:
    """Retransmit unacknowledged data on the TCP socket under ``transport`` at least every
    ``ms`` milliseconds while the peer is silent (``TCP_RTO_MAX_MS``, Linux 6.15 and
    later; older kernels keep their 120 s).

    TCP doubles its wait after each unanswered retransmission: after a path was silent
    for 10 s the next one went out ~9 s after the path was back, and the studio served
    nothing until then (measured across two network namespaces, 80 ms round trip: back
    19.3 s after the cut). With the cap the wait after a short outage is at most ``ms``;
    a silent tunnel costs one small packet per ``ms`` until the pings declare it dead.
    """
    tcp = _tcp_under(transport, "setTcpNoDelay")
    sock = getattr(tcp, "socket", None) if tcp is not None else None
    if sock is not None:
        cap_retransmissions(sock, ms)


def cap_retransmissions(sock: socket.socket, ms: int = TUNNEL_RTO_MAX_MS) -> None:
    """:func:`retransmit_cap` on a socket; set before its connect, it caps the waits
    between the SYNs too."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, ms)
    except OSError:
        pass  # not a TCP socket, or a kernel without the option: its own cap, as before


def unacked_limit(transport: Any, seconds: float) -> None:
    """End the TCP connection under ``transport`` once data it sent has gone
    unacknowledged for ``seconds`` (``TCP_USER_TIMEOUT``), and not before.

    Without it the kernel ends one after ``tcp_retries2`` (15) retransmissions, which it
    reckons with the socket's longest wait between two: ~15 min with the kernel's 120 s,
    but ~27 s under :func:`retransmit_cap`'s 2 s (measured: a connection sending a byte a
    second across a silent path ended with ETIMEDOUT after 28 s; without the cap it was
    open at 60 s). A tunnel's pings are such data, so a tunnel whose ping timeout is
    longer was ended by the kernel first, within a cut its settings say it outlasts."""
    tcp = _tcp_under(transport, "setTcpNoDelay")
    sock = getattr(tcp, "socket", None) if tcp is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    except OSError:
        pass  # not a TCP socket: nothing to do


def host_silence_limit(transport: Any, limit: tuple[int, int, int] | None) -> None:
    """End the TCP connection under ``transport`` once the peer's host has been silent
    for about ``idle + interval * count`` seconds (``limit``: keepalive probes after
    ``idle`` s with nothing received, every ``interval`` s, ``count`` of them; and the
    same bound on data left unacknowledged, ``TCP_USER_TIMEOUT``); ``None`` turns both
    off again (the default).

    A peer whose kernel still answers (a busy process, a connection waiting in its
    listen queue, a stopped process) is not ended: only a silent host or path is."""
    tcp = _tcp_under(transport, "setTcpNoDelay")
    sock = getattr(tcp, "socket", None) if tcp is not None else None
    if sock is None:
        return
    idle, interval, count = limit or (0, 0, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if limit else 0)
        if limit:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                        (idle + interval * count) * 1000)
    except OSError:
        pass  # not a TCP socket: nothing to do


def bulk_buffers(transport: Any, size: int) -> None:
    """Read, and buffer writes, in ``size`` chunks on the TCP transport under ``transport``.

    Twisted's default is 64 KiB for both the read size and the write buffer
    above which a transport pauses its producer. On the tunnel that paused
    the multiplexer (so every stream's producer: the tool socket's
    stopReading) after each 64 KiB frame, and resumed it a reactor turn
    later: eight syscalls and two turns per frame. With ``size`` the
    transport pauses its producer only once ``size`` bytes wait for the
    socket, and sends up to ``size`` per call. Backpressure is unchanged;
    the transport's bound moves from 64 KiB (plus one write) to ``size``.

    Reads are ``size`` only while the data comes in bulk: they start at
    :data:`SMALL_READ`, grow to ``size`` after a read that filled its buffer and
    shrink back after one that brought less than :data:`SMALL_READ`. CPython's
    ``recv(n)`` allocates ``n`` bytes before it reads; at 512 KiB that is above
    glibc's mmap threshold, so every read of a 38-byte WebSocket message cost an
    mmap, an mremap and an munmap (the last after the message was passed on, so
    on the next process's way when both share a CPU).
    """
    _bulk(transport, size, size)


def bulk_reads(transport: Any, size: int) -> None:
    """:func:`bulk_buffers`' adaptive reads (up to ``size`` while data comes in bulk) with
    Twisted's write buffer threshold kept: for a browser's connection, where a big upload
    is read in fewer, larger reads (fewer trips through the proxy and the tunnel per
    byte), while what may wait for a slow browser stays Twisted's bound."""
    _bulk(transport, size, None)


def _bulk(transport: Any, size: int, send_limit: int | None) -> None:
    """The reads (and with ``send_limit``, else the class's, the write buffer threshold)
    of the TCP transport under ``transport``."""
    tcp = _tcp_under(transport, "SEND_LIMIT")
    if tcp is None:
        return
    if send_limit is None:
        send_limit = type(tcp).SEND_LIMIT
    _unwrap_endpoint_protocol(tcp)
    if getattr(tcp, "_bulk_size", None) == size:
        return  # made by a fitted port with this size
    first = min(size, SMALL_READ)
    if not isinstance(tcp, _AdaptiveReads) and _reads_like_twisted(type(tcp)):
        _fit(tcp, _AdaptiveReads, _bulk_size=size, SEND_LIMIT=send_limit, bufferSize=first)
    if getattr(tcp, "_bulk_size", None) != size:
        # Fitted for another size (no caller does it), or a transport whose class cannot
        # be fitted (its reads stay ``size``): the sizes on this connection alone.
        tcp._bulk_size = size
        tcp.SEND_LIMIT = send_limit
    tcp.bufferSize = first if isinstance(tcp, _AdaptiveReads) else size


def write_through(transport: Any) -> None:
    """Send at once from ``write`` when nothing waits in the TCP transport's buffer.

    Twisted queues every write and sends it when the reactor next finds the socket
    writable: two ``epoll_ctl`` calls and a reactor turn per write, and under TLS a
    further turn (the TLS layer gathers a turn's writes first). With Nagle off
    (:func:`no_delay`) and one write per direction per exchange, sending at once is
    what the queue would do a turn later. A partial send, a full socket (EAGAIN) or
    an error leaves the rest to the queue, which keeps Twisted's backpressure and
    error handling; data already queued keeps its order (new data queues behind it).
    """
    tcp = _tcp_under(transport, "writeSomeData")
    if tcp is None or getattr(tcp, "socket", None) is None or isinstance(tcp, _WriteThrough):
        return
    _fit(tcp, _WriteThrough)


# Transport classes with the options from birth -------------------------------------------


class _AdaptiveReads:
    """Mixin for a Twisted TCP transport class: :func:`bulk_buffers` from birth (the size
    and the first read size are class attributes of the fitted class)."""

    _bulk_size: int
    bufferSize: int  # noqa: N815 - Twisted's name
    SEND_LIMIT: int
    socket: Any
    protocol: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An instance key from birth, so that changing it later adds none (see the module).
        self.bufferSize = type(self).bufferSize

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        """Twisted's ``tcp.Connection.doRead`` and ``_dataReceived`` in one call, the next
        read's size set from this one's (see :func:`bulk_buffers`)."""
        size = self.bufferSize
        try:
            data = self.socket.recv(size)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        n = len(data)
        if n >= size:
            self.bufferSize = self._bulk_size  # filled its buffer: bulk is coming
        elif n < SMALL_READ < size:
            self.bufferSize = SMALL_READ
        self.protocol.dataReceived(data)
        return None


class _WriteThrough:
    """Mixin for a Twisted TCP transport class: :func:`write_through` from birth."""

    connected: bool
    disconnecting: bool
    _writeDisconnecting: bool  # noqa: N815 - Twisted's names
    _tempDataLen: int  # noqa: N815
    offset: int
    dataBuffer: bytes  # noqa: N815
    socket: Any

    def write(self, data: bytes) -> None:
        """Send what the socket takes now if nothing waits before it; the rest (a partial
        send, a full socket, an error the queue's send will report) to Twisted's queue.
        ``connected`` is False from the start of Twisted's connectionLost, before the
        socket goes: a TLS layer flushing its close from there queues, and the queue
        drops it as Twisted does."""
        if (data and self.connected and not self.disconnecting
                and not self._writeDisconnecting and not self._tempDataLen
                and self.offset == len(self.dataBuffer)):
            try:
                sent = self.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[misc]


def _unwrap_endpoint_protocol(tcp: Any) -> None:
    """A connection made by a Twisted client endpoint reads into the endpoint's
    ``_WrappingProtocol``, which, once connected, only passes every call on to the protocol
    it wraps (it directly provides the same half-close and handshake interfaces): give the
    connection that protocol itself, one call less per read."""
    protocol = getattr(tcp, "protocol", None)
    if type(protocol) is _WrappingProtocol and tcp.connected:
        tcp.protocol = protocol._wrappedProtocol


def _reads_like_twisted(cls: type) -> bool:
    """Whether ``cls`` reads with Twisted's own TCP ``doRead`` (which
    :class:`_AdaptiveReads` stands in for; tests/unit/test_tunnel_sockopts.py pins it)."""
    return getattr(cls, "doRead", None) is _TwistedConnection.doRead


_FITTED: dict[tuple[type, type, tuple[tuple[str, Any], ...]], type] = {}


def _fitted(base: type, mixin: type, attributes: dict[str, Any]) -> type:
    key = (base, mixin, tuple(sorted(attributes.items())))
    fitted = _FITTED.get(key)
    if fitted is None:
        fitted = _FITTED[key] = type(f"{mixin.__name__.lstrip('_')}{base.__name__}",
                                     (mixin, base), {"__module__": __name__, **attributes})
    return fitted


def _fit(tcp: Any, mixin: type, **attributes: Any) -> None:
    """Give ``tcp`` a class with ``mixin`` (and ``attributes``) in it, and, for a connection
    a Twisted TCP port accepted, make the port build its next connections with that class
    (Twisted's ports make each accepted connection with their ``transport`` class
    attribute). A connection whose class cannot be changed keeps Twisted's behaviour."""
    port: Any = getattr(tcp, "server", None)
    made = getattr(port, "transport", None)
    if (isinstance(made, type) and issubclass(made, type(tcp))
            and not issubclass(made, mixin)):
        port.transport = _fitted(made, mixin, attributes)
    if not isinstance(tcp, mixin):
        try:
            tcp.__class__ = _fitted(type(tcp), mixin, attributes)
        except TypeError:
            pass
