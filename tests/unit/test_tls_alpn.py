"""ALPN on the gateway's TLS ports: a client that offers it (every browser) is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from studios_gateway.wire import tls

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class Client(Protocol):
    def __init__(self) -> None:
        self.lost: Any = None

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


def shake(server: ssl.CertificateOptions, offered: list[bytes],
          options: ssl.CertificateOptions | None = None) -> tuple[Any, Client | None]:
    """A Twisted TLS client offering `offered` over ALPN against `server` (with its own
    `options`, default none: no verification), pumped to the end: (the client's TLS
    protocol, its application; None: the handshake failed)."""
    if options is None:
        options = ssl.CertificateOptions(acceptableProtocols=offered)
    elif offered:
        options.getContext().set_alpn_protos(offered)
    client_tls = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Client))
    server_tls = TLSMemoryBIOFactory(server, False, Factory.forProtocol(Protocol))
    client, _, pump = connectedServerAndClient(
        lambda: server_tls.buildProtocol(ADDR), lambda: client_tls.buildProtocol(ADDR),
        greet=False)
    for _ in range(10):
        pump.pump()
    return client, client.wrappedProtocol


@pytest.mark.parametrize("make, offered, chosen", [
    # A browser: the HTTPS port says http/1.1 (it used to answer with a TLS 'internal
    # error' alert, Twisted's own ALPN callback naming no protocol).
    (tls.https_server_options, [b"h2", b"http/1.1"], b"http/1.1"),
    (tls.https_server_options, [b"h2"], None),  # nothing in common: no ALPN, no failure
    (tls.https_server_options, [], None),
    (tls.tunnel_server_options, [b"http/1.1"], None),  # the tunnel port speaks no HTTP
])
def test_a_client_offering_alpn_completes_its_handshake(tmp_path: Path, make: Any,
                                                         offered: list[bytes],
                                                         chosen: bytes | None) -> None:
    cert, key = tls.ensure_self_signed(tmp_path / "tls", ["localhost"])
    client, app = shake(make(cert, key), offered)
    assert app is not None and app.lost is None  # connected, not ended by an alert
    assert client.negotiatedProtocol == chosen


def test_the_peer_port_serves_a_client_that_offers_alpn(tmp_path: Path) -> None:
    """Nodes offer none, but a probe or a TLS-checking load balancer may: the handshake
    failed on Twisted's own ALPN callback (as on the HTTPS port before)."""
    from studios_gateway.peers.component import peer_tls_options
    from tests.support.peer_certs import ca_and_leaf

    cfg = ca_and_leaf(tmp_path)
    client, app = shake(peer_tls_options(cfg), [b"h2", b"http/1.1"], peer_tls_options(cfg))
    assert app is not None and app.lost is None
    assert client.negotiatedProtocol is None
