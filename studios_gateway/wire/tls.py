"""TLS for the tunnel: the gateway's certificate and the client's check of it.

With CONNECT_TLS_CERT_FILE/KEY_FILE the gateway serves that chain, and the
client verifies it against the system's roots and the host name. Without,
the gateway makes a self-signed certificate once, keeps it under
CONNECT_STORAGE_ROOT/tunnel/, and the client pins its SHA-256 fingerprint
(the pin travels in the connect string).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

_log = Logger()

PIN_PREFIX = "sha256:"


def fingerprint_pem(cert_pem: bytes) -> str:
    """'sha256:<hex>' of the first certificate in a PEM blob (DER bytes hashed)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return PIN_PREFIX + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_self_signed(names: list[str], days: int = 3650) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for a new P-256 key covering `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alt: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Create (once) and return the paths of a kept self-signed certificate and key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if not (cert_path.exists() and key_path.exists()):
        cert_pem, key_pem = make_self_signed(names)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        cert_path.write_bytes(cert_pem)
        _log.warn("no CONNECT_TLS_CERT_FILE: made a self-signed tunnel certificate in "
                  "{directory}; clients pin {pin}", directory=str(directory),
                  pin=fingerprint_pem(cert_pem))
    return cert_path, key_path


#: What the HTTPS listener answers a client's ALPN offer with (HTTP/1.1 only; no h2).
HTTP_ALPN = (b"http/1.1",)


def server_options(cert_path: str | Path, key_path: str | Path,
                   alpn: tuple[bytes, ...] = ()) -> ssl.CertificateOptions:
    """Server TLS options serving the chain in `cert_path` (leaf first) with its key;
    a client's ALPN offer is answered with the first of `alpn` it names, or not at all.
    A file that will not do raises pem_files.PemError saying why (never a prompt for a
    key's passphrase)."""
    from studios_gateway.pem_files import load_pair

    certs, key = load_pair(cert_path, key_path)
    leaf, *extra = [crypto.X509.from_cryptography(c) for c in certs]
    options = ssl.CertificateOptions(
        privateKey=key, certificate=leaf, extraCertChain=extra or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    answer_alpn(options.getContext(), alpn)
    return options


def https_server_options(cert_path: str | Path,
                         key_path: str | Path) -> ssl.CertificateOptions:
    """:func:`server_options` for the HTTPS listener: ALPN's http/1.1 when offered."""
    return server_options(cert_path, key_path, HTTP_ALPN)


def answer_alpn(context: SSL.Context, protocols: tuple[bytes, ...]) -> None:
    """Answer a client's ALPN offer with the first of `protocols` it names; when it
    names none of them, the handshake goes on without ALPN (RFC 7301 lets a server do
    so), as OpenSSL does with no callback.

    Needed because Twisted's CertificateOptions (26.x) installs a callback of its own
    even with no protocols, which answers such an offer with an empty name, which
    OpenSSL takes as a failure: the handshake of every client that offers ALPN (every
    browser, curl, Python's default HTTPS context) ended in an 'internal error' alert."""

    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(select)


def tunnel_server_options(cert_path: str | Path,
                          key_path: str | Path) -> ssl.CertificateOptions:
    """:func:`server_options` for the tunnel's listener, which sends no session tickets.

    A TLS 1.3 server sends two tickets after each handshake by default, so that the
    client can resume the session later. A connect client never resumes (every
    attempt is a full handshake, and a studio binds once per connection), so the
    tickets only cost each bind: the gateway makes and seals them, and the studio reads
    them and keeps a session it will not use. Browsers do resume, so the HTTPS
    listener keeps them (docs/decisions/tls-handshakes.md, "Session tickets")."""
    options = server_options(cert_path, key_path)
    send_no_tickets(options.getContext())
    return options


def send_no_tickets(context: SSL.Context) -> bool:
    """Have a server context send no TLS 1.3 session tickets; True when it will not.

    pyOpenSSL does not offer ``SSL_CTX_set_num_tickets`` (OpenSSL 1.1.1 and later), so
    it is called where the extension module's symbol table places it
    (wire/openssl_private.py). Where that cannot be done the context is left as it is
    (tickets sent, a bind a little dearer) and the gateway says why once."""
    functions = _ticket_functions()
    if functions is None:
        return False
    set_num, get_num = functions
    raw = context._context  # noqa: SLF001 - the SSL_CTX the bindings take
    return bool(set_num(raw, 0) == 1 and get_num(raw) == 0)


@functools.cache
def _ticket_functions() -> tuple[Any, Any] | None:
    from studios_gateway.wire import openssl_private

    names = ["SSL_CTX_set_num_tickets", "SSL_CTX_get_num_tickets"]
    try:
        found = openssl_private.module_functions(names)
    except openssl_private.Unreachable as e:
        _log.info("TLS: the tunnel's listener sends session tickets (unused): {why}",
                  why=str(e))
        return None
    ffi = openssl_private.ffi
    return (ffi.cast("int (*)(SSL_CTX *, size_t)", found[names[0]]),
            ffi.cast("size_t (*)(SSL_CTX *)", found[names[1]]))


class PinMismatch(SSL.Error):
    """The gateway's certificate is not the pinned one: retrying cannot help."""

    def __init__(self, expected: str, seen: str):
        self.message = (f"the gateway's tunnel certificate is {seen}, not the pinned {expected} "
                        "(the connect string's pin is wrong or the gateway's certificate "
                        "changed: take a new connect string)")
        # Shaped like OpenSSL's error queue, which Twisted's TLS layer reads.
        super().__init__([("studios-gateway", "pin check", self.message)])
        self.expected = expected
        self.seen = seen

    def __str__(self) -> str:
        return self.message


@implementer(IOpenSSLClientConnectionCreator)
class PinnedClientTLS:
    """Client TLS that accepts exactly one server certificate, by SHA-256 fingerprint."""

    def __init__(self, pin: str):
        if not pin.startswith(PIN_PREFIX) or len(pin) != len(PIN_PREFIX) + 64:
            raise ValueError(f"a pin of the form {PIN_PREFIX}<64 hex digits>")
        self._digest = bytes.fromhex(pin[len(PIN_PREFIX):])
        self._pin = pin
        self._ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        # Free OpenSSL's ~32 KiB of record buffers while the tunnel is idle, as
        # Twisted's CertificateOptions (the gateway's side) already does.
        self._ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        self._ctx.set_verify(SSL.VERIFY_PEER, self._verify)

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
        if depth != 0:
            return True  # only the leaf matters; it is compared below
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        digest = hashlib.sha256(der).digest()
        if hmac.compare_digest(digest, self._digest):
            return True
        # pyOpenSSL re-raises this from the handshake, and Twisted hands it (an SSL.Error)
        # to the protocol's connectionLost: the client can tell a wrong pin from a fault.
        raise PinMismatch(self._pin, PIN_PREFIX + digest.hex())

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        return conn


@functools.lru_cache(maxsize=32)
def client_options(host: str, pin: str | None) -> IOpenSSLClientConnectionCreator:
    """Pin when the connect string carries a pin; otherwise verify host and chain.

    One object per (host, pin) for the process's life: its OpenSSL context costs
    ~15 KiB and ~0.13 ms to make when pinned (far more with the system's roots,
    which are read once, so a changed CA bundle needs a restart), and every
    connection attempt to a gateway can share it.
    """
    if pin:
        return PinnedClientTLS(pin)
    return ssl.optionsForClientTLS(host)


def handshake_failure(reason: object) -> str | None:
    """Why a TLS handshake failed, in words, when `reason` (a Failure) says it did."""
    from service_identity import VerificationError
    from twisted.python.failure import Failure

    if not isinstance(reason, Failure):
        return None
    if reason.check(PinMismatch):
        return str(reason.value)
    if reason.check(VerificationError):
        return f"the gateway's certificate is not for this host name: {reason.getErrorMessage()}"
    if reason.check(SSL.Error):
        return f"the TLS handshake failed: {reason.getErrorMessage()}"
    return None
