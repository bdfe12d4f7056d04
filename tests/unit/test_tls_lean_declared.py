"""LeanTLSProtocol declares what its transport provides as Twisted's TLS layer does, from
a cache instead of ten zope declarations per connection (wire/tls_lean.py, _DECLARED)."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer, providedBy

from studios_gateway.wire import tls
from studios_gateway.wire.tls_lean import LeanTLSProtocol

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


def _digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_the_twisted_code_stood_in_for_is_unchanged() -> None:
    """If this fails, Twisted changed what LeanTLSProtocol.makeConnection and
    connect_application repeat: compare them with the new code, adapt them, then update
    these digests."""
    assert {
        "TLSMemoryBIOProtocol.makeConnection": _digest(TLSMemoryBIOProtocol.makeConnection),
        "ProtocolWrapper.makeConnection": _digest(ProtocolWrapper.makeConnection),
    } == {
        "TLSMemoryBIOProtocol.makeConnection": "c83b193e6cb07f9f",
        "ProtocolWrapper.makeConnection": "1954239c5d3014a3",
    }


@implementer(ITCPTransport)
class TCPLike(StringTransport):
    """A transport that provides more than StringTransport: ITCPTransport too."""


class Lean(LeanTLSProtocol):
    pass


class LeanFactory(TLSMemoryBIOFactory):
    protocol = Lean


def made(factory_class: type, options: Any, client: bool, transport: Any) -> Any:
    factory = factory_class(options, client, Factory.forProtocol(Protocol))
    protocol = factory.buildProtocol(ADDR)
    protocol.makeConnection(transport)
    return protocol


def test_a_connections_interfaces_are_twisteds_before_and_after_the_application(tmp_path
                                                                              ) -> None:
    cert, key = tls.ensure_self_signed(tmp_path / "tls", ["localhost"])
    server = tls.server_options(cert, key)
    for transport_class in (StringTransport, TCPLike):
        twisted_way = made(TLSMemoryBIOFactory, server, False, transport_class())
        first = made(LeanFactory, server, False, transport_class())
        second = made(LeanFactory, server, False, transport_class())
        for p in (first, second):  # accepted, the application not connected yet
            assert list(providedBy(p)) == list(providedBy(twisted_way))
        assert second.__provides__ is first.__provides__  # the second from the cache
        ProtocolWrapper.makeConnection(twisted_way, twisted_way.transport)
        for p in (first, second):
            p.connect_application(p.transport)
            assert list(providedBy(p)) == list(providedBy(twisted_way))
            assert ISSLTransport.providedBy(p) and p.wrappedProtocol.transport is p
        assert second.__provides__ is first.__provides__
    # A client's layer connects its application at once (Twisted's _connectWrapped).
    twisted_client = made(TLSMemoryBIOFactory, ssl.CertificateOptions(), True, TCPLike())
    lean_client = made(LeanFactory, ssl.CertificateOptions(), True, TCPLike())
    assert list(providedBy(lean_client)) == list(providedBy(twisted_client))
    assert ITCPTransport.providedBy(lean_client)
    assert lean_client.wrappedProtocol.transport is lean_client
