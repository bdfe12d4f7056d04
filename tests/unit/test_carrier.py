"""The tunnel's carriers for HTTP-only egress, driven by hand on StringTransports."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase

from studios_gateway.studio.settings import load_client_settings
from studios_gateway.wire.carrier import (
    CarrierRefused,
    ProxyConnect,
    WebSocketClient,
    WebSocketServer,
    accept_head,
    proxy_setting,
    proxy_setting_for,
)
from studios_gateway.wire.closing import CLOSE_GRACE
from tests.support.stuck_socket import StuckSocket


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [tuple(part.strip() for part in line.split(b":", 1)) for line in lines]  # type: ignore[misc]


def test_a_tunnel_through_a_websocket_both_ways() -> None:
    inner_c, inner_s = Recorder(), Recorder()
    client = WebSocketClient(inner_c, "gw.example:8080")
    ct = StringTransport()
    client.makeConnection(ct)
    request = ct.value()
    assert request.startswith(b"GET /_connect/tunnel HTTP/1.1\r\n")
    head = accept_head(_headers(request))
    assert head is not None and head.startswith(b"HTTP/1.1 101 ")
    server = WebSocketServer(inner_s)
    st = StringTransport()
    server.makeConnection(st)
    assert inner_s.transport is server  # the server end is up at once
    ct.clear()
    client.dataReceived(head)
    assert TestCase().successResultOf(client.ready) is inner_c
    inner_c.transport.write(b"bind line\n")
    server.dataReceived(ct.value())
    assert inner_s.data == b"bind line\n"
    inner_s.transport.write(b"x" * 100_000)
    for i in range(0, len(st.value()), 7):  # in small reads
        client.dataReceived(st.value()[i:i + 7])
    assert inner_c.data == b"x" * 100_000
    ct.clear()
    inner_c.transport.loseConnection()  # a close frame, then the connection closes
    assert ct.value()[:1] == b"\x88" and ct.disconnecting


def test_a_websocket_tunnel_ended_on_a_peer_that_reads_nothing_is_reset_after_the_grace(
        ) -> None:
    """A malformed frame (here a text message) ends the carried tunnel with a close
    frame; the close waited for the peer to take it, so one that reads nothing held the
    connection for good. It is reset CLOSE_GRACE after the close."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    clock = MemoryReactorClock()
    inner = Recorder()
    server = WebSocketServer(inner)
    server.clock = clock
    sock = StuckSocket()
    sock.connect(server)
    server.dataReceived(Connection(ConnectionType.CLIENT).send(TextMessage("hi")))
    assert server.ended and sock.disconnecting and sock.unsent() and not sock.disconnected
    clock.advance(CLOSE_GRACE)
    assert sock.aborted and inner.lost


