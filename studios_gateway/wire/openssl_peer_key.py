"""The one place that writes into OpenSSL's private connection structure.

A TLS 1.3 server connection keeps the client's key share (``s3.peer_tmp``) from
its handshake until the connection is freed. With the hybrid X25519MLKEM768 key
exchange that is the client's ML-KEM-768 public key as OpenSSL holds it, expanded
(its matrix and vector), about 6.8 KiB per connection: a fifth of an idle tunnel's
memory on the gateway. Nothing reads it once the handshake is done, and OpenSSL has
no call to let it go. :func:`drop` frees it, for one audited OpenSSL build only,
checking every step; anywhere else it does nothing.

How, for each connection, once its handshake is done (wire/tls_guard.py calls it):

1. Only a TLS 1.3 connection (``SSL_version``): no renegotiation can follow.
2. ``SSL_ctrl(SSL_CTRL_GET_PEER_TMP_KEY)`` (``SSL_get_peer_tmp_key``, the public
   getter) returns the key, with a reference for the caller.
3. The word at :data:`AUDITED`'s offset in the connection (``s3.peer_tmp`` in that
   build) must be that very pointer; otherwise nothing is written and the feature
   turns itself off.
4. The word is set to NULL, and the getter asked again must now find no key (so the
   word written is the one OpenSSL reads); otherwise the word is put back at once
   and the feature turns itself off.
5. The two references (the getter's and the connection's) are released:
   ``EVP_PKEY_free`` frees the key when nobody else holds it.

The getter is not in the bindings pyOpenSSL uses, so ``SSL_ctrl`` is called at the
address the extension module's symbol table gives; that table is checked against
the loaded module first (the bindings' own function addresses must be where the
table says). Everything is set up and tried once, on a handshake in memory, at the
first call: any failure leaves the connection structure untouched from then on
(:func:`status` says why, and the gateway logs it). On a build that is not audited
(another cryptography release, another machine) the tests that need the drop are
skipped with that reason, so an upgrade is seen and audited again without turning
every build red meanwhile.
The safety argument and the audit: docs/decisions/openssl-peer-key.md.
"""

from __future__ import annotations

import platform
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.logger import Logger

from studios_gateway.wire import openssl_private as _private

__all__ = ["AUDITED", "AUDITED_MACHINES", "audited_here", "drop", "status"]

_log = Logger()

#: (OpenSSL version text, cryptography version) -> offset of ``s3.peer_tmp`` in the
#: connection structure, for the builds audited (docs/decisions/openssl-peer-key.md).
AUDITED: dict[tuple[str, str], int] = {
    ("OpenSSL 4.0.3 29 Sep 2026", "50.0.2"): 0x4E0,
}

#: The machines the audits were made on (a wheel of the same version for another
#: architecture is other code).
AUDITED_MACHINES = ("x86_64",)

SSL_CTRL_GET_PEER_TMP_KEY = 109
TLS1_3_VERSION = 0x0304
#: The function called by address (openssl_private.module_functions).
_CTRL = "SSL_ctrl"


def audited_here() -> bool:
    """Whether this process runs an audited OpenSSL build on an audited machine."""
    import cryptography

    lib, ffi = _private.lib, _private.ffi
    if not _private.AVAILABLE or platform.machine() not in AUDITED_MACHINES:
        return False
    return (ffi.string(lib.OpenSSL_version(0)).decode(), cryptography.__version__) in AUDITED


class _Dropper:
    def __init__(self, ctrl: Any, offset: int):
        self.ctrl = ctrl
        self.offset = offset


_state: dict[str, Any] = {"dropper": None, "reason": "not set up yet", "tried": False}


def status() -> tuple[bool, str]:
    """(in use, why not); sets up on the first call."""
    _dropper()
    return _state["dropper"] is not None, _state["reason"]


