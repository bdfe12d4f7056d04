"""Socket options for latency-sensitive connections (tunnels, tool connections)."""

from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """Turn Nagle off on the TCP socket under ``transport`` (through TLS wrappers).

    A tunnel carries many small request/answer exchanges; with Nagle on, each
    can wait for a delayed ACK (~40 ms) at every hop.
    """
    seen = 0
    while transport is not None and seen < 4:
        setter = getattr(type(transport), "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(transport, True)
            except OSError:
                pass  # not a TCP socket (a test transport, a UNIX socket): nothing to do
            return
        transport = getattr(transport, "transport", None)
        seen += 1
