"""The tunnel with real processes: twistd gateway, studios-connect, the demo tool, redis-server.

Requests go through the HTTP proxy, so these also exercise routing and login
links; what they prove is the tunnel: data both ways, backpressure, rebinding
after a cut, surviving a Redis restart, refusals with reasons.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import BIN, REPO, GatewayProcess, base_env
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Connect, CuttableRelay, Tool
from tests.support.web import Browser

pytestmark = pytest.mark.slow

KEY = "tunnel-test-key"
MiB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_connected(gw: GatewayProcess, sid: str, connected: bool = True,
                   timeout: float = 20) -> dict:
    """Poll the admin API for the tunnel state we expect (the event), up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = gw.request(f"/api/sessions/{sid}")
        import json

        state = json.loads(body) if status == 200 else {}
        if state.get("connected") == connected:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"session {sid} connected={state.get('connected')} after "
                                 f"{timeout}s; gateway log:\n{gw.output()[-3000:]}")
        time.sleep(0.1)


class Deployment:
    def __init__(self, tmp_path: Path, tls: Any = None, host: str = "localhost", **env: str):
        """`tls`: an ssl.SSLContext trusting the gateway's certificate (then HTTPS, and
        clients dial the tunnel as localhost); `host`: the proxy host (the test
        browser sends every name to 127.0.0.1)."""
        self.tmp_path = tmp_path
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        self.env = base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY,
                            CONNECT_PROXY_URL="http://localhost", **env)
        self.env["CONNECT_PROXY_URL"] = f"{self.scheme}://{host}:{self.env['CONNECT_HTTP_PORT']}"
        if tls is not None:
            tunnel_port = self.env["CONNECT_TUNNEL_PORT"]
            self.env.setdefault("CONNECT_TUNNEL_URL", f"localhost:{tunnel_port}")
        self.gw = GatewayProcess(tmp_path, self.env)
        self.gw.wait_healthy()
        # Once up (a start may have picked the port again):
        self.http_port = int(self.env["CONNECT_HTTP_PORT"])
        self.stoppers = [self.gw.stop]
        self.browser = Browser(tls=tls)

    def create(self, **fields) -> dict:
        status, body, _ = self.gw.request("/api/sessions", method="POST",
                                          body={"owner": "alice", **fields})
        assert status == 201, body
        import json

        return json.loads(body)

    def studio(self, created: dict, connect_string: str | None = None,
               **env: str) -> tuple[Tool, Connect]:
        tool = Tool(self.tmp_path)
        self.stoppers.append(tool.stop)
        client = Connect(self.tmp_path, connect_string or created["connect_string"], tool.port,
                         extra_env=env, name=f"connect-{created['id']}")
        self.stoppers.append(client.stop)
        return tool, client

    def relay(self, created: dict) -> tuple[CuttableRelay, str]:
        """A relay to the tunnel listener the test can cut or silence, and the session's
        connect string through it."""
        relay = CuttableRelay(int(self.env["CONNECT_TUNNEL_PORT"]))
        self.stoppers.append(relay.close)
        via_relay = created["connect_string"].replace(
            f":{self.env['CONNECT_TUNNEL_PORT']}/", f":{relay.port}/")
        return relay, via_relay

    def relayed_studio(self, created: dict, **env: str) -> tuple[CuttableRelay, Tool, Connect]:
        """A studio whose tunnel goes through a relay (see `relay`)."""
        relay, via_relay = self.relay(created)
        tool, client = self.studio(created, connect_string=via_relay, **env)
        return relay, tool, client

    def login(self, created: dict) -> None:
        reply = self.browser.use_login_link(created["login_link"])
        assert reply.status == 200, (reply.status, reply.text[:500])

    def url(self, created: dict, path: str = "/") -> str:
        return f"{self.scheme}://{created['id']}.{self.host}:{self.http_port}{path}"

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            stop()


