"""A WebSocket to the demo tool's echo through the gateway, for revocation tests.

Blocking, wsproto over a socket to 127.0.0.1; it answers pings, and it tells
a close by the gateway (a Close frame or the TCP connection ending) apart from
silence.
"""

from __future__ import annotations

import socket
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)


class Closed(Exception):
    """The other side closed the WebSocket."""


class EchoSocket:
    def __init__(self, port: int, host: str, path: str = "/ws", cookie: str | None = None,
                 timeout: float = 10.0):
        self._conn = WSConnection(ConnectionType.CLIENT)
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._timeout = timeout
        self._pending: list[Event] = []
        headers = [(b"Cookie", cookie.encode())] if cookie else []
        self._sock.sendall(self._conn.send(Request(host=host, target=path,
                                                   extra_headers=headers)))
        event = self._next(timeout)
        if isinstance(event, RejectConnection):
            raise Closed(f"refused with HTTP {event.status_code}")
        assert isinstance(event, AcceptConnection), event

    def _next(self, timeout: float) -> Event:
        """The next event that is not a ping; raises Closed when the connection ends."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no WebSocket event in time")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except ConnectionError as e:
                raise Closed(str(e)) from None
            if not data:
                raise Closed("the connection ended")
            self._conn.receive_data(data)
            for event in self._conn.events():
                if isinstance(event, Ping):
                    self._sock.sendall(self._conn.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise Closed(f"close frame {event.code} {event.reason}")
                else:
                    self._pending.append(event)
        return self._pending.pop(0)

    def echo(self, text: str) -> str:
        """Send `text`, return the next whole text message."""
        self._sock.sendall(self._conn.send(TextMessage(data=text)))
        parts = []
        while True:
            event = self._next(self._timeout)
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts)

    def wait_closed(self, timeout: float) -> float:
        """Seconds until the other side closed the WebSocket; fails after `timeout`."""
        start = time.monotonic()
        try:
            while True:
                self._next(max(0.0, timeout - (time.monotonic() - start)))
        except Closed:
            return time.monotonic() - start

    def close(self) -> None:
        self._sock.close()