def drop(conn: SSL.Connection) -> bool:
    """Free the peer's key share ``conn`` keeps after its TLS 1.3 handshake (a server
    connection whose handshake is done). True if it was freed; False (nothing
    written) otherwise."""
    dropper = _dropper()
    if dropper is None:
        return False
    lib, ffi = _private.lib, _private.ffi
    ssl = getattr(conn, "_ssl", None)
    if ssl is None or lib.SSL_version(ssl) != TLS1_3_VERSION:
        return False
    out = ffi.new("EVP_PKEY **")
    if dropper.ctrl(ssl, SSL_CTRL_GET_PEER_TMP_KEY, 0, out) != 1 or out[0] == ffi.NULL:
        return False
    key = out[0]
    slot = ffi.cast("EVP_PKEY **", ffi.cast("char *", ssl) + dropper.offset)
    if slot[0] != key:
        lib.EVP_PKEY_free(key)
        _off("the connection's key share was not where the audit found it")
        return False
    slot[0] = ffi.NULL
    out[0] = ffi.NULL
    if dropper.ctrl(ssl, SSL_CTRL_GET_PEER_TMP_KEY, 0, out) != 0:
        slot[0] = key  # not the word OpenSSL reads: as it was
        if out[0] != ffi.NULL:
            lib.EVP_PKEY_free(out[0])
        lib.EVP_PKEY_free(key)
        _off("OpenSSL still had a key share after the audited word was cleared")
        return False
    lib.EVP_PKEY_free(key)  # the getter's reference
    lib.EVP_PKEY_free(key)  # the connection's
    return True


def _off(reason: str) -> None:
    _state["dropper"] = None
    _state["reason"] = reason
    _log.warn("TLS: peer key shares are kept from now on: {reason}", reason=reason)


def _dropper() -> _Dropper | None:
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["dropper"], _state["reason"] = _set_up(), ""
        except _private.Unreachable as e:  # (_NotHere among them)
            _state["reason"] = str(e)
            _log.info("TLS: peer key shares are kept after the handshake: {reason}",
                      reason=str(e))
        except Exception as e:  # whatever went wrong, the connections are not to pay
            _state["reason"] = f"setting up failed: {e!r}"
            _log.failure("TLS: peer key shares are kept after the handshake")
    dropper: _Dropper | None = _state["dropper"]
    return dropper


class _NotHere(_private.Unreachable):
    """This process cannot drop key shares safely (the message says why)."""


def _set_up() -> _Dropper:
    if not _private.AVAILABLE:
        raise _NotHere("pyOpenSSL's private bindings are missing")
    import cryptography

    lib, ffi = _private.lib, _private.ffi
    if platform.machine() not in AUDITED_MACHINES:
        raise _NotHere(f"audited on {', '.join(AUDITED_MACHINES)} only, this is "
                       f"{platform.machine()}")
    version = ffi.string(lib.OpenSSL_version(0)).decode()
    offset = AUDITED.get((version, cryptography.__version__))
    if offset is None:
        raise _NotHere(f"{version} in cryptography {cryptography.__version__} is not an "
                       "audited build")
    address = _private.module_functions([_CTRL])[_CTRL]
    dropper = _Dropper(ffi.cast("long (*)(SSL *, int, long, void *)", address), offset)
    _try_on_a_handshake(dropper)
    return dropper


def _try_on_a_handshake(dropper: _Dropper) -> None:
    """Drop the key share of a TLS 1.3 connection made in memory with OpenSSL's default
    groups, then check the connection still carries data both ways."""
    server, client = handshaken_pair()
    was = _state["dropper"]
    _state["dropper"] = dropper
    try:
        if not drop(server):
            raise _NotHere(_state["reason"] or "the trial connection kept its key share")
    finally:
        _state["dropper"] = was
    client.send(b"ping")
    _move(client, server)
    server.send(server.recv(16) + b"/pong")
    _move(client, server)
    if client.recv(16) != b"ping/pong":
        raise _NotHere("the trial connection did not carry data after the drop")


def handshaken_pair(server_ctx: SSL.Context | None = None,
                    client_ctx: SSL.Context | None = None) -> tuple[SSL.Connection,
                                                                     SSL.Connection]:
    """(server, client): two memory-BIO connections with their handshake done, by default
    with a throwaway certificate and OpenSSL's default groups (the trial, the tests and
    bench/peer_key_audit.py)."""
    if server_ctx is None:
        from studios_gateway.wire import tls

        cert_pem, key_pem = tls.make_self_signed(["localhost"], days=1)
        server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        server_ctx.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        server_ctx.use_privatekey(
            serialization.load_pem_private_key(key_pem, None))  # type: ignore[arg-type]
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx or SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        done = 0
        for one in (client, server):
            try:
                one.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
        _move(client, server)
        if done == 2:
            return server, client
    raise _NotHere("the trial handshake did not finish")


def _move(client: SSL.Connection, server: SSL.Connection) -> None:
    """What each memory connection wrote, to the other."""
    for one, other in ((client, server), (server, client)):
        try:
            other.bio_write(one.bio_read(1 << 16))
        except SSL.WantReadError:
            pass
