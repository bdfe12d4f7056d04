"""The access log and the traffic metrics of a real gateway: twistd, studios-connect, the
demo tool, OpenSSH.

A proxied request carrying a token in its query string, a cookie and an Authorization
header; a WebSocket; an SSH session: each leaves one access-log line with its fields
(and none of the secrets), /metrics counters move with the traffic, and the admin API
shows the session's figures. The gateway runs at CONNECT_LOG_LEVEL=warn: the access
log and the admin API's audit lines (sessions, users' SSH keys) are written whatever the
level.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.websocket import WebSocket

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]

ACCESS = "[studios_gateway.access#info] "
SECRET_QUERY = "tok-in-query-5f2a"
SECRET_HEADER = "tok-in-header-9c1e"


def metrics(d: Deployment) -> dict[str, float]:
    status, body, _ = d.gw.request("/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            out[name] = float(number)
    return out


def access_lines(d: Deployment, count: int, timeout: float = 10, until: str = "") -> list[str]:
    """The access lines so far, once there are `count` (and one containing `until`): the
    gateway writes them a batch at a time, a fraction of a second after the requests."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line.split(ACCESS, 1)[1] for line in d.gw.output().splitlines()
                 if ACCESS in line]
        if (len(lines) >= count and (not until or any(until in x for x in lines))
                or time.monotonic() > deadline):
            return lines
        time.sleep(0.1)


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


@dataclass
class SSHStudio:
    """A logged-in session with SSH on, its studio connected, alice's key registered."""

    created: dict
    key: Path
    ssh_port: int

    @property
    def sid(self) -> str:
        return self.created["id"]

    def ssh(self, *command: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                "-o", "IdentitiesOnly=yes", "-i", str(self.key), "-p", str(self.ssh_port),
                f"alice@{self.sid}@127.0.0.1", *command]


def ssh_studio(d: Deployment, work: Path) -> SSHStudio:
    created = d.create(ssh_enabled=True)
    key = work / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    status, body, _ = d.gw.request("/api/users/alice/keys", method="PUT",
                                   body={"keys": [key.with_suffix(".pub").read_text()]})
    assert status == 200, body
    d.studio(created)
    wait_connected(d.gw, created["id"])
    d.login(created)
    return SSHStudio(created, key, int(d.env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1]))


