"""TLS connections that give back their burst memory once they are quiet.

Twisted's TLS layer hands OpenSSL every TCP read through one memory BIO and takes
OpenSSL's output through another. OpenSSL's memory BIO grows its buffer to the
largest amount ever written into it at once (and a third more) and never shrinks
it. So every connection keeps the room of its handshake flights (about 4.4 KiB on
the gateway's side of a tunnel), and a tunnel that once read 512 KiB at a time
(wire/sockopts.TUNNEL_BUFFER) through its memory BIO keeps about 680 KiB for as long
as it lives, idle or not; a record written out keeps about 22 KiB. (Bulk reads and
writes go around the memory BIOs when wire/_records.c's direct BIOs are in use:
wire/tls_lean.py; reads and writes of a few KiB still go through them.)

The tunnel's TLS layer (wire/tls_lean.py's ``LeanTLSProtocol``, which the classes
here and wire/tls_guard.py's build on) notes, in its read and write paths, when a read
or a write was larger than :data:`QUIET`, and at the next quiet read (a keepalive, a
keystroke), once the handshake is done and both BIOs are empty, gives the connection
two new empty BIOs (:func:`renew_bios`): the old ones and their buffers are freed. A
connection that only ever moves small pieces never renews; a bulk transfer renews at
most once per quiet read that follows a large one. Without pyOpenSSL's private API
(wire/openssl_private.py) nothing is renewed.
See docs/decisions/tunnel-framing.md "Memory per idle tunnel".
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
)
from zope.interface import implementer

from studios_gateway.wire.tls_lean import QUIET, LeanTLSProtocol, renew_bios

__all__ = ["QUIET", "renew_bios", "wrap_client_tls"]


class _RenewingTLSProtocol(LeanTLSProtocol, BufferingTLSTransport):
    pass


class _RenewingTLSFactory(TLSMemoryBIOFactory):
    protocol = _RenewingTLSProtocol


class _RenewingAtOnce(LeanTLSProtocol):
    pass


class _RenewingAtOnceFactory(TLSMemoryBIOFactory):
    # Each write is encrypted and sent when it is made (wire/tls_lean.py), where
    # BufferingTLSTransport gathers a turn's writes and sends them a turn later.
    protocol = _RenewingAtOnce


@implementer(IStreamClientEndpoint)
class _ClientTLSEndpoint:
    def __init__(self, creator: IOpenSSLClientConnectionCreator, endpoint: Any,
                 factory: type[TLSMemoryBIOFactory]):
        self._creator = creator
        self._endpoint = endpoint
        self._factory = factory

    def connect(self, factory: IProtocolFactory) -> Any:
        tls = self._factory(self._creator, True, factory)
        return self._endpoint.connect(tls).addCallback(lambda p: p.wrappedProtocol)


def wrap_client_tls(creator: IOpenSSLClientConnectionCreator, endpoint: Any,
                    write_at_once: bool = False) -> Any:
    """``twisted.internet.endpoints.wrapClientTLS`` whose connections renew their BIOs.

    ``write_at_once``: each write is sent when it is made instead of at the end of the
    reactor turn (the tunnel, whose multiplexer gathers what belongs in one write; see
    docs/decisions/tunnel-scheduling.md)."""
    return _ClientTLSEndpoint(creator, endpoint,
                              _RenewingAtOnceFactory if write_at_once else _RenewingTLSFactory)
