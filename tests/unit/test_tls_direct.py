"""wire/_records.c's direct BIOs: bulk records sealed into, and read from, Python's bytes.

For the length of one call the connection's memory BIO is swapped for a BIO of the
extension's own and then put back; test_tls_lean.py runs its every test through both
ways ("c" and "c-memory-bios"). Here: what only the swap can get wrong.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from OpenSSL import SSL

from studios_gateway.wire import openssl_private, tls, tls_lean
from tests.support.malloc import malloc_in_use
from tests.unit.test_tls_lean import Pair


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return tls.ensure_self_signed(tmp_path_factory.mktemp("tls"), ["localhost"])


def test_the_direct_bios_are_made_and_in_use() -> None:
    """The functions are found in cryptography's extension module (not its bindings)."""
    assert openssl_private.DIRECT, openssl_private.DIRECT_MISSING
    assert tls_lean._open_from is openssl_private.RECORDS.open_from


def _bulk(pair: Pair, size: int = 3 * 1024 * 1024, cut: int = 0) -> None:
    for app in (pair.server_app, pair.client_app):
        app.received.clear()
    up = bytes(range(256)) * (size // 256)
    pair.client_app.transport.write(up)
    pair.server_app.transport.write(up[::-1])
    pair.move(cut)  # (reads of at most QUIET, or more than OPEN_MIN, leave no mark)
    assert bytes(pair.server_app.received) == up
    assert bytes(pair.client_app.received) == up[::-1]


def test_bulk_leaves_the_memory_bios_as_small_as_it_found_them(certificate, monkeypatch) -> None:
    """Bulk goes around the memory BIOs: once renewed after the handshake they stay
    unmarked, so quiet reads between bulk writes need not renew them (and regrow them)."""
    for direct in (True, False):
        monkeypatch.setattr(tls_lean, "_DIRECT", direct)
        pair = Pair(certificate)
        pair.client_app.transport.write(b"quiet")
        pair.server_app.transport.write(b"quiet")
        pair.move()  # the first quiet read renews the handshake's BIOs
        assert not pair.server._bios_grown and not pair.client._bios_grown
        bios = [(p._tlsConnection._into_ssl, p._tlsConnection._from_ssl)
                for p in (pair.server, pair.client)]
        _bulk(pair)
        assert pair.server._bios_grown is not direct
        assert pair.client._bios_grown is not direct
        if direct:  # the same memory BIOs, put back after each call
            assert bios == [(p._tlsConnection._into_ssl, p._tlsConnection._from_ssl)
                            for p in (pair.server, pair.client)]


def test_open_from_refuses_a_bio_that_is_not_the_connections(certificate) -> None:
    pair = Pair(certificate)
    conn = pair.server._tlsConnection
    addr = tls_lean._addr
    with pytest.raises(ValueError, match="not the connection's read BIO"):
        tls_lean._open_from(addr(conn._ssl), addr(conn._from_ssl), b"x" * 100, 0, 1024)
    with pytest.raises(ValueError, match="out of range"):
        tls_lean._open_from(addr(conn._ssl), addr(conn._into_ssl), b"x" * 100, 101, 1024)
    pair.client_app.transport.write(b"still works" * 10_000)
    pair.move()
    assert bytes(pair.server_app.received) == b"still works" * 10_000


def test_records_left_unread_when_tls_ends_in_a_delivery_stay_in_the_read_bio(
        certificate) -> None:
    """A bulk read delivered in parts, whose TLS connection ends during the first delivery
    (Twisted's ``_tlsShutdownFinished``: what a write failing in it does): the rest of the
    read is kept in the read BIO, where the memory-BIO path leaves it."""
    pair = Pair(certificate)

    class Ending(type(pair.server_app)):  # type: ignore[misc]
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            self.transport._tlsShutdownFinished(None)

    ending = Ending()
    pair.server.wrappedProtocol = ending
    ending.transport = pair.server
    pair.client_app.transport.write(b"y" * (tls_lean.DELIVER * 2 + 100))
    data = bytes(pair.client_wire.out)
    pair.server.dataReceived(data)
    assert len(ending.reads) == 1 and len(ending.reads[0]) == tls_lean.DELIVER
    held = tls_lean._pending(pair.server._tlsConnection._into_ssl, tls_lean._NULL)
    assert tls_lean.DELIVER < held < len(data) - tls_lean.DELIVER


def test_a_connection_that_used_the_direct_bios_frees_all_it_had(certificate,
                                                                 monkeypatch) -> None:
    """Each swap holds a reference to the memory BIO and hands it back: one too many and
    a closed connection's BIOs (and their buffers) would never be freed."""
    def per_connection(direct: bool, n: int = 150) -> float:
        monkeypatch.setattr(tls_lean, "_DIRECT", direct)
        gc.collect()
        before = malloc_in_use()
        for _ in range(n):
            pair = Pair(certificate)
            _bulk(pair, 256 * 1024)
            # Bytes held in both read BIOs when the connections go: BIOs not freed would
            # keep these too.
            pair.client_app.transport.write(b"z" * 1000)
            pair.server._tlsConnection.bio_write(bytes(pair.client_wire.out))
            del pair
        gc.collect()
        return (malloc_in_use() - before) / n

    per_connection(True, 20)  # warm up
    per_connection(False, 20)
    direct, memory = per_connection(True), per_connection(False)
    assert direct - memory < 512, (direct, memory)


def test_a_write_from_inside_an_openssl_call_of_another_connection_takes_the_memory_bios(
        certificate, monkeypatch) -> None:
    """OpenSSL calls into Python while a direct BIO is swapped in (here: the info callback
    of a TLS 1.2 renegotiation the server starts during a bulk read). A bulk write on
    another connection from there goes through its memory BIOs, and a bulk read is not
    offered the direct path (busy()): both connections keep every byte, in order."""
    real = tls.server_options

    def tls12(cert: Any, key: Any) -> Any:
        options = real(cert, key)
        options.getContext().set_max_proto_version(SSL.TLS1_2_VERSION)
        return options

    monkeypatch.setattr(tls, "server_options", tls12)
    a = Pair(certificate)
    monkeypatch.setattr(tls, "server_options", real)
    b = Pair(certificate)
    nested = b"n" * 300_000
    seen: list[bool] = []

    def info(ssl: Any, where: int, ret: int) -> None:
        if not seen:
            seen.append(tls_lean._busy())
            b.client_app.transport.write(nested)  # bulk: sealed in C, from in here
            b.move()

    # (pyOpenSSL sets info callbacks on contexts only, and not once they are in use)
    ffi, lib = openssl_private.ffi, openssl_private.lib
    callback = ffi.callback("void (*)(const SSL *, int, int)", info)
    lib.SSL_set_info_callback(a.client._tlsConnection._ssl, callback)
    bulk = bytes(range(256)) * 1024
    a.server._tlsConnection.renegotiate()
    a.server_app.transport.write(bulk)
    a.move()
    assert seen == [True]  # the callback ran inside a direct read
    assert bytes(b.server_app.received) == nested
    a.server_app.transport.write(b"after")
    a.client_app.transport.write(b"and back")
    a.move()
    assert bytes(a.client_app.received) == bulk + b"after"
    assert bytes(a.server_app.received) == b"and back"
