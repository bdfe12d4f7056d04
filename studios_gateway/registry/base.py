"""The session registry's vocabulary: records, tunnel holders, errors, the store interface.

A session record says that a studio session exists, who may reach it and the
hash of its connect token. A tunnel holder says which node holds the session's
tunnel right now; it lives under a TTL that the holding node refreshes, so a
node that dies stops holding its tunnels by itself. Claiming a tunnel replaces
any previous holder atomically; refreshing and releasing act only on a holder
that is still ours (same tunnel id and node), so a node never deletes what
another node owns.

Every store method returns a Deferred. A store that cannot reach its backend
fails with StoreUnavailable, quickly, and recovers by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

__all__ = [
    "SESSION_ID",
    "Invalidation",
    "MalformedRecord",
    "RegistryError",
    "SessionExists",
    "SessionNotFound",
    "SessionRecord",
    "SessionStore",
    "StoreUnavailable",
    "TunnelHolder",
    "hash_token",
    "new_token",
    "token_matches",
]

#: A session id is one DNS label (it becomes a subdomain): lowercase letters, digits, '-'.
SESSION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TOKEN_BYTES = 32
_HASH_PREFIX = "sha256:"

#: subscribe() callbacks get a session id, or None meaning "anything may have changed".
Invalidation = Callable[[str | None], Any]


class RegistryError(Exception):
    """Base of the registry's errors."""


class SessionExists(RegistryError):
    """A session with this id exists already."""


class SessionNotFound(RegistryError):
    """No session with this id."""


