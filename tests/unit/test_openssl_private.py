"""pyOpenSSL's private API the TLS fast paths use is all there, and behaves as they assume.

A failure here after a pyOpenSSL (or cryptography/OpenSSL) upgrade means the tunnel's
TLS has dropped to Twisted's slower public path (wire/tls_lean.py) and BIO renewal
(wire/tls_memory.py) is off: see docs/decisions/tunnel-tls-path.md.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

from studios_gateway.wire import openssl_private, tls_lean, tls_memory


def test_everything_the_fast_paths_use_is_there() -> None:
    assert openssl_private.missing() == []
    assert openssl_private.AVAILABLE and tls_lean.LEAN
    # The lean path overrides Twisted's hot methods only when it is in use.
    for name in ("dataReceived", "_flushReceiveBIO", "_flushSendBIO", "_write"):
        assert name in vars(tls_lean.LeanTLSProtocol)


def test_the_compiled_record_path_is_built_current_and_in_use() -> None:
    """setup.py builds wire/_records.c (scripts/setup in place too); the tunnel's bulk
    records take it."""
    assert openssl_private.RECORDS is not None, \
        "wire/_records.c is not built: python setup.py build_ext --inplace"
    assert not openssl_private.records_stale(), \
        "studios_gateway/wire/_records.c changed since it was built: " \
        "python setup.py build_ext --inplace"
    assert tls_lean._seal is openssl_private.RECORDS.seal
    assert tls_lean._open is openssl_private.RECORDS.open
    # ... through the direct BIOs, whose functions come from the extension module's
    # symbol table (docs/decisions/tunnel-tls-path.md, "Direct BIOs")
    assert openssl_private.DIRECT, openssl_private.DIRECT_MISSING
    assert tls_lean._DIRECT and tls_lean._open_from is openssl_private.RECORDS.open_from


def _connected_pair(tmp_path: Any) -> tuple[SSL.Connection, SSL.Connection]:
    from studios_gateway.wire import tls

    cert, key = tls.ensure_self_signed(tmp_path / "tls", ["localhost"])
    server = SSL.Connection(tls.server_options(cert, key).getContext(), None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(one.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
    client.do_handshake()
    return server, client


def test_openssl_reads_no_record_ahead_of_the_one_it_decrypts(tmp_path: Any) -> None:
    """The lean read stops when SSL_pending and the read BIO are both empty, without the
    SSL_read that would only say "no more"; that is right only while OpenSSL takes
    exactly one record's bytes out of the BIO per record it decrypts."""
    lib, ffi = openssl_private.lib, openssl_private.ffi
    server, client = _connected_pair(tmp_path)
    for piece in (b"first record", b"second record"):
        client.send(piece)
    records = client.bio_read(1 << 16)
    server.bio_write(records)
    buf = ffi.new("char[]", 1024)
    assert lib.SSL_read(server._ssl, buf, 1024) == len(b"first record")
    # The second record is still in the BIO, whole: nothing was read ahead.
    first = 5 + int.from_bytes(records[3:5], "big")  # header + length of the first record
    assert lib.BIO_get_mem_data(server._into_ssl, ffi.NULL) == len(records) - first
    assert lib.SSL_pending(server._ssl) == 0
    assert lib.SSL_read(server._ssl, buf, 1024) == len(b"second record")
    assert lib.BIO_get_mem_data(server._into_ssl, ffi.NULL) == 0
    assert lib.SSL_read(server._ssl, buf, 1024) <= 0
    assert lib.SSL_get_error(server._ssl, -1) == lib.SSL_ERROR_WANT_READ


def test_bio_renewal_uses_the_same_private_api(tmp_path: Any) -> None:
    server, _ = _connected_pair(tmp_path)
    before = server._into_ssl, server._from_ssl
    assert tls_memory.renew_bios(server)
    assert (server._into_ssl, server._from_ssl) != before
