"""TLS connections that give back their burst memory once they are quiet.

Twisted's TLS layer hands OpenSSL every TCP read through one memory BIO and takes
OpenSSL's output through another. OpenSSL's memory BIO grows its buffer to the
largest amount ever written into it at once (and a third more) and never shrinks
it. So every connection keeps the room of its handshake flights (about 4.4 KiB on
the gateway's side of a tunnel), and a tunnel that once read 512 KiB at a time
(wire/sockopts.TUNNEL_BUFFER) keeps about 680 KiB for as long as it lives, idle
or not; a record written out keeps about 22 KiB.

:class:`RenewingBIOs` (a mixin for ``TLSMemoryBIOProtocol`` subclasses) notes
when a read or a write was larger than :data:`QUIET`, and at the next quiet read
(a keepalive, a keystroke), once the handshake is done and both BIOs are empty,
gives the connection two new empty BIOs: the old ones and their buffers are
freed. A connection that only ever moves small pieces never renews; a bulk
transfer renews at most once per quiet read that follows a large one.
See docs/decisions/tunnel-framing.md "Memory per idle tunnel".
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
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

from studios_gateway.wire import openssl_private as _private
from studios_gateway.wire.tls_lean import LeanTLSProtocol

__all__ = ["QUIET", "RenewingBIOs", "renew_bios", "wrap_client_tls"]

#: A read of at most this many bytes (TLS records included) is a quiet one; a read
#: or write above it marks the BIOs as grown. A BIO renewed at quiet times holds
#: at most about a third more than this.
QUIET = 4096


def _bios(conn: SSL.Connection) -> tuple[Any, Any, Any] | None:
    """(SSL*, read BIO, write BIO) of a memory-BIO connection, as pyOpenSSL made them."""
    ssl, into, out = (getattr(conn, name, None) for name in ("_ssl", "_into_ssl", "_from_ssl"))
    if ssl is None or into is None or out is None:
        return None  # a socket connection, or a pyOpenSSL that keeps them elsewhere
    return ssl, into, out


def renew_bios(conn: SSL.Connection) -> bool:
    """Give ``conn`` two new empty memory BIOs if both of its BIOs are empty.

    What pyOpenSSL itself does when it makes the connection (``SSL_set_bio``
    with two new ``BIO_s_mem``); OpenSSL frees the old BIOs. Returns whether it
    did; False (nothing changed) when a BIO holds bytes or the connection is not
    a memory-BIO one.
    """
    parts = _bios(conn)
    if parts is None or not _private.AVAILABLE:
        return False
    _lib, _ffi = _private.lib, _private.ffi
    ssl, into, out = parts
    if _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
        return False
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_into == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_into, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return False
    _lib.SSL_set_bio(ssl, new_into, new_out)
    conn._into_ssl, conn._from_ssl = new_into, new_out
    return True


class RenewingBIOs:
    """Mixin for a ``TLSMemoryBIOProtocol`` (put it first in the bases): new BIOs at the
    first quiet read after the handshake or after a large read or write."""

    # The handshake's flights have grown both BIOs by the time it is done.
    _bios_grown: bool

    # Twisted's TLSMemoryBIOProtocol provides these.
    _tlsConnection: Any  # an SSL.Connection; None once the connection is lost
    _handshakeDone: bool
    _lostTLSConnection: bool
    _producer: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set here, in the same place for every connection, so that the flag joins the
        # instance attributes CPython shares between instances (set later, it makes the
        # instance's attribute dict a full one of its own: ~460 bytes per connection).
        self._bios_grown = True
        self._producer = None  # Twisted's TLS layer sets it later (registerProducer): same

    def dataReceived(self, data: bytes) -> None:
        quiet = len(data) <= QUIET
        if not quiet:
            self._bios_grown = True
        super().dataReceived(data)  # type: ignore[misc]
        if quiet and self._bios_grown:
            self.renew_bios()

    def _write(self, data: bytes) -> None:
        # Twisted's single path from the application's writes into OpenSSL.
        if len(data) > QUIET:
            self._bios_grown = True
        super()._write(data)  # type: ignore[misc]

    def renew_bios(self) -> bool:
        """Free the BIOs' buffers now if the connection allows it (see the module)."""
        conn = self._tlsConnection
        if conn is None or not self._handshakeDone or self._lostTLSConnection:
            return False
        if renew_bios(conn):
            self._bios_grown = False
            return True
        return False


class _RenewingTLSProtocol(RenewingBIOs, LeanTLSProtocol, BufferingTLSTransport):
    pass


class _RenewingTLSFactory(TLSMemoryBIOFactory):
    protocol = _RenewingTLSProtocol


class _RenewingAtOnce(RenewingBIOs, LeanTLSProtocol):
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
