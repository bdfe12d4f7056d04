"""SSH keys: the gateway's host key, fingerprints, and users' registered public keys.

The host key comes from CONNECT_SSH_KEY_PATH (wins) or CONNECT_SSH_KEY_VALUE_BASE64;
ed25519, RSA and ECDSA keys in OpenSSH or PEM format are accepted. With neither,
an ed25519 key is generated once under ``<CONNECT_STORAGE_ROOT>/ssh/`` (mode 0600)
and a warning says so. The same key authenticates the gateway to the studios'
SSH servers, which pin its fingerprint.

Users' public keys live behind :class:`UserKeys` (``async accepts(user, key)``).
The gateway keeps them in the session registry (:mod:`studios_gateway.ssh.user_keys`),
which imports an older version's ``<storage root>/ssh/user_keys.json`` once.
Keys are never logged, only fingerprints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.logger import Logger

from studios_gateway.registry.base import (
    MAX_USER_KEY_LENGTH,
    MAX_USER_KEYS,
    key_blob,
    unique_keys,
)

__all__ = [
    "HostKeyError",
    "KeysUnavailable",
    "UserKeys",
    "fingerprint",
    "load_host_key",
    "parse_public_keys",
]

_log = Logger()

GENERATED_NAME = "ssh_host_ed25519_key"
ACCEPTED_TYPES = {"Ed25519", "RSA", "EC"}
#: Registered user key types (no DSA, no certificates).
USER_KEY_TYPES = {b"ssh-ed25519", b"ssh-rsa", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
                  b"ecdsa-sha2-nistp521", b"sk-ssh-ed25519@openssh.com",
                  b"sk-ecdsa-sha2-nistp256@openssh.com"}
MAX_KEYS_PER_USER = MAX_USER_KEYS
#: A user name: what may stand before the last '@' of an SSH login name.
_USER = re.compile(r"[^\s/\x00-\x1f]{1,256}")


class HostKeyError(ValueError):
    """The host key cannot be used; the message names the variable and the problem."""


def fingerprint(key: Key) -> str:
    """OpenSSH's SHA256 fingerprint of a (public or private) key: ``SHA256:<base64>``."""
    digest = hashlib.sha256(key.public().blob()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _check_private(key: Key, source: str) -> Key:
    if not key.isPublic() and key.type() in ACCEPTED_TYPES:
        if key.type() == "RSA" and key.size() < 2048:
            raise HostKeyError(f"{source}: RSA host keys must have at least 2048 bits")
        return key
    raise HostKeyError(f"{source}: expected an ed25519, RSA or ECDSA private key, "
                       f"not {'a public key' if key.isPublic() else key.type()}")


def _parse(data: bytes, source: str) -> Key:
    try:
        key = Key.fromString(data)
    except (BadKeyError, ValueError, TypeError) as e:
        key = _from_pkcs8(data)  # Conch reads OpenSSH and traditional PEM, not PKCS#8
        if key is None and b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
            raise HostKeyError(f"{source}: cannot read the key (it is encrypted: host keys "
                               "must not have a passphrase)") from None
        if key is None:
            raise HostKeyError(f"{source}: not a usable private key ({e.__class__.__name__}; "
                               "an unencrypted OpenSSH or PEM key is expected)") from None
    except Exception as e:  # encrypted keys raise EncryptedKeyError and friends
        raise HostKeyError(f"{source}: cannot read the key ({e.__class__.__name__}; "
                           "is it encrypted? host keys must not have a passphrase)") from None
    return _check_private(key, source)


def _from_pkcs8(data: bytes) -> Key | None:
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    if not isinstance(private, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
                      | ec.EllipticCurvePrivateKey):
        return None
    return Key(private)


def load_host_key(path: str | None, value: bytes | None, storage_root: str) -> Key:
    """The host key the config asks for; generate and keep one when none is given."""
    if path:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise HostKeyError(f"CONNECT_SSH_KEY_PATH={path!r}: cannot read ({e.strerror})")
        return _parse(data, f"CONNECT_SSH_KEY_PATH={path!r}")
    if value:
        return _parse(value, "CONNECT_SSH_KEY_VALUE_BASE64")
    return generated_host_key(Path(storage_root) / "ssh")


def kept_host_key(target: Path, data: bytes) -> Key:
    """The generated host key kept in `target` (its bytes `data`); HostKeyError saying what
    to do when it is damaged (a restore cut short, a full disk when it was written)."""
    try:
        return _parse(data, str(target))
    except HostKeyError as e:
        raise HostKeyError(f"{e} (the host key the gateway generated, as no "
                           "CONNECT_SSH_KEY_PATH is set): restore it from a backup, or remove "
                           "it to have a new one made (ssh clients then warn that the host "
                           "key changed)") from None


def generated_host_key(directory: Path) -> Key:
    """The ed25519 host key kept in `directory` (GENERATED_NAME, mode 0600), made there
    first when there is none."""
    target = directory / GENERATED_NAME
    if target.exists():
        key = kept_host_key(target, target.read_bytes())
        # (the start's config warning says what to set: one line of each, not two warnings)
        _log.info("SSH: using the host key generated at an earlier start, {path} ({fp})",
                  path=str(target), fp=fingerprint(key))
        return key
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Key(ed25519.Ed25519PrivateKey.generate())
    tmp = directory / f".{GENERATED_NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.toString("OPENSSH"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, target)  # first writer wins when several processes start at once
    except FileExistsError:
        os.unlink(tmp)
        return kept_host_key(target, target.read_bytes())
    os.unlink(tmp)
    _log.info("SSH: generated a host key, {path} ({fp})", path=str(target),
              fp=fingerprint(key))
    return key


# Users' keys ----------------------------------------------------------------------------


def valid_user(user: str) -> bool:
    return isinstance(user, str) and _USER.fullmatch(user) is not None


def parse_public_keys(text: str) -> list[str]:
    """authorized_keys-style lines -> normalised ``<type> <base64> [comment]`` lines.

    Raises ValueError naming the first bad line. Options (``from=...``) are refused.
    """
    out: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[0].encode() not in USER_KEY_TYPES:
            raise ValueError(f"line {n}: expected '<key type> <base64> [comment]' with a key "
                             "type of ssh-ed25519, ssh-rsa, ecdsa-sha2-* or sk-*")
        try:
            key = Key.fromString(" ".join(parts[:2]).encode())
        except Exception:
            raise ValueError(f"line {n}: the key does not parse") from None
        if key.type() == "RSA" and key.size() < 2048:
            raise ValueError(f"line {n}: RSA keys must have at least 2048 bits")
        normal = " ".join(parts)
        if len(normal.encode()) > MAX_USER_KEY_LENGTH:
            raise ValueError(f"line {n}: longer than {MAX_USER_KEY_LENGTH} bytes")
        out.append(normal)
    out = unique_keys(out)
    if len(out) > MAX_KEYS_PER_USER:
        raise ValueError(f"at most {MAX_KEYS_PER_USER} keys per user")
    return out


def key_blobs(lines: list[str]) -> set[bytes]:
    """The keys (decoded blobs) of authorized_keys-style lines; unreadable lines are skipped."""
    out = set()
    for line in lines:
        try:
            out.add(base64.b64decode(key_blob(line), validate=True))
        except (IndexError, binascii.Error, ValueError):
            continue
    return out


class KeysUnavailable(Exception):
    """The user's keys cannot be looked up right now; the message is for the user."""


class UserKeys(Protocol):
    """Where users' SSH public keys come from."""

    async def accepts(self, user: str, key: Key) -> bool:
        """Whether `user` may log in with the public `key`. KeysUnavailable when that
        cannot be decided now (the registry or the Platform does not answer)."""
        ...


def key_file_path(storage_root: str) -> Path:
    """Where users' keys are kept on disk: a single node's store, or the file an upgrade
    imports into Redis."""
    return Path(storage_root) / "ssh" / "user_keys.json"


def read_key_file(path: Path) -> dict[str, list[str]]:
    """The users and key lines of a ``{"users": {user: [lines]}}`` file (none if absent)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    users = data.get("users", {}) if isinstance(data, dict) else {}
    return {user: [str(x) for x in lines] for user, lines in users.items()
            if valid_user(user) and isinstance(lines, list)}


def write_key_file(path: Path, users: dict[str, list[str]]) -> None:
    """Write the file atomically (mode 0600, its directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps({"users": users}, indent=1, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
