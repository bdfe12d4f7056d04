"""wire/openssl_peer_key.py: a TLS 1.3 server connection's copy of the client's key share,
freed after the handshake by writing into OpenSSL's private connection structure.

On a cryptography (OpenSSL) build that is not audited, the tests that need the drop are
skipped, each saying so (``pytest -rs`` lists them), and the gateway keeps every key
share (~6.8 KiB more per idle tunnel; it logs why at its first TLS connection): audit
the new build as docs/decisions/openssl-peer-key.md says, then add it to ``AUDITED``.
A new upstream release must not turn every build red before somebody could audit it.
"""

from __future__ import annotations

import ctypes
import gc
import os
import struct
from typing import Any

import cryptography
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from studios_gateway.wire import openssl_peer_key, openssl_private, tls
from studios_gateway.wire.openssl_peer_key import _move
from tests.support.malloc import malloc_in_use

lib, ffi = openssl_private.lib, openssl_private.ffi
_BUILD = (ffi.string(lib.OpenSSL_version(0)).decode(), cryptography.__version__)
#: For the tests that need this process to drop key shares.
audited = pytest.mark.skipif(
    not openssl_peer_key.audited_here(),
    reason=f"{_BUILD[0]} in cryptography {_BUILD[1]} on {os.uname().machine} is not "
    "audited: the gateway keeps every key share; audit it "
    "(docs/decisions/openssl-peer-key.md) and add it to AUDITED")


_libc = ctypes.CDLL(None)
_libc.malloc_usable_size.restype = ctypes.c_size_t
_libc.malloc_usable_size.argtypes = [ctypes.c_void_p]


def peer_key(conn: SSL.Connection) -> int | None:
    """The address of the peer key share ``conn`` holds (SSL_get_peer_tmp_key), or None."""
    dropper = openssl_peer_key._dropper()
    assert dropper is not None, openssl_peer_key.status()
    out = ffi.new("EVP_PKEY **")
    if dropper.ctrl(conn._ssl, openssl_peer_key.SSL_CTRL_GET_PEER_TMP_KEY, 0, out) != 1:
        return None
    address = int(ffi.cast("uintptr_t", out[0]))
    lib.EVP_PKEY_free(out[0])
    return address


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: Any) -> tuple[SSL.Context, SSL.Context]:
    """The gateway's server context and the connect client's pinned one."""
    cert, key = tls.ensure_self_signed(tmp_path_factory.mktemp("tls"), ["localhost"])
    server = tls.server_options(cert, key).getContext()
    client = tls.PinnedClientTLS(tls.fingerprint_pem(cert.read_bytes()))._ctx
    return server, client


def handshaken(contexts: tuple[SSL.Context, SSL.Context]) -> tuple[SSL.Connection,
                                                                     SSL.Connection]:
    return openssl_peer_key.handshaken_pair(*contexts)


@audited
def test_an_audited_build_drops_key_shares() -> None:
    assert openssl_peer_key.status() == (True, "")


def test_an_unaudited_build_says_why_it_keeps_key_shares() -> None:
    ok, why = openssl_peer_key.status()
    if openssl_peer_key.audited_here():
        assert ok and why == ""
    else:
        assert not ok and ("not an audited build" in why or "audited on" in why)


@audited
def test_the_key_share_is_the_one_word_at_the_audited_offset(contexts: Any) -> None:
    """The layout the module relies on: the getter's pointer is stored in exactly one
    word of the connection structure, at the audited offset (read through
    /proc/self/mem, which answers EIO for an unmapped page instead of faulting).

    Only the structure's own allocation is searched (glibc's malloc_usable_size: the
    audited build allocates it with libc's malloc): the heap beyond it belongs to other
    objects, which may hold the same pointer in a full test run."""
    server, _ = handshaken(contexts)
    key = peer_key(server)
    assert key is not None
    start = int(ffi.cast("uintptr_t", server._ssl))
    size = _libc.malloc_usable_size(start)
    assert openssl_peer_key.AUDITED[(_BUILD[0], _BUILD[1])] + 8 <= size <= 16384
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        raw = os.pread(mem.fileno(), size, start)
    words = [i for i in range(0, len(raw) - 7, 8) if struct.unpack_from("<Q", raw, i)[0] == key]
    version = ffi.string(lib.OpenSSL_version(0)).decode()
    assert words == [openssl_peer_key.AUDITED[(version, cryptography.__version__)]]


