"""An operator's certificate and key files, read with what is wrong said in their words.

OpenSSL's own loader asked for a passphrase on the terminal when a key file was
encrypted (``Enter PEM pass phrase:``, twice, and the start or ``check-config`` waited
for it), and its failures reached the operator as a list of library tuples (``[('x509
certificate routines', '', 'key values mismatch')]``). Here a key is read without any
prompt, and each failure is one reason: no PEM block of that kind (or the other kind:
the files swapped), a key encrypted with a passphrase, a key that is not the
certificate's. The reason names the file; the caller adds the variable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

__all__ = ["PemError", "load_ca", "load_chain", "load_key", "load_pair", "loaded", "problem",
           "refused", "refusal"]

T = TypeVar("T")


class PemError(ValueError):
    """A certificate or key file that cannot be used. `which` is ``"cert"``, ``"key"`` or
    ``"ca"`` (the file to fix), `path` that file, and the message the reason alone."""

    def __init__(self, which: str, path: str | Path, reason: str) -> None:
        super().__init__(reason)
        self.which, self.path = which, str(path)


def _read(which: str, path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise PemError(which, path, f"cannot be read ({e.strerror or e})") from None


def _swapped(data: bytes, other: bytes, what: str) -> str:
    return (f"; it holds {what}: are the certificate and key files swapped?"
            if other in data else "")


def load_chain(path: str | Path) -> list[x509.Certificate]:
    """The certificates of a PEM chain file, leaf first."""
    data = _read("cert", path)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PemError("cert", path, "holds no PEM certificate (a '-----BEGIN CERTIFICATE-----'"
                       " block)" + _swapped(data, b"PRIVATE KEY-----", "a private key")) from None


def load_key(path: str | Path) -> crypto.PKey:
    """The private key of a PEM file, never asking for a passphrase."""
    data = _read("key", path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for an encrypted key given no password
        raise PemError("key", path, "holds a private key encrypted with a passphrase, which "
                       "the gateway has no way to be given: write it out unencrypted (openssl "
                       f"pkey -in {path} -out NEW_FILE), readable only by the gateway's "
                       "user") from None
    except (ValueError, UnsupportedAlgorithm):
        swapped = _swapped(data, b"BEGIN CERTIFICATE", "a certificate")
        raise PemError("key", path, "holds no PEM private key (a '-----BEGIN PRIVATE "
                       "KEY-----' block)" + swapped) from None
    return crypto.PKey.from_cryptography_key(key)  # type: ignore[arg-type]




def load_pair(cert_path: str | Path, key_path: str | Path
              ) -> tuple[list[x509.Certificate], crypto.PKey]:
    """The chain and its key, checked to belong together."""
    chain = load_chain(cert_path)
    key = load_key(key_path)
    ours = chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != crypto.dump_publickey(crypto.FILETYPE_ASN1, key):
        raise PemError("key", key_path, f"is not the key of the certificate in {cert_path} "
                       "(their public keys differ): give the key that certificate was "
                       "issued for")
    return chain, key


def load_ca(path: str | Path) -> x509.Certificate:
    """The first certificate of a CA file (a PemError says ``"ca"``)."""
    try:
        return load_chain(path)[0]
    except PemError as e:  # the CA's file: name it as such
        raise PemError("ca", e.path, str(e).split(":")[0]) from None


def problem(error: PemError, prefix: str) -> str:
    """One line for the operator: the variable of the file to fix (PREFIX_CERT_FILE,
    _KEY_FILE or _CA_FILE), its value, the reason."""
    return f"{prefix}_{error.which.upper()}_FILE={error.path!r} {error}"


def refused(error: Exception, prefix: str) -> str:
    """Why the files PREFIX_CERT_FILE, _KEY_FILE and _CA_FILE name were refused, in one
    line: `error` is what making TLS options of them raised."""
    if isinstance(error, PemError):  # no PEM of that kind, an encrypted key, not the pair
        return problem(error, prefix)
    # what OpenSSL alone refuses: one line still
    return f"{prefix}_*_FILE: cannot load the certificate and key ({error})"


def loaded(load: Callable[[], T], prefix: str) -> tuple[T | None, str | None]:
    """What `load` makes of the files PREFIX_CERT_FILE, _KEY_FILE and _CA_FILE name (TLS
    options) and None; or None and why it refuses them, in one line. The start takes
    the options it checked (the files read once)."""
    try:
        return load(), None
    except Exception as e:
        return None, refused(e, prefix)


def refusal(load: Callable[[], object], prefix: str) -> str | None:
    """Why `load` (TLS options made from the files PREFIX_CERT_FILE, _KEY_FILE and
    _CA_FILE name) refuses them, in one line; None when it takes them."""
    return loaded(load, prefix)[1]
