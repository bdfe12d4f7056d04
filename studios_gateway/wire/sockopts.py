"""Socket options for tunnels and tool connections: Nagle off, bulk-sized buffers."""

from __future__ import annotations

from typing import Any

# Read size and write-buffer threshold (see bulk_buffers) for the tunnel's TCP
# connection and for the connect client's connections to the tool.
TUNNEL_BUFFER = 512 * 1024
TOOL_BUFFER = 256 * 1024


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
    """
    tcp = _tcp_under(transport, "SEND_LIMIT")
    if tcp is not None:
        tcp.bufferSize = size
        tcp.SEND_LIMIT = size