def test_access_log_and_metrics_of_http_websocket_and_ssh(tmp_path: Path) -> None:
    d = Deployment(tmp_path, CONNECT_SSH_ENABLED="true", CONNECT_LOG_LEVEL="warn",
                   CONNECT_NODE_ID="gw-test")
    try:
        studio = ssh_studio(d, tmp_path)
        created, sid = studio.created, studio.sid
        before = metrics(d)
        # The login's requests, the last of them the studio's page.
        skip = len(access_lines(d, 1, until='"GET /" 200 '))

        # A request with a token in the query, a cookie and an Authorization header.
        host = f"{sid}.localhost:{d.http_port}"
        cookie = d.browser._cookie_header(f"{sid}.localhost", "/")
        assert cookie
        reply = d.browser.get(d.url(created, f"/api/info?token={SECRET_QUERY}"),
                              headers={"Authorization": f"Bearer {SECRET_HEADER}"})
        assert reply.status == 200
        # A WebSocket: three echoes.
        ws = WebSocket(d.http_port, host, f"/ws?token={SECRET_QUERY}", {"Cookie": cookie})
        for i in range(3):
            ws.send_text(f"hello {i}")
            assert ws.recv_text() == f"hello {i}"
        ws.close()
        # An SSH session moving 200 000 bytes to the user, then a refused one.
        r = subprocess.run(studio.ssh("head -c 200000 /dev/zero"), capture_output=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and len(r.stdout) == 200_000, r.stderr
        refused = [*studio.ssh()[:-1], "alice@nosuchsession@127.0.0.1", "true"]
        r = subprocess.run(refused, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 255

        lines = access_lines(d, skip + 4)[skip:]
        assert len(lines) == 4, lines
        # The admin API's audit line, at info, is written at warn too (as the access log).
        assert f"admin API: session {sid} created for alice" in d.gw.output()
        assert "admin API: SSH keys of alice replaced (1 key) by" in d.gw.output()

        def line(kind: str, session: str) -> str:
            [found] = [x for x in lines
                       if fields(x)["kind"] == kind and fields(x)["session"] == session]
            return found

        http, websocket = line("http", sid), line("websocket", sid)
        ssh_ok, ssh_refused = line("ssh", sid), line("ssh", "nosuchsession")
        # 127.0.0.1 - alice [03/Dec/2026:20:30:00 +0000] "GET /api/info" 200 ... key=value
        assert re.match(r'127\.0\.0\.1 - alice \[\d\d/\w{3}/\d{4}:[\d:]{8} \+0000\] '
                        r'"GET /api/info" 200 \d+ ', http), http
        f = fields(http)
        assert (f["kind"], f["session"], f["tool"], f["node"]) == ("http", sid, "generic",
                                                                   "gw-test")
        assert int(f["in"]) > 100 and int(f["out"]) > 100 and float(f["duration"]) < 10
        assert '"GET /ws" 101 ' in websocket and fields(websocket)["kind"] == "websocket"
        assert int(fields(websocket)["out"]) > 3 * len("hello 0")
        assert ssh_ok.startswith("127.0.0.1 - alice [") and '"SSH -" - ' in ssh_ok
        f = fields(ssh_ok)
        assert f["kind"] == "ssh" and f["session"] == sid and f["tool"] == "generic"
        assert "reason" not in f, ssh_ok  # the user's ssh ended it, not the gateway
        assert int(f["out"]) >= 200_000
        assert ssh_refused.startswith("127.0.0.1 - alice [")
        assert fields(ssh_refused)["session"] == "nosuchsession"
        assert 'reason="there is no session nosuchsession' in ssh_refused, ssh_refused
        log = d.gw.output()
        for secret in (SECRET_QUERY, SECRET_HEADER, cookie.split("=", 1)[1][:20]):
            assert secret not in log

        after = metrics(d)

        def moved(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        assert moved('studios_gateway_http_requests_total{code="2xx",tool="generic"}') >= 1
        assert moved('studios_gateway_http_request_duration_seconds_count{tool="generic"}') >= 1
        assert moved('studios_gateway_transfer_bytes_total{direction="out",kind="ssh"}') \
            >= 200_000
        assert moved('studios_gateway_transfer_bytes_total{direction="in",kind="websocket"}') > 0
        assert moved("studios_gateway_websockets_total") == 1
        assert after["studios_gateway_websockets_open"] == 0
        assert moved('studios_gateway_ssh_sessions_total{outcome="ok"}') == 1
        assert moved('studios_gateway_ssh_sessions_total{outcome="refused"}') == 1
        assert moved("studios_gateway_ssh_channels_total") >= 1
        assert after['studios_gateway_logins_total{kind="link",outcome="success"}'] == 1
        assert after['studios_gateway_logins_total{kind="ssh",outcome="success"}'] == 1
        assert after['studios_gateway_tunnel_binds_total{outcome="ok"}'] == 1

        status, body, _ = d.gw.request(f"/api/sessions/{sid}")
        usage = json.loads(body)["usage"]
        assert usage["node"] == "gw-test" and usage["requests"] >= 2
        assert usage["websockets"] == 1 and usage["ssh_sessions"] == 1
        assert usage["bytes_out"] >= 200_000 and usage["open_connections"] == 0
    finally:
        d.stop()


def test_a_session_bandwidth_cap_paces_http_and_ssh(tmp_path: Path) -> None:
    """CONNECT_QUOTA_SESSION_BANDWIDTH=2MiB: 8 MiB over HTTP and 6 MiB over SSH each take
    at least the time the cap allows: all but the burst (a quarter second's worth) and the
    last read (a pause begins after the read that overdrew) at 2 MiB/s."""
    d = Deployment(tmp_path, CONNECT_SSH_ENABLED="true", CONNECT_QUOTA_SESSION_BANDWIDTH="2MiB")
    try:
        studio = ssh_studio(d, tmp_path)
        created = studio.created
        start = time.monotonic()
        got = d.browser.get(d.url(created, f"/download?size={8 << 20}"))
        http_s = time.monotonic() - start
        assert got.status == 200 and len(got.body) == 8 << 20
        start = time.monotonic()
        r = subprocess.run(studio.ssh(f"head -c {6 << 20} /dev/zero"), capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        ssh_s = time.monotonic() - start
        assert r.returncode == 0 and len(r.stdout) == 6 << 20, r.stderr
        print(f"8 MiB over HTTP in {http_s:.2f}s, 6 MiB over SSH in {ssh_s:.2f}s at 2 MiB/s")
        assert 3.4 <= http_s < 30 and 2.4 <= ssh_s < 30
    finally:
        d.stop()