@pytest.fixture
def deployment(tmp_path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def test_data_flows_both_ways(deployment: Deployment) -> None:
    created = deployment.create()
    deployment.studio(created)
    wait_connected(deployment.gw, created["id"])
    deployment.login(created)
    info = deployment.browser.get(deployment.url(created, "/api/info"))
    assert info.status == 200 and info.json()["path"] == "/api/info"
    assert info.json()["headers"]["x-connect-sub"] == ["alice"]
    down = deployment.browser.get(deployment.url(created, f"/download?size={16 * MiB}"))
    assert down.status == 200 and len(down.body) == 16 * MiB
    payload = bytes(range(256)) * (64 * 1024)
    up = deployment.browser.request(deployment.url(created, "/upload"), method="POST",
                                    body=payload)
    assert up.json() == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_a_stalled_reader_does_not_grow_memory(deployment: Deployment) -> None:
    """1 GiB to a reader that stops: RSS of gateway and client stays flat, then it completes."""
    created = deployment.create()
    _, client = deployment.studio(created)
    wait_connected(deployment.gw, created["id"])
    deployment.login(created)
    size = 1024 * MiB
    cookie = deployment.browser._cookie_header(f"{created['id']}.localhost", "/")
    sock = socket.create_connection(("127.0.0.1", deployment.http_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.sendall(f"GET /download?size={size} HTTP/1.1\r\nHost: {created['id']}.localhost:"
                 f"{deployment.http_port}\r\nCookie: {cookie}\r\n\r\n".encode())
    got = 0
    while got < 32 * MiB:
        got += len(sock.recv(1 << 20))
    base_gw, base_client = rss_kib(deployment.gw.proc.pid), rss_kib(client.proc.pid)
    # Stop reading for a while; the tool keeps trying to send. Sample memory meanwhile.
    peak_gw, peak_client = base_gw, base_client
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        peak_gw = max(peak_gw, rss_kib(deployment.gw.proc.pid))
        peak_client = max(peak_client, rss_kib(client.proc.pid))
        time.sleep(0.2)
    assert (peak_gw - base_gw) < 64 * 1024, f"gateway grew {(peak_gw - base_gw) // 1024} MiB"
    assert (peak_client - base_client) < 64 * 1024, \
        f"client grew {(peak_client - base_client) // 1024} MiB"
    # Resume: everything arrives.
    while got < size:
        chunk = sock.recv(4 * MiB)
        assert chunk, f"connection closed after {got} bytes"
        got += len(chunk)
    sock.close()


def test_cut_connection_rebinds_within_10s(tmp_path) -> None:
    d = Deployment(tmp_path)
    try:
        created = d.create()
        relay, _, _ = d.relayed_studio(created)
        wait_connected(d.gw, created["id"])
        d.login(created)
        assert d.browser.get(d.url(created, "/api/info")).status == 200
        assert relay.cut() >= 1
        start = time.monotonic()
        deadline = start + 10
        while True:
            reply = d.browser.get(d.url(created, "/api/info"))
            if reply.status == 200:
                break
            assert time.monotonic() < deadline, f"still {reply.status} after 10s"
            time.sleep(0.1)
    finally:
        d.stop()


def test_wrong_token_and_incompatible_version_are_refused(deployment: Deployment) -> None:
    created = deployment.create()
    sid, token = created["id"], created["token"]
    bad = created["connect_string"].replace(token, "x" * len(token))
    _, client = deployment.studio(created, connect_string=bad)
    assert client.proc.wait(timeout=30) == 2
    assert "bad_token" in client.output()
    created2 = deployment.create()
    _, old = deployment.studio(created2, CONNECT_CLIENT_VERSION="0.3.1")
    assert old.proc.wait(timeout=30) == 2
    out = old.output()
    assert "incompatible_version" in out and "0.12" in out
    assert sid


@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_redis_restart_needs_no_gateway_restart(tmp_path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    d = None
    try:
        d = Deployment(tmp_path, CONNECT_REDIS_ADDRESS=redis.address)
        created = d.create()
        d.studio(created)
        wait_connected(d.gw, created["id"])
        d.login(created)
        assert d.browser.get(d.url(created, "/api/info")).status == 200
        redis.stop()
        # Cached route keeps working while Redis is down; creating a session cannot.
        assert d.browser.get(d.url(created, "/api/info")).status == 200
        status, body, _ = d.gw.request("/api/sessions", method="POST", body={"owner": "bob"})
        assert status == 503 and b"unavailable" in body
        redis.start()  # same port, empty: the gateway must find its way back by itself
        deadline = time.monotonic() + 20
        while True:
            status, body, _ = d.gw.request("/api/sessions", method="POST", body={"owner": "bob"})
            if status == 201:
                break
            assert time.monotonic() < deadline, f"still {status} {body!r}"
            time.sleep(0.2)
    finally:
        if d is not None:
            d.stop()
        redis.stop()


def test_a_wrong_pin_stops_the_client_with_the_reason(deployment: Deployment) -> None:
    """The gateway's certificate is not the pinned one: said once, plainly, and final."""
    created = deployment.create()
    real = created["connect_string"].split("pin=sha256:")[1][:64]
    wrong = "0" * 64 if real != "0" * 64 else "1" * 64
    bad = created["connect_string"].replace(real, wrong)
    _, client = deployment.studio(created, connect_string=bad,
                                  CONNECT_CLIENT_LOG_LEVEL="error")
    assert client.proc.wait(timeout=30) == 2, client.output()
    out = client.output()
    assert f"not the pinned sha256:{wrong}" in out, out
    assert f"sha256:{real}" in out, out
    assert out.count("not the pinned") <= 3, out  # log line, final state, exit message


def test_a_certificate_for_another_name_is_said_at_every_attempt(tmp_path) -> None:
    """The client trusts the gateway's certificate but it names another host: retried
    (the name may be fixed on either side), each time saying why, even at log level error."""
    from studios_gateway.wire.tls import make_self_signed

    cert_pem, key_pem = make_self_signed(["other.example"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    env = base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY,
                   CONNECT_TLS_CERT_FILE=str(tmp_path / "cert.pem"),
                   CONNECT_TLS_KEY_FILE=str(tmp_path / "key.pem"),
                   TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING="true")
    env["CONNECT_PROXY_URL"] = f"https://other.example:{env['CONNECT_HTTP_PORT']}"
    env["CONNECT_TUNNEL_URL"] = f"127.0.0.1:{env['CONNECT_TUNNEL_PORT']}"
    gw = GatewayProcess(tmp_path, env)
    client = None
    tool = Tool(tmp_path)
    try:
        gw.wait_healthy()
        status, body, _ = gw.request("/api/sessions", method="POST", body={"owner": "alice"})
        assert status == 201, body
        import json

        created = json.loads(body)
        assert "pin=" not in created["connect_string"]
        client = Connect(tmp_path, created["connect_string"], tool.port,
                         extra_env={"CONNECT_CLIENT_LOG_LEVEL": "error",
                                    "SSL_CERT_FILE": str(tmp_path / "cert.pem")})
        deadline = time.monotonic() + 30
        while client.output().count("cannot verify gateway") < 2:
            assert client.proc.poll() is None, client.output()
            assert time.monotonic() < deadline, client.output()
            time.sleep(0.2)
        assert "not for this host name" in client.output(), client.output()
    finally:
        if client is not None:
            client.stop()
        tool.stop()
        gw.stop()


def test_a_login_link_for_an_allowed_user_from_the_cli(deployment: Deployment) -> None:
    """`studios-gateway sessions link ID USER` mints bob's link; the studio keeps its token."""
    created = deployment.create(allowed_users=["bob"])
    deployment.studio(created)
    wait_connected(deployment.gw, created["id"])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "CONNECT_MANAGEMENT_PORT": str(deployment.gw.management_port),
           "CONNECT_MANAGEMENT_AUTH_KEY": KEY}

    def link(user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "studios-gateway"), "sessions", "link", created["id"],
                               user], env=env, capture_output=True, text=True, timeout=60)

    minted = link("bob")
    assert minted.returncode == 0, minted.stderr
    reply = deployment.browser.use_login_link(minted.stdout.strip())
    assert reply.status == 200, (reply.status, reply.text[:500])
    info = deployment.browser.get(deployment.url(created, "/api/info"))
    assert info.json()["headers"]["x-connect-sub"] == ["bob"]
    refused = link("mallory")
    assert refused.returncode == 1 and "403" in refused.stderr and "mallory" in refused.stderr
    wait_connected(deployment.gw, created["id"])  # the connect token still binds