class StoreUnavailable(RegistryError):
    """The store's backend cannot be reached or refused to answer; `reason` says what."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MalformedRecord(RegistryError, ValueError):
    """Stored or received data is not a valid record; the message says which field."""


# Records ----------------------------------------------------------------------------


def _need(data: dict[str, Any], key: str, kind: str, check: Callable[[Any], bool]) -> Any:
    if key not in data:
        raise MalformedRecord(f"field {key!r} is missing")
    value = data[key]
    if not check(value):
        raise MalformedRecord(f"field {key!r} must be {kind}, not {value!r:.80}")
    return value


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 1024


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _load_object(text: str | bytes, what: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRecord(f"{what} is not UTF-8") from None
    if not isinstance(text, str):
        raise MalformedRecord(f"{what} must be JSON text, not {type(text).__name__}")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise MalformedRecord(f"{what} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MalformedRecord(f"{what} must be a JSON object")
    return data


@dataclass(frozen=True)
class SessionRecord:
    """A studio session: who owns it, who else may use it, its token's hash."""

    id: str
    workspace_id: str | None
    tool: str
    owner: str
    allowed_users: tuple[str, ...]
    ssh_enabled: bool
    token_hash: str = field(repr=False)
    created_at: float

    def __post_init__(self) -> None:
        if not isinstance(self.allowed_users, tuple):
            object.__setattr__(self, "allowed_users", tuple(self.allowed_users))
        self.validate()

    def validate(self) -> None:
        """Raise MalformedRecord naming the first bad field."""
        _check_record(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allowed_users"] = list(self.allowed_users)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionRecord:
        """From a decoded JSON object; unknown keys are ignored (newer nodes may add some)."""
        _check_record(data)
        return cls(id=data["id"], workspace_id=data["workspace_id"], tool=data["tool"],
                   owner=data["owner"], allowed_users=tuple(data["allowed_users"]),
                   ssh_enabled=data["ssh_enabled"], token_hash=data["token_hash"],
                   created_at=float(data["created_at"]))

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        return cls.from_dict(_load_object(text, "session record"))


def _check_record(data: dict[str, Any]) -> None:
    _need(data, "id", "a session id (1-63 lowercase letters, digits or '-')",
          lambda v: isinstance(v, str) and SESSION_ID.fullmatch(v) is not None)
    _need(data, "workspace_id", "text or null", lambda v: v is None or _is_text(v))
    _need(data, "tool", "non-empty text", _is_text)
    _need(data, "owner", "non-empty text", _is_text)
    _need(data, "allowed_users", "a list of non-empty texts",
          lambda v: isinstance(v, list | tuple) and all(_is_text(u) for u in v))
    _need(data, "ssh_enabled", "true or false", lambda v: isinstance(v, bool))
    _need(data, "token_hash", "non-empty text", _is_text)
    _need(data, "created_at", "a finite number", _is_number)


@dataclass(frozen=True)
class TunnelHolder:
    """The node that holds a session's tunnel, and how to reach it."""

    session_id: str
    node_id: str
    node_address: str
    tunnel_id: str
    client_version: str
    tool_port: int
    bound_at: float

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_holder(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TunnelHolder:
        _check_holder(data)
        return cls(session_id=data["session_id"], node_id=data["node_id"],
                   node_address=data["node_address"], tunnel_id=data["tunnel_id"],
                   client_version=data["client_version"], tool_port=data["tool_port"],
                   bound_at=float(data["bound_at"]))

    @classmethod
    def from_json(cls, text: str | bytes) -> TunnelHolder:
        return cls.from_dict(_load_object(text, "tunnel holder"))


def _check_holder(data: dict[str, Any]) -> None:
    _need(data, "session_id", "a session id",
          lambda v: isinstance(v, str) and SESSION_ID.fullmatch(v) is not None)
    _need(data, "node_id", "non-empty text", _is_text)
    _need(data, "node_address", "text", lambda v: isinstance(v, str) and len(v) <= 1024)
    _need(data, "tunnel_id", "non-empty text", _is_text)
    _need(data, "client_version", "text", lambda v: isinstance(v, str) and len(v) <= 64)
    _need(data, "tool_port", "a port number (1-65535)",
          lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535)
    _need(data, "bound_at", "a finite number", _is_number)


# Tokens -----------------------------------------------------------------------------


def new_token() -> str:
    """A fresh connect token: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What the registry stores instead of the token. Tokens are 256-bit random, so a
    plain SHA-256 is enough (no password stretching needed)."""
    return _HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Whether `token` hashes to `token_hash`, compared in constant time."""
    if not isinstance(token, str) or not isinstance(token_hash, str):
        return False
    return hmac.compare_digest(hash_token(token).encode(), token_hash.encode("utf-8", "replace"))


# The interface ----------------------------------------------------------------------


class SessionStore(Protocol):
    """What the gateway needs from a session registry. Every method returns a Deferred;
    when the backend is unreachable they fail with StoreUnavailable."""

    def start(self) -> None:
        """Connect (if there is anything to connect to); returns at once."""

    def stop(self) -> Deferred[None] | None:
        """Disconnect; the Deferred fires when done."""

    def ping(self) -> Deferred[None]:
        """Succeeds when the backend answers."""

    def create(self, record: SessionRecord) -> Deferred[None]:
        """Store a new session; SessionExists if the id is taken."""

    def get(self, session_id: str) -> Deferred[SessionRecord | None]:
        """The session, or None."""

    def list_sessions(self) -> Deferred[list[SessionRecord]]:
        """Every session (in no particular order)."""

    def update(self, record: SessionRecord) -> Deferred[None]:
        """Replace a session's record; SessionNotFound if it does not exist."""

    def delete(self, session_id: str) -> Deferred[bool]:
        """Delete a session and its tunnel holder; whether the session existed."""

    def claim_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[TunnelHolder | None]:
        """Make `holder` the session's tunnel holder for `ttl` seconds, replacing any
        previous one atomically; returns the previous holder. SessionNotFound if the
        session does not exist."""

    def refresh_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[bool]:
        """Extend the holder's TTL to `ttl` if it is still ours (same tunnel and node)."""

    def release_tunnel(self, holder: TunnelHolder) -> Deferred[bool]:
        """Delete the holder if it is still ours; whether it was."""

    def get_tunnel(self, session_id: str) -> Deferred[TunnelHolder | None]:
        """The session's current tunnel holder, or None."""

    def subscribe(self, callback: Invalidation) -> Callable[[], None]:
        """Call `callback(session_id)` whenever any node changes a session or its tunnel
        (and `callback(None)` when changes may have been missed). Returns an
        unsubscribe function."""