@audited
def test_a_dropped_connection_works_on_and_holds_no_key_share(contexts: Any) -> None:
    server, client = handshaken(contexts)
    assert lib.SSL_version(server._ssl) == openssl_peer_key.TLS1_3_VERSION
    assert ffi.string(lib.SSL_get0_group_name(server._ssl)) == b"X25519MLKEM768"
    assert peer_key(server) is not None
    assert openssl_peer_key.drop(server)
    assert peer_key(server) is None
    assert not openssl_peer_key.drop(server)  # nothing left to drop: nothing touched
    for n in (1, 100, 40_000):
        for sender, receiver in ((client, server), (server, client)):
            sender.sendall(b"d" * n)
            _move(client, server)
            got = b""
            while len(got) < n:
                got += receiver.recv(65536)
            assert got == b"d" * n
    server.shutdown()
    _move(client, server)
    with pytest.raises(SSL.ZeroReturnError):
        client.recv(16)
    del server
    gc.collect()  # SSL_free with the word cleared


def test_a_client_connection_and_tls_1_2_are_left_alone(contexts: Any) -> None:
    server, client = handshaken(contexts)
    assert not openssl_peer_key.drop(client)  # a TLS 1.3 client holds no peer key share
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    cert, key = tls.make_self_signed(["localhost"])
    server_ctx.use_certificate(x509.load_pem_x509_certificate(cert))
    server_ctx.use_privatekey(serialization.load_pem_private_key(key, None))  # type: ignore[arg-type]
    old, _ = handshaken((server_ctx, SSL.Context(SSL.TLS_CLIENT_METHOD)))
    assert lib.SSL_version(old._ssl) != openssl_peer_key.TLS1_3_VERSION
    assert not openssl_peer_key.drop(old)


@audited
def test_dropping_gives_back_the_hybrid_key_shares_memory(contexts: Any) -> None:
    def per_connection(drop: bool, n: int = 200) -> float:
        kept = []
        gc.collect()
        before = malloc_in_use()
        for _ in range(n):
            server, client = handshaken(contexts)
            if drop:
                assert openssl_peer_key.drop(server)
            del client
            kept.append(server)
        gc.collect()
        return (malloc_in_use() - before) / n

    per_connection(False, 20)  # warm up
    kept, dropped = per_connection(False), per_connection(True)
    assert kept - dropped > 5 * 1024, (kept, dropped)


@audited
def test_an_unaudited_build_touches_nothing(contexts: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(openssl_peer_key, "AUDITED", {})
    monkeypatch.setattr(openssl_peer_key, "_state",
                        {"dropper": None, "reason": "", "tried": False})
    server, client = handshaken(contexts)
    assert not openssl_peer_key.drop(server)
    ok, why = openssl_peer_key.status()
    assert not ok and "not an audited build" in why
    monkeypatch.undo()
    assert peer_key(server) is not None


@audited
def test_a_word_that_is_not_the_key_share_turns_the_feature_off(contexts: Any,
                                                                monkeypatch: Any) -> None:
    dropper = openssl_peer_key._dropper()
    assert dropper is not None
    wrong = openssl_peer_key._Dropper(dropper.ctrl, dropper.offset + 8)
    monkeypatch.setattr(openssl_peer_key, "_state",
                        {"dropper": wrong, "reason": "", "tried": True})
    server, client = handshaken(contexts)
    before = bytes(ffi.buffer(ffi.cast("char *", server._ssl), 4096))
    assert not openssl_peer_key.drop(server)
    assert bytes(ffi.buffer(ffi.cast("char *", server._ssl), 4096)) == before
    assert openssl_peer_key.status()[0] is False
    assert not openssl_peer_key.drop(server)
    monkeypatch.undo()
    assert peer_key(server) is not None


@audited
def test_a_set_up_that_fails_unexpectedly_leaves_connections_alone(contexts: Any,
                                                                   monkeypatch: Any) -> None:
    def broken() -> None:
        raise OSError("the extension module cannot be read")

    monkeypatch.setattr(openssl_peer_key, "_set_up", broken)
    monkeypatch.setattr(openssl_peer_key, "_state",
                        {"dropper": None, "reason": "", "tried": False})
    server, client = handshaken(contexts)
    assert not openssl_peer_key.drop(server)
    assert openssl_peer_key.status() == (False, "setting up failed: OSError("
                                         "'the extension module cannot be read')")
    monkeypatch.undo()
    assert peer_key(server) is not None
