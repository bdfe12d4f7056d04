"""A TCP echo on 127.0.0.1 and the Processes of a bench test: what the tests of bench's
baselines (the stunnel pair, the tunnel's protocol in C) carry bytes through."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Processes


def echo_server() -> socket.socket:
    """An echo on 127.0.0.1, a thread per connection (readiness probes of what sits in
    front of it come through as connections too). Close it to stop accepting."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed by the test
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


@contextmanager
def bench_processes(tmp_path: Path) -> Iterator[Processes]:
    """bench's process list, logs in tmp_path/logs, every process stopped by pid after."""
    (tmp_path / "logs").mkdir()
    p = Processes(tmp_path / "logs")
    try:
        yield p
    finally:
        p.stop_all()
