"""A blocking WebSocket client for tests (wsproto over a plain socket to 127.0.0.1)."""

from __future__ import annotations

import contextlib
import socket
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)


class WebSocket:
    """One client connection; `recv_text` waits up to `timeout` for a whole message."""

    def __init__(self, port: int, host: str, path: str, headers: dict[str, str] | None = None,
                 timeout: float = 30.0, rcvbuf: int = 0):
        """`rcvbuf`: a small receive buffer (set before the connect, so the window the
        client offers stays small): a client that stops reading holds the sender back."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.timeout = timeout
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.ws.send(Request(host=host, target=path, extra_headers=extra)))
        self._text: list[str] = []
        self._partial = ""
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events(deadline):
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"WebSocket refused: {event.status_code}")

    def _events(self, deadline: float) -> list[object]:
        if time.monotonic() > deadline:
            raise TimeoutError("no WebSocket event in time")
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("WebSocket connection closed")
        self.ws.receive_data(data)
        out = []
        for event in self.ws.events():
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self._text.append(self._partial)
                    self._partial = ""
            elif isinstance(event, BytesMessage):
                continue
            else:
                out.append(event)
        return out

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def recv_text(self) -> str:
        deadline = time.monotonic() + self.timeout
        while not self._text:
            for event in self._events(deadline):
                if isinstance(event, CloseConnection):
                    raise ConnectionError(f"WebSocket closed: {event.code} {event.reason}")
        return self._text.pop(0)

    def wait_closed(self, timeout: float) -> float:
        """Seconds until the other side closes the WebSocket (a close frame or the end of
        the connection); TimeoutError if it is still open after `timeout`."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while True:
                for event in self._events(start + timeout):
                    if isinstance(event, CloseConnection):
                        return time.monotonic() - start
        except ConnectionError:
            return time.monotonic() - start

    def close_frame(self, timeout: float) -> tuple[int, str] | None:
        """The other side's close frame (its code and reason), or None when the connection
        ended without one (what a browser reports as 1006); TimeoutError while it is
        still open after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                for event in self._events(time.monotonic() + timeout):
                    if isinstance(event, CloseConnection):
                        return event.code, event.reason or ""
        except ConnectionError:
            return None

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data=data)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.sock.close()
