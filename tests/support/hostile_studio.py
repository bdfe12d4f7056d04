"""A hostile (or broken) studio: binds to a real gateway's tunnel port as studios-connect
would, then speaks yamux frames made by hand, so a test can send what a real client never
does (floods, bad frames, hostile answers) and read what the gateway sends back."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from studios_gateway.versions import CONNECT_PROTOCOL_VERSION
from studios_gateway.wire import frames
from studios_gateway.wire.bind import BindRequest
from studios_gateway.wire.frames import Frame, FrameDecoder


class HostileStudio:
    """One tunnel to the gateway named by ``connect_string``, bound as its session."""

    def __init__(self, connect_string: str, tool: str = "jupyterlab",
                 rcvbuf: int | None = None):
        parts = urlsplit(connect_string)
        assert parts.hostname and parts.port and parts.username and parts.password
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window the gateway sees is small
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", parts.port))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a hostile studio need not check the pin
        self.sock = context.wrap_socket(raw, server_hostname=parts.hostname)
        self.sock.sendall(BindRequest(unquote(parts.username), unquote(parts.password),
                                      str(CONNECT_PROTOCOL_VERSION), tool, 8888).encode())
        line = b""
        while not line.endswith(b"\n"):
            got = self.sock.recv(1)
            assert got, "the gateway closed before answering the bind"
            line += got
        self.reply = json.loads(line)
        assert self.reply["ok"], self.reply
        self.decoder = FrameDecoder(frames.MAX_U32)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_unless(self, data: bytes, stop: Callable[[], bool], timeout: float = 10.0,
                    poll: float = 0.5) -> bool:
        """Send `data`, unless the gateway stops taking it and `stop()` holds (checked
        each `poll` seconds it takes nothing): False then, True once all is sent.
        TimeoutError when it takes nothing for `timeout` seconds and `stop()` never held.
        (A write that timed out is retried with the same bytes, as TLS requires.)"""
        self.sock.settimeout(poll)
        view, sent, blocked = memoryview(data), 0, 0.0
        while sent < len(view):
            try:
                sent += self.sock.send(view[sent:])
            except TimeoutError:
                if stop():
                    return False
                blocked += poll
                if blocked >= timeout:
                    raise
        return True

    def frames(self, timeout: float = 10.0) -> list[Frame]:
        """The frames the next read completes ([] once the gateway closed)."""
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                return []
            got = self.decoder.feed(data)
            if got:
                return got

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def serve(self, answer: Callable[[bytes], bytes]) -> threading.Thread:
        """Answer each stream the gateway opens, in a thread: once a request head is in
        (after the stream kind, on a new stream), `answer(those bytes)` is sent back as
        one Data frame, whatever its size (studios-connect would cut it in 64 KiB
        frames). Pings are answered. Ends when the gateway closes the tunnel."""
        def run() -> None:
            streams: dict[int, bytes] = {}
            try:
                while got := self.frames(timeout=60):
                    for f in got:
                        if f.type == frames.PING and f.flags & frames.SYN:
                            self.send(frames.encode_ping(f.length, ack=True))
                        elif f.type == frames.DATA and f.stream_id in streams:
                            streams[f.stream_id] += f.data
                            if b"\r\n\r\n" in streams[f.stream_id]:  # (kept alive:
                                # the next request on the stream is read the same way)
                                request, streams[f.stream_id] = streams[f.stream_id], b""
                                self.send(frames.encode_data(f.stream_id, answer(request)))
                        if f.flags & frames.SYN:
                            streams[f.stream_id] = f.data
            except OSError:
                pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread
