"""wire/tls.py: the tunnel's listener sends no TLS 1.3 session tickets (a connect client
never resumes a session), through SSL_CTX_set_num_tickets found by
wire/openssl_private.module_functions; the HTTPS listener's options keep them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from studios_gateway.wire import openssl_private, tls
from studios_gateway.wire.openssl_peer_key import _move


@pytest.fixture(scope="module")
def pair(tmp_path_factory: Any) -> tuple[Path, Path]:
    return tls.ensure_self_signed(tmp_path_factory.mktemp("tls"), ["localhost"])


@pytest.fixture(autouse=True)
def fresh_lookup() -> Any:
    tls._ticket_functions.cache_clear()
    yield
    tls._ticket_functions.cache_clear()


def after_handshake(server_ctx: SSL.Context, cert: Path) -> tuple[bytes, SSL.Connection,
                                                                   SSL.Connection]:
    """A handshake in memory against the connect client's pinned TLS: what the server
    writes once its side of the handshake is done (tickets, if any), and the pair."""
    client = SSL.Connection(tls.PinnedClientTLS(tls.fingerprint_pem(cert.read_bytes()))._ctx,
                            None)
    client.set_connect_state()
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()

    def move(one: SSL.Connection, other: SSL.Connection) -> bytes:
        try:
            data = one.bio_read(1 << 16)
        except SSL.WantReadError:
            return b""
        other.bio_write(data)
        return data

    for one, other in ((client, server), (server, client), (client, server)):
        try:  # the hello; the server's flight; the client's Finished
            one.do_handshake()
        except SSL.WantReadError:
            pass
        move(one, other)
    server.do_handshake()  # the server reads the client's Finished: done
    after = move(server, client)
    return after, server, client


def carries_data(server: SSL.Connection, client: SSL.Connection) -> bool:
    client.send(b"bind")
    _move(client, server)
    server.send(server.recv(16) + b"/ok")
    _move(client, server)
    return client.recv(16) == b"bind/ok"


def test_the_tunnel_listener_sends_no_session_tickets(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    default, _, _ = after_handshake(tls.server_options(cert, key).getContext(), cert)
    assert len(default) > 100  # OpenSSL's two NewSessionTicket messages, sealed
    after, server, client = after_handshake(
        tls.tunnel_server_options(cert, key).getContext(), cert)
    assert after == b""
    assert server.get_protocol_version_name() == "TLSv1.3"
    assert carries_data(server, client)


def test_where_the_function_cannot_be_reached_the_listener_sends_tickets_and_works(
        pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(names: Any) -> Any:
        raise openssl_private.Unreachable("not in this build")

    monkeypatch.setattr(openssl_private, "module_functions", unreachable)
    cert, key = pair
    options = tls.tunnel_server_options(cert, key)
    assert not tls.send_no_tickets(options.getContext())
    after, server, client = after_handshake(options.getContext(), cert)
    assert len(after) > 100
    assert carries_data(server, client)


def test_send_no_tickets_says_whether_it_took(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    assert tls.send_no_tickets(tls.server_options(cert, key).getContext())


def test_module_functions_finds_public_functions_and_refuses_missing_ones() -> None:
    found = openssl_private.module_functions(["SSL_CTX_set_num_tickets", "SSL_ctrl"])
    assert set(found) == {"SSL_CTX_set_num_tickets", "SSL_ctrl"}
    assert all(address > 0 for address in found.values())
    with pytest.raises(openssl_private.Unreachable, match="not looked for.*no_such_function"):
        openssl_private.module_functions(["no_such_function"])


def test_a_file_that_is_not_elf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.so"
    path.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(openssl_private.Unreachable, match="not a 64-bit"):
        openssl_private.elf_functions(path, ["SSL_ctrl"])


def test_an_unreadable_module_leaves_tickets_on_and_the_listener_starting(
        pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A symbol table that cannot be read (here: a truncated file's struct.error) is a
    reason, not an exception out of the listener's setup."""
    import struct

    def truncated(path: Path, names: Any) -> Any:
        raise struct.error("unpack_from requires a buffer of at least 64 bytes")

    monkeypatch.setattr(openssl_private, "elf_functions", truncated)
    openssl_private._module_functions.cache_clear()
    try:
        with pytest.raises(openssl_private.Unreachable, match="cannot read"):
            openssl_private.module_functions(["SSL_ctrl"])
        cert, key = pair
        options = tls.tunnel_server_options(cert, key)
        after, server, client = after_handshake(options.getContext(), cert)
        assert len(after) > 100  # tickets, as before
        assert carries_data(server, client)
    finally:
        openssl_private._module_functions.cache_clear()
