"""Plain HTTP sent to a real gateway's HTTPS port gets an HTTP answer (wire/plain_http.py).

Someone types ``http://gw.localhost:PORT/`` where PORT serves HTTPS: the gateway used to
close the connection without a byte (a browser shows "connection reset" or "empty
response"). It now answers a redirect to https:// for its own hosts and 400 otherwise,
closes cleanly, counts it as ``outcome="plain_http"``, and HTTPS on the same port works
as before.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from pathlib import Path

import pytest

from tests.integration.test_http_process import write_pair
from tests.support.chromium import Chromium, chromium_path
from tests.support.gateway import GatewayProcess, base_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def read_to_end(sock: socket.socket) -> bytes:
    """All the gateway sends until it closes; a reset fails the test (the old behaviour
    for a request that was not read)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def plain_http_count(gw: GatewayProcess) -> float:
    status, body, _ = gw.request("/metrics")
    assert status == 200
    m = re.search(rb'studios_gateway_tls_handshakes_total\{listener="http",'
                  rb'outcome="plain_http"\} ([0-9.e+]+)', body)
    return float(m.group(1)) if m else 0.0


def test_plain_http_to_the_https_port_is_answered_and_https_still_works(tmp_path: Path
                                                                        ) -> None:
    cert, key = write_pair(tmp_path / "https", ["gw.localhost", "*.gw.localhost"])
    env = base_env(tmp_path, CONNECT_TLS_CERT_FILE=cert, CONNECT_TLS_KEY_FILE=key)
    env["CONNECT_PROXY_URL"] = f"https://gw.localhost:{env['CONNECT_HTTP_PORT']}"
    gw = GatewayProcess(tmp_path, env)
    try:
        gw.wait_healthy()
        port = int(env["CONNECT_HTTP_PORT"])  # (once up: a start may have picked it again)
        # What a browser sends for http://gw.localhost:PORT/...: a redirect to https://.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET /some/page?x=1 HTTP/1.1\r\nHost: gw.localhost:{port}\r\n"
                         "User-Agent: test\r\nAccept: */*\r\n\r\n".encode())
            answer = read_to_end(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 301 Moved Permanently", answer
        location = f"https://gw.localhost:{port}/some/page?x=1".encode()
        assert b"Location: " + location in lines and b"Connection: close" in lines
        assert location in body

        # A host it does not serve, through Python's own HTTP client, sent in two parts.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.putrequest("GET", "/", skip_host=True)
        conn.putheader("Host", "elsewhere.example.com")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 400
        assert response.getheader("Connection") == "close"
        assert b"https://" in response.read()
        conn.close()

        # HTTPS on the same port, after them: unaffected.
        ctx = ssl.create_default_context(cafile=cert)
        secure = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
        secure.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                      server_hostname="gw.localhost")
        secure.request("GET", "/", headers={"Host": "gw.localhost"})
        page = secure.getresponse()
        assert page.status < 500 and page.read() is not None
        secure.close()

        # The tunnel port is for connect clients only: closed without a word, as before.
        with socket.create_connection(("127.0.0.1", int(env["CONNECT_TUNNEL_PORT"])),
                                      timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: gw.localhost\r\n\r\n")
            try:
                said = sock.recv(65536)
            except ConnectionResetError:
                said = b""
            assert not said.startswith(b"HTTP/"), said

        wait_until(lambda: plain_http_count(gw) == 2, timeout=10,
                   what="the two plain requests were not counted as plain_http")
        log = gw.output()
        assert "the http listener: a plain-HTTP request from 127.0.0.1 was answered 301" in log
        assert "was answered 400" in log
        _, metrics, _ = gw.request("/metrics")
        assert b'listener="tunnel",outcome="plain_http"' not in metrics
    finally:
        gw.stop()


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
def test_a_browser_given_an_http_address_of_the_https_port_lands_on_https(tmp_path: Path
                                                                          ) -> None:
    """Chromium got no answer here and showed its own error page (it never reached https).
    Without the redirect this test fails waiting for the https:// address."""
    from tests.integration.test_https_chromium import spki_hash

    cert, key = write_pair(tmp_path / "https", ["gw.test", "*.gw.test"])
    env = base_env(tmp_path, CONNECT_TLS_CERT_FILE=cert, CONNECT_TLS_KEY_FILE=key)
    env["CONNECT_PROXY_URL"] = f"https://gw.test:{env['CONNECT_HTTP_PORT']}"
    gw = GatewayProcess(tmp_path, env)
    browser: Chromium | None = None
    try:
        gw.wait_healthy()
        port = int(env["CONNECT_HTTP_PORT"])  # (once up: a start may have picked it again)
        browser = Chromium(tmp_path, flags=[
            "--host-resolver-rules=MAP *.test 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={spki_hash(Path(cert).read_bytes())}"])
        browser.call("Page.navigate", url=f"http://gw.test:{port}/_connect/x?y=1")
        browser.wait_for(f"location.href == 'https://gw.test:{port}/_connect/x?y=1'")
        browser.call("Page.navigate", url=f"http://elsewhere.test:{port}/")
        browser.wait_for("!!document.body && document.body.innerText.includes("
                         "'Open the same address with https://')")
    finally:
        if browser is not None:
            browser.stop()
        gw.stop()
