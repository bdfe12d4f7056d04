"""Socket options for tunnels and tool connections: Nagle off, bulk-sized buffers.

:func:`bulk_buffers` and :func:`write_through` change one TCP transport. On a
listener's connection they also give its port a transport class that does the same
from birth (:func:`_fit_port`), so the port's later connections need nothing set on
them: a single attribute added to a Twisted TCP transport after it was made costs
CPython an attribute dict of its own (~830 bytes), and the per-connection closures
~500 more: ~1.3-1.6 KiB per idle tunnel (docs/decisions/tunnel-framing.md "Memory
per idle tunnel").
"""

from __future__ import annotations

from typing import Any

# Read size and write-buffer threshold (see bulk_buffers) for the tunnel's TCP
# connection and for the connect client's connections to the tool.
TUNNEL_BUFFER = 512 * 1024
TOOL_BUFFER = 256 * 1024
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
    tcp = _tcp_under(transport, "SEND_LIMIT")
    if tcp is None or getattr(tcp, "_bulk_size", None) == size:
        return  # nothing to do, or made by a fitted port with this size
    if isinstance(tcp, _AdaptiveReads):  # fitted for another size (not one the code uses)
        tcp._bulk_size = size
        tcp.SEND_LIMIT = size
        tcp.bufferSize = min(size, SMALL_READ)
        return
    _fit_port(tcp, _AdaptiveReads, _bulk_size=size, SEND_LIMIT=size,
              bufferSize=min(size, SMALL_READ))
    tcp.SEND_LIMIT = size
    tcp.bufferSize = min(size, SMALL_READ)
    received = getattr(tcp, "_dataReceived", None)  # Twisted: doRead hands each read here
    if size <= SMALL_READ or received is None or getattr(tcp, "_adaptive_reads", False):
        return

    def read_size_follows(data: bytes | None) -> Any:
        _follow_reads(tcp, data, size)
        return received(data)

    tcp._dataReceived = read_size_follows
    tcp._adaptive_reads = True


def _follow_reads(tcp: Any, data: bytes | None, size: int) -> None:
    """Bulk-sized reads after a read that filled its buffer, small after a small one."""
    if data:
        n = len(data)
        if n >= tcp.bufferSize:
            tcp.bufferSize = size
        elif n < SMALL_READ:
            tcp.bufferSize = SMALL_READ


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
    sock = getattr(tcp, "socket", None)
    if tcp is None or sock is None or getattr(tcp, "_write_through", False):
        return
    _fit_port(tcp, _WriteThrough, _write_through=True)
    queue = tcp.write

    def write(data: bytes) -> None:
        rest = _send_now(tcp, sock, data)
        if rest is not None:
            queue(rest)

    tcp.write = write
    tcp._write_through = True


def _send_now(tcp: Any, sock: Any, data: bytes) -> bytes | None:
    """Send what the socket takes now if nothing waits before it; what is left for the
    transport's queue (None: all sent)."""
    if (data and tcp.connected and not tcp.disconnecting
            and not tcp._writeDisconnecting and not tcp._tempDataLen
            and tcp.offset == len(tcp.dataBuffer)):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # a full socket (or an error the queue's send will report)
        if sent == len(data):
            return None
        data = data[sent:]
    return data


# Transport classes for a listener's port -----------------------------------------------


class _AdaptiveReads:
    """Mixin for a Twisted TCP transport class: :func:`bulk_buffers` from birth (the size
    and the first read size are class attributes of the fitted class)."""

    _bulk_size: int
    bufferSize: int  # noqa: N815 - Twisted's name
    SEND_LIMIT: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An instance key from birth, so that changing it later adds none (see the module).
        self.bufferSize = type(self).bufferSize

    def _dataReceived(self, data: bytes | None) -> Any:
        if self._bulk_size > SMALL_READ:
            _follow_reads(self, data, self._bulk_size)
        return super()._dataReceived(data)  # type: ignore[misc]


class _WriteThrough:
    """Mixin for a Twisted TCP transport class: :func:`write_through` from birth."""

    _write_through = True
    socket: Any

    def write(self, data: bytes) -> None:
        # No socket once Twisted's connectionLost ran (a TLS layer flushing its close
        # from there): _send_now sends nothing then, the queue drops it as Twisted does.
        rest = _send_now(self, getattr(self, "socket", None), data)
        if rest is not None:
            super().write(rest)  # type: ignore[misc]


_FITTED: dict[tuple[type, type, tuple[tuple[str, Any], ...]], type] = {}


def _fit_port(tcp: Any, mixin: type, **attributes: Any) -> None:
    """Make the listening port that accepted ``tcp`` build its next connections with
    ``mixin`` (and ``attributes``) in their class. Only Twisted's TCP ports, whose
    ``transport`` class attribute is what they make each accepted connection with."""
    port: Any = getattr(tcp, "server", None)
    made = getattr(port, "transport", None)
    if (not isinstance(made, type) or not issubclass(made, type(tcp))
            or issubclass(made, mixin)):
        return
    key = (made, mixin, tuple(sorted(attributes.items())))
    fitted = _FITTED.get(key)
    if fitted is None:
        fitted = _FITTED[key] = type(f"{mixin.__name__.lstrip('_')}{made.__name__}",
                                     (mixin, made), {"__module__": __name__, **attributes})
    port.transport = fitted
