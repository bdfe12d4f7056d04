"""A real `twistd -n studios-gateway` under a stand-in for systemd: the test owns the
NOTIFY_SOCKET datagram socket and the listening sockets it hands over (LISTEN_FDS)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from studios_gateway.config import _quoted
from studios_gateway.config_loading import read_env_file
from studios_gateway.wire.tls import fingerprint_pem, make_self_signed
from tests.support.gateway import GatewayProcess, base_env, twistd
from tests.support.ports import free_port, wait_for_port
from tests.support.studio import Connect, Tool
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

KEY = "systemd-test-key"


class NotifyListener:
    """systemd's side of sd_notify: an abstract AF_UNIX datagram socket."""

    def __init__(self) -> None:
        self.name = f"studios-gateway-it-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.seen: list[dict[str, str]] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    def next(self, timeout: float) -> dict[str, str]:
        """The next message (blocks on the socket, up to `timeout`)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        message = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.seen.append(message)
        return message

    def wait_for(self, key: str, timeout: float = 30.0) -> tuple[dict[str, str], list[dict]]:
        """Read until a message carrying `key`; return it and the messages before it."""
        deadline = time.monotonic() + timeout
        before: list[dict[str, str]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key} within {timeout}s; saw {self.seen}")
            try:
                message = self.next(remaining)
            except TimeoutError:
                raise TimeoutError(f"no {key} within {timeout}s; saw {self.seen}") from None
            if key in message:
                return message, before
            before.append(message)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


def get(port: int, path: str, timeout: float = 15.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return resp.status, resp.read()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def write_certificate(cert: Path, key: Path) -> str:
    """A new certificate for the names the test gateway serves; returns its pin."""
    cert_pem, key_pem = make_self_signed(["gw.test", "*.gw.test", "localhost", "127.0.0.1"])
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    return fingerprint_pem(cert_pem)


def served_pin(port: int) -> str:
    return fingerprint_pem(ssl.get_server_certificate(("127.0.0.1", port), timeout=10).encode())


def test_ready_watchdog_reload_and_stopping(tmp_path: Path, notify: NotifyListener) -> None:
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    first = write_certificate(cert, key)
    env = base_env(tmp_path, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="2000000",
                   CONNECT_TLS_CERT_FILE=str(cert), CONNECT_TLS_KEY_FILE=str(key),
                   CONNECT_PROXY_URL="https://gw.test")
    gw = GatewayProcess(tmp_path, env)
    try:
        gw.wait_ready()  # (it picks a port again if one was taken: read them after this)
        tunnel_port, https_port = int(env["CONNECT_TUNNEL_PORT"]), int(env["CONNECT_HTTP_PORT"])
        ready, before = notify.wait_for("READY")
        # At READY=1 the management port already accepts connections.
        socket.create_connection(("127.0.0.1", gw.management_port), timeout=2).close()
        assert all("READY" not in m for m in before)
        assert any(m.get("STATUS", "").startswith("starting") for m in before), before
        assert ready["STATUS"].startswith("ready: ")
        assert f"management 127.0.0.1:{gw.management_port}" in ready["STATUS"]

        # The watchdog keeps pinging (every second for WATCHDOG_USEC=2s).
        for _ in range(3):
            notify.wait_for("WATCHDOG", timeout=5)

        # SIGHUP after the certificate was renewed in place: RELOADING=1 (with
        # MONOTONIC_USEC), READY=1 again, and new connections get the new certificate.
        assert served_pin(tunnel_port) == first == served_pin(https_port)
        renewed = write_certificate(cert, key)
        gw.proc.send_signal(signal.SIGHUP)
        reloading, _ = notify.wait_for("RELOADING", timeout=10)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again, _ = notify.wait_for("READY", timeout=10)
        assert again["STATUS"].startswith("ready (reloaded): ")
        assert gw.proc.poll() is None
        assert served_pin(tunnel_port) == renewed == served_pin(https_port)

        status, body, _ = gw.request("/shutdown", method="POST")
        assert status == 202, body
        stopping, _ = notify.wait_for("STOPPING", timeout=10)
        assert stopping["STATUS"].startswith("stopping")
        assert gw.wait(timeout=30) == 0
        assert "told systemd (READY=1)" in gw.output()
    finally:
        gw.stop()


def test_watchdog_meant_for_another_process_is_not_served(tmp_path: Path,
                                                          notify: NotifyListener) -> None:
    env = base_env(tmp_path, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="200000",
                   WATCHDOG_PID="1")
    gw = GatewayProcess(tmp_path, env)
    try:
        gw.wait_ready()
        notify.wait_for("READY")
        assert gw.request("/shutdown", method="POST")[0] == 202
        notify.wait_for("STOPPING", timeout=10)
        assert gw.wait(timeout=30) == 0
    finally:
        gw.stop()
    assert not any("WATCHDOG" in m for m in notify.seen)


def test_sigterm_drains_like_shutdown_and_exits_zero(tmp_path: Path,
                                                     notify: NotifyListener) -> None:
    """systemd's stop (SIGTERM): STOPPING=1, stop accepting, the studio's tunnel is sent
    away and closes, then exit 0 (not death by the signal, which is Twisted's default)."""
    env = base_env(tmp_path, NOTIFY_SOCKET=notify.address, CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    gw = GatewayProcess(tmp_path, env)
    tool = client = None
    try:
        gw.wait_ready()
        notify.wait_for("READY")
        status, body, _ = gw.request("/api/sessions", method="POST", body={"owner": "alice"})
        assert status == 201, body
        created = json.loads(body)
        tool = Tool(tmp_path)
        client = Connect(tmp_path, created["connect_string"], tool.port)
        wait_until(lambda: json.loads(gw.request(f"/api/sessions/{created['id']}")[1])
                   .get("connected") is True, "connected")

        gw.proc.send_signal(signal.SIGTERM)
        stopping, _ = notify.wait_for("STOPPING", timeout=10)
        assert stopping["STATUS"].startswith("stopping")
        tunnel_port = int(env["CONNECT_TUNNEL_PORT"])
        wait_until(lambda: refused(tunnel_port), "refusing new tunnels")
        assert gw.wait(timeout=30) == 0
        output = gw.output()
        assert "draining: no new connections" in output and "drained; stopping" in output
        assert "Received SIGTERM" not in output  # Twisted's own handler did not run
    finally:
        for part in (client, tool, gw):
            if part is not None:
                part.stop()


# A stand-in for systemd's exec step: move the passed sockets to descriptors 3, 4, ...,
# set LISTEN_PID to this very process and exec (the pid stays the same).
ACTIVATE = """
import fcntl, os, sys
fds = [int(x) for x in os.environ.pop("PASS_FDS").split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


def listening_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def test_serves_on_sockets_it_was_handed(tmp_path: Path, notify: NotifyListener) -> None:
    management, tunnel = listening_socket(), listening_socket()
    handed_mgmt, handed_tunnel = management.getsockname()[1], tunnel.getsockname()[1]
    env = base_env(tmp_path, NOTIFY_SOCKET=notify.address,
                   LISTEN_FDNAMES="management:tunnel",
                   PASS_FDS=f"{management.fileno()},{tunnel.fileno()}")
    configured_mgmt, configured_tunnel = (int(env["CONNECT_MANAGEMENT_PORT"]),
                                          int(env["CONNECT_TUNNEL_PORT"]))
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, twistd(), "-n", "--pidfile=", "studios-gateway"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        pass_fds=(management.fileno(), tunnel.fileno()))
    management.close()
    tunnel.close()
    try:
        ready, _ = notify.wait_for("READY")
        output = (tmp_path / "gateway.log").read_text()
        assert f"management 127.0.0.1:{handed_mgmt}" in ready["STATUS"], output
        assert f"tunnel 127.0.0.1:{handed_tunnel}" in ready["STATUS"], output
        status, body = get(handed_mgmt, "/live")
        assert status == 200 and json.loads(body)["status"] == "live"
        # The configured ports were never bound: the handed sockets replaced them.
        assert refused(configured_mgmt) and refused(configured_tunnel)
        assert "using the socket passed by the service manager" in output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        log.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (apt package systemd)")
def test_under_systemd_socket_activate(tmp_path: Path, notify: NotifyListener) -> None:
    port = free_port()
    env = base_env(tmp_path, NOTIFY_SOCKET=notify.address)
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=management",
         # It passes only the variables named with -E (and LISTEN_*).
         *[f"-E{k}" for k in env
           if k.startswith(("CONNECT_", "PYTHON")) or k in ("NOTIFY_SOCKET", "PATH", "HOME")],
         twistd(), "-n", "--pidfile=", "studios-gateway"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        # systemd-socket-activate binds, then waits for a first connection before it
        # execs the gateway, as a socket unit does: this connection starts it.
        wait_for_port(port, proc=proc)
        status, body = get(port, "/live", timeout=30)
        assert status == 200 and json.loads(body)["status"] == "live"
        ready, _ = notify.wait_for("READY")
        assert f"management 127.0.0.1:{port}" in ready["STATUS"]
        assert refused(int(env["CONNECT_MANAGEMENT_PORT"]))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        log.close()


# --- the shipped unit's own command line and environment, as systemd would run them ----

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def as_systemd_runs(name: str, root: Path, extra: dict[str, str]) -> tuple[list[str], dict]:
    """The argv and environment systemd would give the unit `name`'s ExecStart, with
    /etc/studios-gateway, /var/lib and the venv's twistd moved under `root` / this venv.
    EnvironmentFile= is read here, at "start", and wins over Environment= (as systemd's)."""
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())

    def moved(text: str) -> str:
        return (text.replace("/opt/studios-gateway/bin/twistd", twistd())
                .replace("/etc/studios-gateway/", f"{root}/etc/")
                .replace("/var/lib/", f"{root}/state/"))

    (exec_start,) = values["ExecStart"]
    env = {k: v for k, v in extra.items()}
    env.update(dict(moved(e).split("=", 1) for e in values.get("Environment", [])))
    for path in values.get("EnvironmentFile", []):
        optional, path = path.startswith("-"), moved(path.lstrip("-"))
        if optional and not Path(path).exists():
            continue
        env.update(read_env_file(path))
    (state,) = values["StateDirectory"]
    env["STATE_DIRECTORY"] = str(root / "state" / state)
    (root / "state" / state).mkdir(parents=True, exist_ok=True)
    return moved(exec_start).split(), env


def test_the_unit_s_reload_re_reads_gateway_env(tmp_path: Path, notify: NotifyListener) -> None:
    """`systemctl reload` under the shipped unit: a new CONNECT_LOG_LEVEL in gateway.env
    applies, another changed setting is named. (Under EnvironmentFile= neither: systemd
    had read the file once, at start.)"""
    settings = {k: v for k, v in base_env(tmp_path).items()
                if k.startswith("CONNECT_") and k != "CONNECT_STORAGE_ROOT"}
    settings.update(CONNECT_LOG_LEVEL="info", CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    (tmp_path / "etc").mkdir()
    env_file = tmp_path / "etc" / "gateway.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    argv, env = as_systemd_runs("studios-gateway.service", tmp_path, {
        "PATH": "/usr/bin:/bin", "PYTHONPATH": str(UNITS.parent),
        "NOTIFY_SOCKET": notify.address})
    log_path = tmp_path / "gateway.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        notify.wait_for("READY")
        # The storage root is the unit's state directory (no file line sets it).
        assert (tmp_path / "state" / "studios-gateway" / "tunnel").is_dir()
        env_file.write_text(env_file.read_text().replace("CONNECT_LOG_LEVEL=info",
                                                         "CONNECT_LOG_LEVEL=debug")
                            + "CONNECT_HTTP_MAX_BODY=1MiB\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", timeout=10)
        again, _ = notify.wait_for("READY", timeout=10)
        assert again["STATUS"].startswith("ready (reloaded): "), again
        wait_until(lambda: "reload: log level debug" in log_path.read_text(), "the new level")
        output = log_path.read_text()
        assert ("reload: CONNECT_HTTP_MAX_BODY changed from (not set) to 1MiB, which takes "
                "a restart; running on with the old value") in output
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


def test_the_unit_without_its_env_file_says_so_and_is_not_restarted(tmp_path: Path) -> None:
    argv, env = as_systemd_runs("studios-gateway.service", tmp_path, {
        "PATH": "/usr/bin:/bin", "PYTHONPATH": str(UNITS.parent)})
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    from studios_gateway.component import EX_CONFIG

    assert proc.returncode == EX_CONFIG, proc.stdout + proc.stderr  # RestartPreventExitStatus
    # (quoted as the product quotes a value: cut at 80 characters, as a long tmp path is)
    shown = _quoted(f"{tmp_path}/etc/gateway.env")
    assert (f"--env-file={shown}: expected a readable env file (No such "
            "file or directory)") in proc.stdout + proc.stderr
