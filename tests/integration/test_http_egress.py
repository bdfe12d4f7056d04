"""Tunnels through HTTP-only egress: the studio's only way out is Debian's tinyproxy,
which allows CONNECT to the gateway's HTTP port and nothing else.

The client is given the raw tunnel port first and the WebSocket carrier second
(CONNECT_GATEWAY_URL), with HTTPS_PROXY: the proxy refuses CONNECT to the tunnel port,
the client falls back to ws://.../_connect/tunnel through the proxy, and binds (the
same bind, yamux and certificate pin, inside the WebSocket). Then the demo tool's HTTP,
a download and its WebSocket echo, and a JupyterLab kernel that answers 6*7.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.test_jupyterlab import kernel_answers_42
from tests.integration.test_tunnel_process import Deployment, wait_connected
from tests.support.tinyproxy import Tinyproxy, TlsFront, stunnel_available, tinyproxy_available
from tests.support.tool_studio import tool_studio
from tests.support.waiting import wait_until
from tests.support.websocket import WebSocket

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not tinyproxy_available(), reason="tinyproxy is not installed"),
]


def egress_env(gateway_env: dict[str, str], created: dict[str, Any], proxy: Tinyproxy
               ) -> dict[str, str]:
    pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
    tunnel, http = gateway_env["CONNECT_TUNNEL_PORT"], gateway_env["CONNECT_HTTP_PORT"]
    return {"CONNECT_GATEWAY_URL": f"tls://localhost:{tunnel}?pin={pin},"
                                   f"ws://localhost:{http}/_connect/tunnel?pin={pin}",
            "HTTPS_PROXY": proxy.url, "NO_PROXY": ""}


def test_a_studio_binds_through_a_forward_proxy_over_a_websocket(tmp_path: Path) -> None:
    d = Deployment(tmp_path)
    try:
        through_the_proxy(d, tmp_path)
    finally:
        d.stop()


def through_the_proxy(d: Deployment, tmp_path: Path) -> None:
    proxy = Tinyproxy(tmp_path / "tinyproxy", connect_ports=[d.http_port])
    d.stoppers.append(proxy.stop)
    created = d.create()
    _, client = d.studio(created, **egress_env(d.env, created, proxy))
    wait_connected(d.gw, created["id"], timeout=40)
    d.login(created)
    info = d.browser.get(d.url(created, "/api/info"))
    assert info.status == 200 and info.json()["path"] == "/api/info"
    down = d.browser.get(d.url(created, f"/download?size={4 << 20}"))
    assert down.status == 200 and len(down.body) == 4 << 20
    cookie = d.browser._cookie_header(f"{created['id']}.localhost", "/") or ""
    ws = WebSocket(d.http_port, f"{created['id']}.localhost:{d.http_port}", "/ws",
                   {"Cookie": cookie})
    ws.send_text("through the proxy")
    assert ws.recv_text() == "through the proxy"
    ws.close()
    out = client.output()
    assert "bound to gateway ws://localhost:" in out, out[-3000:]
    log = proxy.output()
    assert f"localhost:{d.env['CONNECT_TUNNEL_PORT']}" in log  # tried, and refused
    assert f"localhost:{d.http_port}" in log, log[-2000:]


def _through(d: Deployment, created: dict[str, Any], https_proxy: str, **env: str) -> Any:
    """A studio whose tunnel goes to the tunnel port through `https_proxy`."""
    pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
    _, client = d.studio(created, HTTPS_PROXY=https_proxy, NO_PROXY="", **env,
                         CONNECT_GATEWAY_URL=f"tls://localhost:{d.env['CONNECT_TUNNEL_PORT']}"
                                             f"?pin={pin}")
    return client


def _answers(d: Deployment, created: dict[str, Any]) -> None:
    wait_connected(d.gw, created["id"], timeout=40)
    d.login(created)
    info = d.browser.get(d.url(created, "/api/info"))
    assert info.status == 200 and info.json()["path"] == "/api/info"


def test_a_proxy_that_wants_a_password_gets_the_one_in_https_proxy(tmp_path: Path) -> None:
    """HTTPS_PROXY's user and password (percent-encoded in the URL: %5F is the password's
    "_"; tinyproxy takes no other characters) go in the CONNECT as
    Proxy-Authorization; without them, the 407 is said in words that name the fix."""
    d = Deployment(tmp_path)
    try:
        proxy = Tinyproxy(tmp_path / "tinyproxy", connect_ports=[int(d.env["CONNECT_TUNNEL_PORT"])],
                          basic_auth=("ana", "p.ss-w_rd"))
        d.stoppers.append(proxy.stop)
        created = d.create()
        client = _through(d, created, f"http://ana:p.ss-w%5Frd@127.0.0.1:{proxy.port}")
        _answers(d, created)
        assert "p.ss-w" not in client.output()

        refused = _through(d, d.create(), f"http://127.0.0.1:{proxy.port}")
        wait_until(lambda: "asks for a user and password" in refused.output(), timeout=40,
                   what="the 407 said in the client's log")
        assert "407" in refused.output() and "HTTPS_PROXY as http://USER:PASSWORD@" \
            in refused.output(), refused.output()[-2000:]
    finally:
        d.stop()


@pytest.mark.skipif(not stunnel_available(), reason="stunnel4 is not installed")
def test_an_https_proxy_is_spoken_to_in_tls(tmp_path: Path) -> None:
    """HTTPS_PROXY=https://...: TLS to the proxy (stunnel in front of tinyproxy here), its
    certificate checked for the host name, the CONNECT and its credentials inside; a
    certificate for another name is said as the proxy's."""
    d = Deployment(tmp_path)
    try:
        tunnel = int(d.env["CONNECT_TUNNEL_PORT"])
        proxy = Tinyproxy(tmp_path / "tinyproxy", connect_ports=[tunnel],
                          basic_auth=("ana", "s3cret"))
        d.stoppers.append(proxy.stop)
        front = TlsFront(tmp_path / "stunnel", proxy.port, ["localhost"])
        d.stoppers.append(front.stop)
        trust = str(front.cert)  # (the gateway itself is pinned)
        created = d.create()
        client = _through(d, created, f"https://ana:s3cret@localhost:{front.port}",
                          SSL_CERT_FILE=trust)
        _answers(d, created)
        assert f"localhost:{tunnel}" in proxy.output()  # through the proxy, in TLS

        wrong = _through(d, d.create(), f"https://ana:s3cret@127.0.0.1:{front.port}",
                         SSL_CERT_FILE=trust)
        wait_until(lambda: "the proxy's TLS certificate is not for its host name"
                   in wrong.output(), timeout=40, what="the proxy's certificate refused")
        assert "s3cret" not in wrong.output() + client.output()
    finally:
        d.stop()


@pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None
                    or importlib.util.find_spec("ipykernel") is None,
                    reason="jupyterlab and ipykernel are not installed (the test extra)")
def test_a_jupyterlab_kernel_answers_through_the_websocket_carrier(tmp_path: Path) -> None:
    proxies: list[Tinyproxy] = []

    def through_proxy(env: dict[str, str], created: dict[str, Any]) -> dict[str, str]:
        proxies.append(Tinyproxy(tmp_path / "tinyproxy",
                                 connect_ports=[int(env["CONNECT_HTTP_PORT"])]))
        return egress_env(env, created, proxies[0])

    jupyter_env = {"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
                   "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
                   "IPYTHONDIR": str(tmp_path / "ipython")}
    try:
        with tool_studio(tmp_path, "jupyterlab", "subdomain", "api/status",
                         extra_env=jupyter_env, client_env=through_proxy) as lab:
            kernel_answers_42(lab)
            assert "bound to gateway ws://" in lab.client.output()
            status, body, _ = lab.gateway.request("/api/sessions")
            assert all(s["connected"] for s in json.loads(body)["sessions"])
    finally:
        for proxy in proxies:
            proxy.stop()
