"""A studio for integration tests: the demo tool and `studios-connect`, as real processes."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.gateway import BIN, REPO
from tests.support.ports import IN_USE, START_ATTEMPTS, free_port
from tests.support.waiting import wait_until


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Tool:
    """The demo tool (HTTP + WebSocket) on a free port: started again on a new one if
    another process took the port before the tool bound it (`retries` says so)."""

    def __init__(self, tmp_path: Path, prefix: str = "/"):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        #: One line for each start that found its port taken.
        self.retries: list[str] = []
        while True:
            self.port = free_port()
            self.log_path = tmp_path / f"tool-{self.port}.log"
            self.log = open(self.log_path, "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "studios_gateway.demo.tool", "--port", str(self.port),
                 "--prefix", prefix], env=env, stdout=self.log, stderr=subprocess.STDOUT)
            # Its line, not a connect: another process's listener on the port accepts too.
            wait_until(lambda: self.proc.poll() is not None or self._listening(),
                       f"the demo tool listening on 127.0.0.1:{self.port} ({self.log_path})",
                       timeout=20)
            if self.proc.poll() is None:
                return
            self.log.close()
            said = self.log_path.read_text(errors="replace").strip()
            start = len(self.retries) + 1
            if not IN_USE.search(said) or start >= START_ATTEMPTS:
                earlier = "".join(f"\n  {line}" for line in self.retries)
                raise RuntimeError(f"the demo tool exited with {self.proc.returncode} (start "
                                   f"{start} of {START_ATTEMPTS}): {said[-2000:]}{earlier}")
            self.retries.append(f"start {start} on port {self.port}: the port was in use")

    def _listening(self) -> bool:
        self.log.flush()
        return (f"demo tool listening on 127.0.0.1:{self.port}/"
                in self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class SocketTool:
    """A tool written with plain sockets, one thread per connection: subclasses say
    what `serve(conn)` does; the listener is on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class Connect:
    """`studios-connect` for one session; its output is kept for assertions."""

    def __init__(self, tmp_path: Path, connect_string: str, tool_port: int,
                 extra_env: dict[str, str] | None = None, args: list[str] | None = None,
                 name: str = "connect", cwd: Path | None = None):
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
        env.update({"PYTHONPATH": str(REPO), "CONNECT_STRING": connect_string,
                    "CONNECT_TOOL_PORT": str(tool_port), "CONNECT_CLIENT_LOG_LEVEL": "debug",
                    "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        self.proc = subprocess.Popen([str(BIN / "studios-connect"), *(args or [])], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class CuttableRelay:
    """A TCP relay between the client and the gateway whose connections a test can cut.

    `cut()` resets every relayed connection (SO_LINGER 0), as a network failure
    would, without touching either process. `silence()` makes the connections
    relayed so far drop everything, both ways, without closing them (a laptop
    asleep, a NAT entry expired); connections made afterwards relay normally.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._silenced: set[int] = set()  # ids of sockets whose data is dropped
        #: bytes relayed so far: "up" towards the target (the gateway), "down" back
        self.forwarded = {"up": 0, "down": 0}
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b, way in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(a, b, way), daemon=True).start()

    def silence(self) -> int:
        with self._lock:
            self._silenced.update(id(s) for s in self._socks)
            return len(self._socks) // 2

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(1 << 16):
                if id(src) not in self._silenced:
                    dst.sendall(data)
                    self.forwarded[way] += len(data)
        except OSError:
            pass
        if id(src) in self._silenced:
            return  # a silent path does not pass on a close either
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        with self._lock:
            socks, self._socks = self._socks, []
            self._silenced.clear()
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # close() alone does not end a recv() blocked in a pump thread (the socket
                # lives on until it returns): shutdown() wakes it, then close() resets.
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(socks) // 2

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.cut()