def test_accept_head_wants_a_proper_upgrade() -> None:
    assert accept_head([(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")]) is None
    assert accept_head([(b"Upgrade", b"h2c"), (b"Sec-WebSocket-Key", b"a"),
                        (b"Sec-WebSocket-Version", b"13")]) is None


def test_a_proxy_connect_and_its_refusal() -> None:
    inner = Recorder()
    carrier = ProxyConnect(inner, "gw.example", 443)
    t = StringTransport()
    carrier.makeConnection(t)
    assert t.value() == b"CONNECT gw.example:443 HTTP/1.1\r\nHost: gw.example:443\r\n\r\n"
    carrier.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\nfirst bytes")
    assert inner.data == b"first bytes" and inner.transport is carrier
    refused = ProxyConnect(Recorder(), "gw.example", 7070)
    refused.makeConnection(StringTransport())
    refused.dataReceived(b"HTTP/1.0 403 Forbidden\r\nServer: tinyproxy\r\n\r\n")
    failure = TestCase().failureResultOf(refused.ready, CarrierRefused)
    assert "403 Forbidden" in str(failure.value)


@pytest.mark.parametrize("no_proxy, host, expected", [
    ("", "gw.example", ("proxy.lab", 3128)),
    ("*", "gw.example", None),
    ("example,localhost", "gw.example", None),
    (".example", "gw.example", None),
    ("other.example", "gw.example", ("proxy.lab", 3128)),
])
def test_proxy_for(no_proxy: str, host: str, expected: Any) -> None:
    env = {"HTTPS_PROXY": "http://proxy.lab:3128", "NO_PROXY": no_proxy}
    setting = proxy_setting_for(host, env)
    assert (setting and setting.address) == expected
    assert proxy_setting_for(host, {}) is None


def test_gateway_urls_name_the_carrier() -> None:
    s = load_client_settings({
        "CONNECT_GATEWAY_URL": "gw.example:7070,wss://gw.example/_connect/tunnel?pin=sha256:"
                               + "a" * 64 + ",ws://10.0.0.1:8080",
        "CONNECT_SESSION_ID": "abcd1234", "CONNECT_SESSION_TOKEN": "t" * 20,
        "CONNECT_TOOL_PORT": "8888", "HTTPS_PROXY": "http://proxy:3128"})
    tls, wss, ws = s.gateways
    assert (tls.carrier, tls.port) == ("tls", 7070)
    assert (wss.carrier, wss.port, wss.path, wss.pin) == ("wss", 443, "/_connect/tunnel",
                                                          "sha256:" + "a" * 64)
    assert (ws.carrier, ws.port, ws.path, str(ws)) == ("ws", 8080, "/_connect/tunnel",
                                                       "ws://10.0.0.1:8080/_connect/tunnel")
    assert dict(s.proxy_environ) == {"HTTPS_PROXY": "http://proxy:3128"}


@pytest.mark.parametrize("proxy", [":::", "socks5://proxy.lab:1080", "http://proxy.lab:99999",
                                   "http://proxy.lab:port", "http://u:secret@:3128"])
def test_a_proxy_the_tunnel_cannot_use_is_refused_not_skipped(proxy: str) -> None:
    """The tunnel went straight to the gateway, without a word, when HTTPS_PROXY named
    no host, a bad port or a SOCKS proxy."""
    from studios_gateway.config import ConfigError

    for name in ("HTTPS_PROXY", "https_proxy"):
        with pytest.raises(ConfigError) as e:
            load_client_settings({"CONNECT_GATEWAY_URL": "gw.example:7070",
                                  "CONNECT_SESSION_ID": "abcd1234",
                                  "CONNECT_SESSION_TOKEN": "t" * 20,
                                  "CONNECT_TOOL_PORT": "8888", name: proxy})
        assert str(e.value).startswith(f"{name}=") and "http://host:port" in str(e.value)
        assert "secret" not in str(e.value)


def test_a_refused_https_proxy_never_shows_its_password() -> None:
    # A password with a "#" (not percent-encoded) makes the URL unusable, and the refusal
    # quoted it in full on stderr and in the log.
    from studios_gateway.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_client_settings({"CONNECT_STRING": "studios-connect://abcd1234:" + "t" * 20
                              + "@127.0.0.1:1/", "CONNECT_TOOL_PORT": "8888",
                              "HTTPS_PROXY": "http://alice:hunter#2@proxy:3128"})
    assert "HTTPS_PROXY" in str(e.value) and "hunter" not in str(e.value), str(e.value)


@pytest.mark.parametrize("url, expected", [
    ("http://proxy.lab:3128", None),
    ("proxy.lab:3128", None),
    ("http://ana:s3cret@proxy.lab:3128", b"Basic " + base64.b64encode(b"ana:s3cret")),
    ("ana:s3cret@proxy.lab:3128", b"Basic " + base64.b64encode(b"ana:s3cret")),
    # percent-encoded as in any URL: '@', ':' and '/' in a password, a user with a domain
    ("http://LAB%5Cana:p%40ss%3Aw%2Frd@proxy.lab:3128",
     b"Basic " + base64.b64encode(b"LAB\\ana:p@ss:w/rd")),
    ("http://ana@proxy.lab:3128", b"Basic " + base64.b64encode(b"ana:")),
    ("http://j%C3%BCrgen:pw@proxy.lab", b"Basic " + base64.b64encode("jürgen:pw".encode())),
])
def test_proxy_authorization_from_the_url(url: str, expected: bytes | None) -> None:
    for name in ("HTTPS_PROXY", "https_proxy"):
        setting = proxy_setting({name: url})
        assert setting is not None and setting.authorization == expected
    assert proxy_setting({}) is None


def test_a_proxy_connect_sends_its_credentials() -> None:
    carrier = ProxyConnect(Recorder(), "gw.example", 443, b"Basic YW5hOnMzY3JldA==")
    t = StringTransport()
    carrier.makeConnection(t)
    assert t.value() == (b"CONNECT gw.example:443 HTTP/1.1\r\nHost: gw.example:443\r\n"
                         b"Proxy-Authorization: Basic YW5hOnMzY3JldA==\r\n\r\n")


@pytest.mark.parametrize("authorization, fields, says", [
    (None, b"Proxy-Authenticate: Basic realm=\"lab\"\r\n",
     "it asks for a user and password: give them in HTTPS_PROXY as "
     "http://USER:PASSWORD@host:port"),
    (None, b"", "it asks for a user and password"),
    (b"Basic eDp5", b"Proxy-Authenticate: Basic realm=\"lab\"\r\n",
     "it did not take the user and password given in HTTPS_PROXY"),
    (None, b"Proxy-Authenticate: Negotiate\r\nProxy-Authenticate: NTLM\r\n",
     "it asks for Negotiate, NTLM authentication; studios-connect sends only Basic"),
])
def test_a_proxy_that_wants_credentials_is_refused_in_words(
        authorization: bytes | None, fields: bytes, says: str) -> None:
    carrier = ProxyConnect(Recorder(), "gw.example", 443, authorization)
    carrier.makeConnection(StringTransport())
    carrier.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n" + fields
                         + b"Content-Length: 0\r\n\r\n")
    failure = TestCase().failureResultOf(carrier.ready, CarrierRefused)
    assert "the proxy refused CONNECT gw.example:443: HTTP/1.1 407" in str(failure.value)
    assert says in str(failure.value)


def test_a_proxy_status_line_is_escaped_in_the_refusal() -> None:
    carrier = ProxyConnect(Recorder(), "gw.example", 443)
    carrier.makeConnection(StringTransport())
    carrier.dataReceived(b"HTTP/1.1 403 No\x1b[31m\rforged\r\n\r\n")
    failure = TestCase().failureResultOf(carrier.ready, CarrierRefused)
    assert "\x1b" not in str(failure.value) and "\r" not in str(failure.value)


def settings_with(**proxy: str) -> Any:
    return load_client_settings({"CONNECT_GATEWAY_URL": "gw.example:7070",
                                 "CONNECT_SESSION_ID": "abcd1234",
                                 "CONNECT_SESSION_TOKEN": "t" * 20,
                                 "CONNECT_TOOL_PORT": "8888", **proxy})


def test_a_bad_https_proxy_that_the_tunnel_does_not_read_does_not_stop_the_start() -> None:
    """With HTTPS_PROXY set and usable the tunnel never reads https_proxy, yet a bad
    https_proxy (an image's leftover, a SOCKS proxy for other programs) refused the start."""
    s = settings_with(HTTPS_PROXY="http://proxy.lab:3128", https_proxy="socks5://socks:1080")
    assert proxy_setting_for("gw.example", dict(s.proxy_environ)).address == ("proxy.lab", 3128)


@pytest.mark.parametrize("proxy, refused", [
    ({"HTTPS_PROXY": "socks5://socks:1080", "https_proxy": "http://proxy.lab:3128"},
     "HTTPS_PROXY"),  # the one the tunnel reads is bad, the other one cannot stand in
    ({"HTTPS_PROXY": " ", "https_proxy": "socks5://socks:1080"}, "https_proxy"),
    ({"HTTPS_PROXY": "", "https_proxy": "http://proxy.lab:port"}, "https_proxy"),
])
def test_the_proxy_the_tunnel_reads_is_the_one_checked(proxy: dict[str, str],
                                                       refused: str) -> None:
    from studios_gateway.config import ConfigError

    with pytest.raises(ConfigError) as e:
        settings_with(**proxy)
    assert str(e.value).startswith(f"{refused}=") and "http://host:port" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("proxy, expected", [
    ({"HTTPS_PROXY": "proxy.lab:3128"}, ("proxy.lab", 3128)),
    ({"https_proxy": " http://proxy.lab "}, ("proxy.lab", 80)),
    ({"HTTPS_PROXY": " ", "https_proxy": "http://proxy.lab:3128"}, ("proxy.lab", 3128)),
    ({"HTTPS_PROXY": "http://u:p@proxy.lab:3128", "NO_PROXY": "other.example"},
     ("proxy.lab", 3128)),
    ({"HTTPS_PROXY": "http://proxy.lab:3128", "no_proxy": ".example"}, None),
    ({"https_proxy": "http://proxy.lab:3128", "NO_PROXY": "gw.example:7070"}, None),
    ({}, None),
])
def test_a_proxy_accepted_at_the_start_is_the_one_the_tunnel_uses(
        proxy: dict[str, str], expected: Any) -> None:
    s = settings_with(**proxy)
    setting = proxy_setting_for("gw.example", dict(s.proxy_environ))
    assert (setting and setting.address) == expected


def test_studios_connect_refuses_the_proxy_it_would_use_in_one_line_with_status_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same refusal as before for the variable the tunnel reads (a bad https_proxy
    beside a good HTTPS_PROXY is accepted: see above)."""
    from studios_gateway.studio.main import main

    base = {"CONNECT_STRING": "studios-connect://abcd1234:" + "t" * 20 + "@127.0.0.1:1/",
            "CONNECT_TOOL_PORT": "8888", "PATH": "/usr/bin:/bin"}
    for proxy in ({"HTTPS_PROXY": "socks5://u:secret@socks:1080"},
                  {"https_proxy": "socks5://u:secret@socks:1080", "HTTPS_PROXY": " "}):
        assert main([], {**base, **proxy}) == 2
        err = capsys.readouterr().err
        name = "HTTPS_PROXY" if proxy["HTTPS_PROXY"].strip() else "https_proxy"
        assert err.count("\n") == 1 and "secret" not in err, err
        assert err.startswith(f"studios-connect: {name}='socks5://u:") and \
            "expected http://host:port, an HTTP proxy" in err, err


def test_the_credentials_sent_are_those_of_the_proxy_the_tunnel_uses() -> None:
    """The user and password come from the same variable as the proxy's address: a blank
    HTTPS_PROXY gave no credentials while the tunnel went through https_proxy's proxy."""
    both = {"HTTPS_PROXY": " ", "https_proxy": "http://ana:s3cret@proxy.lab:3128"}
    assert proxy_setting_for("gw.example", both).address == ("proxy.lab", 3128)
    setting = proxy_setting(both)
    assert setting is not None
    assert setting.authorization == b"Basic " + base64.b64encode(b"ana:s3cret")
    other = {"HTTPS_PROXY": "http://proxy.lab:3128", "https_proxy": "http://x:y@elsewhere"}
    assert proxy_setting_for("gw.example", other).address == ("proxy.lab", 3128)
    setting = proxy_setting(other)
    assert setting is not None and setting.authorization is None


def test_the_client_settings_repr_never_shows_the_proxy_password() -> None:
    """The studio's token is kept out of ClientSettings' repr; HTTPS_PROXY may now carry a
    password too (sent as Proxy-Authorization), and its repr showed it."""
    s = settings_with(HTTPS_PROXY="http://ana:s3cret@proxy.lab:3128")
    assert (proxy_setting(dict(s.proxy_environ)) or pytest.fail()).authorization is not None
    assert "s3cret" not in repr(s) and "t" * 20 not in repr(s)
    setting = proxy_setting(dict(s.proxy_environ))
    assert setting is not None and setting.address == ("proxy.lab", 3128)
    assert "s3cret" not in repr(setting) and "YW5hOnMzY3JldA" not in repr(setting)


def test_an_https_proxy_is_spoken_to_in_tls_with_its_credentials_inside() -> None:
    """https:// names a proxy that takes TLS (curl and Go read it so): the tunnel speaks
    TLS to it (port 443 when none is given), and the user and password go inside that
    TLS. Before, the CONNECT went in plain HTTP, to port 80, credentials and all."""
    s = settings_with(HTTPS_PROXY="https://ana:s3cret@proxy.lab")
    setting = proxy_setting(dict(s.proxy_environ))
    assert setting is not None and setting.tls
    assert setting.address == ("proxy.lab", 443)
    assert proxy_setting_for("gw.example", dict(s.proxy_environ)).address == ("proxy.lab", 443)
    assert setting.authorization == b"Basic " + base64.b64encode(b"ana:s3cret")
    plain = proxy_setting({"HTTPS_PROXY": "proxy.lab"})
    assert plain is not None and not plain.tls and plain.address == ("proxy.lab", 80)


def test_a_failed_tls_to_the_proxy_is_said_as_the_proxys() -> None:
    """A certificate refused on the way to an https:// proxy is the proxy's, not the
    gateway's (whose certificate check says 'the gateway's certificate ...')."""
    from OpenSSL import SSL
    from service_identity import VerificationError
    from twisted.python.failure import Failure

    for error, says in ((VerificationError("no match for proxy.lab"),
                         "the proxy's TLS certificate is not for its host name"),
                        (SSL.Error([("SSL routines", "", "certificate verify failed")]),
                         "the TLS handshake with the proxy failed")):
        carrier = ProxyConnect(Recorder(), "gw.example", 443, over_tls=True)
        carrier.makeConnection(StringTransport())
        carrier.connectionLost(Failure(error))
        failure = TestCase().failureResultOf(carrier.ready, CarrierRefused)
        assert says in str(failure.value), str(failure.value)
    # over plain TCP the failure is passed on as it is
    carrier = ProxyConnect(Recorder(), "gw.example", 443)
    carrier.makeConnection(StringTransport())
    carrier.connectionLost(Failure(SSL.Error([])))
    TestCase().failureResultOf(carrier.ready, SSL.Error)
