"""The HTTP proxy in a real gateway process, in front of a real tunnel and tool.

1 GiB each way with the gateway's memory watched, and hostile request heads
(hypothesis) against the live listener with a recording tool behind it.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_tunnel_process import Deployment, rss_kib, wait_connected
from tests.support.studio import Connect, SocketTool

pytestmark = pytest.mark.slow

MiB = 1 << 20
GiB = 1 << 30


class PeakRss:
    """Samples a process's RSS in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.base = rss_kib(pid)
        self.peak = self.base
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, rss_kib(self.pid))

    def growth_mib(self) -> float:
        self._done.set()
        self._thread.join()
        return (self.peak - self.base) / 1024


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def test_one_gib_up_and_down_with_bounded_gateway_memory(deployment: Deployment) -> None:
    created = deployment.create()
    deployment.studio(created)
    wait_connected(deployment.gw, created["id"])
    deployment.login(created)
    host = f"{created['id']}.localhost:{deployment.http_port}"
    cookie = deployment.browser._cookie_header(f"{created['id']}.localhost", "/")
    assert cookie
    headers = {"Host": host, "Cookie": cookie}
    # Warm up (pool, buffers) before the baseline.
    assert deployment.browser.get(deployment.url(created, "/api/info")).status == 200
    gw_pid = deployment.gw.proc.pid

    chunk = bytes(range(256)) * (4 * 1024)  # 1 MiB
    digest = hashlib.sha256()
    for _ in range(GiB // len(chunk)):
        digest.update(chunk)
    watch = PeakRss(gw_pid)
    conn = http.client.HTTPConnection("127.0.0.1", deployment.http_port, timeout=120)
    start = time.monotonic()
    conn.request("POST", "/upload", body=(chunk for _ in range(GiB // len(chunk))),
                 headers={**headers, "Content-Length": str(GiB)})
    reply = conn.getresponse()
    body = reply.read()
    up_s = time.monotonic() - start
    assert reply.status == 200, body[:300]
    import json

    assert json.loads(body) == {"length": GiB, "sha256": digest.hexdigest()}
    start = time.monotonic()
    conn.request("GET", f"/download?size={GiB}", headers=headers)
    reply = conn.getresponse()
    got = 0
    while data := reply.read(4 * MiB):
        got += len(data)
    down_s = time.monotonic() - start
    conn.close()
    growth = watch.growth_mib()
    assert reply.status == 200 and got == GiB
    print(f"1 GiB up {GiB / MiB / up_s:.0f} MiB/s, down {GiB / MiB / down_s:.0f} MiB/s, "
          f"gateway RSS growth {growth:.1f} MiB")
    assert growth < 64, f"gateway RSS grew {growth:.1f} MiB"


# Hostile heads ---------------------------------------------------------------------------


class RecordingTool(SocketTool):
    """A tool that records every byte it receives; answers a GET `ok` (and closes), reads
    anything else to the end without answering."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._lock = threading.Lock()
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        with conn:
            try:
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                    with self._lock:
                        self.received += data
                if not head.startswith(b"GET "):  # read the body until the proxy gives up
                    while data := conn.recv(65536):
                        with self._lock:
                            self.received += data
                elif b"\r\n\r\n" in head:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\nok")
            except OSError:
                pass

    def seen(self, marker: bytes) -> bool:
        with self._lock:
            return marker in self.received


MARK = b"/evil-marker"

# Each makes the head invalid on its own; the rest of the request is ordinary.
DEFECTS = {
    "cl+te": [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    "two cl": [b"Content-Length: 5", b"Content-Length: 6"],
    "cl list": [b"Content-Length: 5, 5"],
    "cl sign": [b"Content-Length: +5"],
    "cl hex": [b"Content-Length: 0x5"],
    "te twice": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    "te gzip": [b"Transfer-Encoding: gzip"],
    "te chunked,x": [b"Transfer-Encoding: chunked, identity"],
    "obs-fold": [b"X-A: one", b" folded"],
    "space before colon": [b"Content-Length : 5"],
    "no colon": [b"Just a line"],
    "nul in value": [b"X-A: a\x00b"],
    "ctl in name": [b"X\x01A: b"],
    "huge header": [b"X-Big: " + b"a" * (70 * 1024)],
    "many headers": [b"X-H%d: v" % i for i in range(150)],
}
HOST_DEFECTS = [b"", b"Host: a b", b"Host: x/y", b"Host: [zz]", b"Host: a:99999"]
LINE_DEFECTS = [b"GET /evil-marker HTTP/1.1 extra", b"GET  /evil-marker HTTP/1.1",
                b"CONNECT evil-marker:443 HTTP/1.1", b"GET http://other.test/evil-marker HTTP/1.1",
                b"GET /evil-marker HTTP/2.0", b"GET /evil-marker HTTP/1.1\rX",
                b"GET /evil-marker?" + b"a" * (9 * 1024) + b" HTTP/1.1",
                b"G\x7fT /evil-marker HTTP/1.1"]


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Deployment, RecordingTool, dict, str]]:
    d = Deployment(tmp_path)
    tool = RecordingTool()
    d.stoppers.append(tool.close)
    try:
        created = d.create()
        client = Connect(tmp_path, created["connect_string"], tool.port, name="connect-rec")
        d.stoppers.append(client.stop)
        wait_connected(d.gw, created["id"])
        d.login(created)
        cookie = d.browser._cookie_header(f"{created['id']}.localhost", "/")
        assert cookie
        yield d, tool, created, cookie
    finally:
        d.stop()


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data`, read until the gateway closes (or a response arrives and then EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


hostile_heads = st.builds(
    lambda method, defect, host_defect, extra, junk, version: (
        defect, method + b" " + MARK + b"?" + junk.hex().encode() + b" " + version + b"\r\n"
        + b"\r\n".join([*([host_defect] if host_defect is not None else []), *extra,
                        *DEFECTS.get(defect, [])]) + b"\r\n\r\n"),
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"]),
    defect=st.sampled_from([*DEFECTS, "host", "line"]),
    host_defect=st.none(),
    extra=st.lists(st.sampled_from([b"Accept: */*", b"X-Forwarded-For: 6.6.6.6",
                                    b"X-Connect-Sub: root", b"Connection: keep-alive",
                                    b"Upgrade: websocket"]), max_size=3),
    junk=st.binary(max_size=8),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
)


def test_hostile_heads_never_reach_the_tool(recorded) -> None:
    d, tool, created, cookie = recorded
    host = f"Host: {created['id']}.localhost:{d.http_port}".encode()
    auth = b"Cookie: " + cookie.encode()

    def good(path: bytes) -> bytes:
        return exchange(d.http_port, b"GET " + path + b" HTTP/1.1\r\n" + host + b"\r\n" + auth
                        + b"\r\nConnection: close\r\n\r\n")

    assert good(b"/ok-before").startswith(b"HTTP/1.1 200") and tool.seen(b"/ok-before")
    # A slow, legitimate connection stays open through the storm.
    slow = socket.create_connection(("127.0.0.1", d.http_port), timeout=30)
    slow.sendall(b"GET /ok-slow HTTP/1.1\r\n" + host + b"\r\n")

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(hostile_heads, st.sampled_from(HOST_DEFECTS), st.sampled_from(LINE_DEFECTS))
    def check(case: tuple[str, bytes], bad_host: bytes, bad_line: bytes) -> None:
        defect, head = case
        line, _, rest = head.partition(b"\r\n")
        if defect == "line":
            line = bad_line
        if defect == "host":  # the Host header itself is the defect
            head = line + b"\r\n" + (bad_host + b"\r\n" if bad_host else b"") + auth + b"\r\n" \
                + rest
        else:
            head = line + b"\r\n" + host + b"\r\n" + auth + b"\r\n" + rest
        answer = exchange(d.http_port, head)
        status = int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0
        assert status in (400, 414, 431, 505), (defect, head[:200], answer[:200])
        assert not tool.seen(MARK), (defect, head[:200])

    check()
    slow.sendall(auth + b"\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := slow.recv(65536):
        answer += chunk
    slow.close()
    assert answer.startswith(b"HTTP/1.1 200") and tool.seen(b"/ok-slow")
    assert good(b"/ok-after").startswith(b"HTTP/1.1 200") and tool.seen(b"/ok-after")
    assert d.gw.proc.poll() is None


def test_bad_chunk_sizes_abort_the_tool_side(recorded) -> None:
    d, tool, created, cookie = recorded
    head = (f"POST /chunks HTTP/1.1\r\nHost: {created['id']}.localhost:{d.http_port}\r\n"
            f"Cookie: {cookie}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    for body in (b"zz\r\nhello\r\n0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n",
                 b"5 5\r\nhello\r\n0\r\n\r\n", b"\r\nhello\r\n0\r\n\r\n",
                 b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"):
        answer = exchange(d.http_port, head + body)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert not tool.seen(b"hello")


# HTTPS ---------------------------------------------------------------------------------------


def write_pair(directory: Path, names: list[str]) -> tuple[str, str]:
    from studios_gateway.wire.tls import make_self_signed

    directory.mkdir()
    cert, key = make_self_signed(names)
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    return str(directory / "cert.pem"), str(directory / "key.pem")


def test_https_through_the_tunnel_and_a_certificate_without_the_wildcard(tmp_path: Path
                                                                          ) -> None:
    import ssl

    from tests.support.gateway import base_env, run_twistd

    narrow = write_pair(tmp_path / "narrow", ["localhost"])
    env = base_env(tmp_path, CONNECT_PROXY_URL="https://localhost",
                   CONNECT_TLS_CERT_FILE=narrow[0], CONNECT_TLS_KEY_FILE=narrow[1])
    refused = run_twistd(tmp_path, env)
    assert refused.returncode == 78  # EX_CONFIG: systemd does not restart it for this
    assert "does not cover *.localhost (studio subdomains)" in refused.stderr, refused.stderr

    # Browsers (and service-identity) refuse *.localhost: a name under it instead.
    wide = write_pair(tmp_path / "wide", ["gw.localhost", "*.gw.localhost", "localhost"])
    d = Deployment(tmp_path, tls=ssl.create_default_context(cafile=wide[0]),
                   host="gw.localhost", CONNECT_TLS_CERT_FILE=wide[0],
                   CONNECT_TLS_KEY_FILE=wide[1])
    try:
        created = d.create()
        d.studio(created, SSL_CERT_FILE=wide[0])  # the client trusts the tunnel's certificate
        wait_connected(d.gw, created["id"])
        assert created["login_link"].startswith("https://")
        d.login(created)
        info = d.browser.get(d.url(created, "/api/info"))
        assert info.status == 200, info.text[:300]
        assert info.json()["headers"]["x-forwarded-proto"] == ["https"]
        assert info.json()["headers"]["x-connect-sub"] == ["alice"]
        # A browser offers ALPN: the handshake ended in an 'internal error' alert.
        import socket

        offering = ssl.create_default_context(cafile=wide[0])
        offering.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", d.http_port), timeout=10) as raw, \
                offering.wrap_socket(raw, server_hostname="gw.localhost") as tls_sock:
            assert tls_sock.selected_alpn_protocol() == "http/1.1"
    finally:
        d.stop()


def test_pages_when_the_studio_is_away_or_its_tool_is_down(deployment: Deployment) -> None:
    created = deployment.create()
    # The login works before the studio connects; the studio then says so, and retries.
    away = deployment.browser.use_login_link(created["login_link"])
    assert away.status == 503 and created["id"] in away.text
    assert "refresh" in away.text  # the page retries by itself
    tool, _ = deployment.studio(created, CONNECT_TOOL_RESTART_WAIT="3s")  # (default 10 s)
    wait_connected(deployment.gw, created["id"])
    assert deployment.browser.get(deployment.url(created, "/api/info")).status == 200
    tool.stop()  # the tunnel stays up; the connect client now resets the tool's streams
    start = time.monotonic()
    down = deployment.browser.get(deployment.url(created, "/api/info?again"))
    assert down.status == 504 and created["id"] in down.text, (down.status, down.text[:300])
    assert time.monotonic() - start >= 2.9  # the client waited its restart window once;
    start = time.monotonic()  # a tool still down is answered at once
    again = deployment.browser.get(deployment.url(created, "/api/info?once-more"))
    assert again.status == 504 and time.monotonic() - start < 1.5, again.status
    unknown = deployment.browser.get(f"http://nosuchstudio.localhost:{deployment.http_port}/")
    assert unknown.status in (302, 410)  # (410: no such studio, for a logged-in person)
