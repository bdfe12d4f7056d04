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

import enum
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from studios_gateway.wire.ids import SESSION_ID_RULE, is_session_id

__all__ = [
    "SINGLE_USE_ID",
    "Invalidation",
    "MAX_USER_KEYS",
    "MAX_USER_KEY_LENGTH",
    "BadUserKeys",
    "MalformedRecord",
    "RegistryError",
    "SessionExists",
    "MAX_NODE_RECORD",
    "MAX_PENDING_LOGIN_BYTES",
    "PendingLogins",
    "Refresh",
    "SessionNotFound",
    "SessionRecord",
    "ConnectionHistory",
    "MAX_SEEN_BYTES",
    "SEEN_TTL",
    "Seen",
    "SessionStore",
    "StoreUnavailable",
    "TunnelHolder",
    "check_pending_login",
    "check_single_use_id",
    "check_user_keys",
    "hash_token",
    "key_blob",
    "unique_keys",
    "new_token",
    "token_matches",
]

#: A session id is one DNS label (it becomes a subdomain): lowercase letters, digits, '-'.
#: A single-use id (a login link's or hand-off code's) or a login id: URL-safe base64.
SINGLE_USE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN_BYTES = 32
_HASH_PREFIX = "sha256:"

#: subscribe() callbacks get a session id, or None meaning "anything may have changed";
#: subscribe_user_keys() callbacks get a user name, or None likewise.
Invalidation = Callable[[str | None], Any]

#: Users' SSH public keys: at most this many per user, each line at most this long
#: (a 16384-bit RSA key with a long comment fits).
MAX_USER_KEYS = 100
MAX_USER_KEY_LENGTH = 8192
_KEY_LINE = re.compile(r"[a-z0-9@.-]{3,64} AAAA[A-Za-z0-9+/]+={0,3}(?: [^\r\n]*)?")


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


class BadUserKeys(RegistryError, ValueError):
    """A user's keys break a limit (count, length) or are not key lines; says which."""


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


@dataclass(frozen=True, slots=True)
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
    # The studio image the session was created for, and what its tag says (None: not
    # given). Records written before these fields existed read as None.
    image: str | None = None
    tool_version: str | None = None
    update_version: str | None = None  # "u1"
    connect_version: str | None = None  # the image's Connect version

    def __post_init__(self) -> None:
        if not isinstance(self.allowed_users, tuple):
            object.__setattr__(self, "allowed_users", tuple(self.allowed_users))
        self.validate()

    def validate(self) -> None:
        """Raise MalformedRecord naming the first bad field."""
        _check_record(self._fields())

    def _fields(self) -> dict[str, Any]:
        # Every value is text, a bool, a number, None or a tuple of text: a plain dict of
        # them, not dataclasses.asdict's deep copy (a record is read at every bind).
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        data = self._fields()
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
                   created_at=float(data["created_at"]),
                   **{k: data.get(k) for k in _IMAGE_FIELDS})

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        return cls.from_dict(_load_object(text, "session record"))


def _check_record(data: dict[str, Any]) -> None:
    _need(data, "id", f"a session id ({SESSION_ID_RULE})", is_session_id)
    _need(data, "workspace_id", "text or null", lambda v: v is None or _is_text(v))
    _need(data, "tool", "non-empty text", _is_text)
    _need(data, "owner", "non-empty text", _is_text)
    _need(data, "allowed_users", "a list of non-empty texts",
          lambda v: isinstance(v, list | tuple) and all(_is_text(u) for u in v))
    _need(data, "ssh_enabled", "true or false", lambda v: isinstance(v, bool))
    _need(data, "token_hash", "non-empty text", _is_text)
    _need(data, "created_at", "a finite number", _is_number)
    for key in _IMAGE_FIELDS:
        _optional(data, key, "text or null", _is_text)


#: A record's optional image fields (absent in records from older nodes).
_IMAGE_FIELDS = ("image", "tool_version", "update_version", "connect_version")
_RECORD_FIELDS = tuple(f.name for f in fields(SessionRecord))


def _optional(data: dict[str, Any], key: str, kind: str, check: Callable[[Any], bool]) -> None:
    """Like _need for a field that may be absent or null."""
    value = data.get(key)
    if value is not None and not check(value):
        raise MalformedRecord(f"field {key!r} must be {kind}, not {value!r:.80}")


@dataclass(frozen=True, slots=True)
class TunnelHolder:
    """The node that holds a session's tunnel, and how to reach it."""

    session_id: str
    node_id: str
    node_address: str
    tunnel_id: str
    client_version: str
    tool_port: int
    bound_at: float
    tool_version: str = ""  # as the studio announced it at bind; "" = it did not say
    #: The studios-connect process that bound it (wire.bind "instance"; "" = not said): a
    #: node whose tunnel another node's claim took tells the same studio moving from a
    #: second one. Older nodes ignore it.
    instance: str = ""


    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_holder(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        # Every field is a str, int or float: no deep copy (dataclasses.asdict makes one
        # of each value, and a holder is made or written at every bind and refresh).
        return {name: getattr(self, name) for name in _HOLDER_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TunnelHolder:
        _check_holder(data)
        return cls(session_id=data["session_id"], node_id=data["node_id"],
                   node_address=data["node_address"], tunnel_id=data["tunnel_id"],
                   client_version=data["client_version"], tool_port=data["tool_port"],
                   bound_at=float(data["bound_at"]),
                   tool_version=data.get("tool_version") or "",
                   instance=data.get("instance") or "")

    @classmethod
    def from_json(cls, text: str | bytes) -> TunnelHolder:
        return cls.from_dict(_load_object(text, "tunnel holder"))


_HOLDER_FIELDS = tuple(f.name for f in fields(TunnelHolder))


def _check_holder(data: dict[str, Any]) -> None:
    _need(data, "session_id", "a session id", is_session_id)
    _need(data, "node_id", "non-empty text", _is_text)
    _need(data, "node_address", "text", lambda v: isinstance(v, str) and len(v) <= 1024)
    _need(data, "tunnel_id", "non-empty text", _is_text)
    _need(data, "client_version", "text", lambda v: isinstance(v, str) and len(v) <= 64)
    _need(data, "tool_port", "a port number (1-65535)",
          lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535)
    _need(data, "bound_at", "a finite number", _is_number)
    _optional(data, "tool_version", "text of at most 64 characters",
              lambda v: isinstance(v, str) and len(v) <= 64)
    _optional(data, "instance", "text of at most 64 characters",
              lambda v: isinstance(v, str) and len(v) <= 64)


@dataclass(frozen=True, slots=True)
class Seen:
    """When a session's studio was last connected, as the registry recorded it: written
    when a tunnel is claimed (a bind) and released (an unbind), never per request.

    ``bound_at``: the last bind (None: no bind since the session was made);
    ``unbound_at``: that tunnel's unbind (None: still bound, or its node ended without
    releasing it: the claim expired). Seconds since the epoch, the writing node's clock."""

    bound_at: float | None = None
    unbound_at: float | None = None

    def to_json(self) -> str:
        data = {k: v for k, v in (("b", self.bound_at), ("u", self.unbound_at))
                if v is not None}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Seen:
        """MalformedRecord unless a JSON object of at most MAX_SEEN_BYTES whose "b" and
        "u" are absent or finite numbers (other keys are ignored: newer nodes may add)."""
        if len(text) > MAX_SEEN_BYTES:
            raise MalformedRecord(f"a last-connected record is longer than "
                                  f"{MAX_SEEN_BYTES} bytes")
        data = _load_object(text, "last-connected record")
        for key in ("b", "u"):
            _optional(data, key, "a finite number", _is_number)
        b, u = data.get("b"), data.get("u")
        return cls(None if b is None else float(b), None if u is None else float(u))


#: The longest last-connected record a node reads (this version's are about 40 bytes).
MAX_SEEN_BYTES = 256
#: How long a shared store keeps a last-connected record after its last write; each bind
#: and unbind starts it again, the session's deletion removes it. A record left behind
#: by a node of an older version (whose deletion does not know the key) goes by itself.
SEEN_TTL = 90 * 24 * 3600.0


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


# Login state -------------------------------------------------------------------------


def check_single_use_id(key: Any, ttl: Any) -> float:
    """`ttl` as seconds; ValueError unless `key` is a single-use or login id (SINGLE_USE_ID)
    and `ttl` a positive number."""
    if not isinstance(key, str) or not SINGLE_USE_ID.fullmatch(key):
        raise ValueError(f"not a single-use or login id: {key!r:.80}")
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
        raise ValueError(f"a lifetime must be a positive number of seconds, not {ttl!r}")
    return float(ttl)


#: The longest node settings record (registry/node_settings.py) a node reads: this
#: version's are about 200 bytes; anyone who can write the Redis must not make every node
#: fetch, parse or log megabytes.
MAX_NODE_RECORD = 4096


#: The largest pending login (an OpenID login between its start and its callback: nonce,
#: PKCE verifier, the page to return to, the browser binding) a shared store keeps.
MAX_PENDING_LOGIN_BYTES = 24 * 1024


def check_pending_login(state: Any, value: Any, ttl: Any) -> float:
    """`ttl` as seconds; ValueError unless `state` is a single-use id, `value` a text of
    at most MAX_PENDING_LOGIN_BYTES (UTF-8) and `ttl` a positive number. The message
    never shows the value (it holds the login's secrets)."""
    seconds = check_single_use_id(state, ttl)
    if not isinstance(value, str):
        raise ValueError("a pending login must be text")
    if len(value.encode("utf-8")) > MAX_PENDING_LOGIN_BYTES:
        raise ValueError(f"a pending login is larger than {MAX_PENDING_LOGIN_BYTES} bytes")
    return seconds


# Users' SSH keys ----------------------------------------------------------------------


def key_blob(line: str) -> str:
    """The base64 key of an authorized_keys-style line ``<type> <base64> [comment]``:
    what identifies the key (the comment does not)."""
    return line.split(" ", 2)[1]


def unique_keys(lines: list[str]) -> list[str]:
    """`lines` without repeated keys (the first of each stays), in order."""
    seen: set[str] = set()
    out = []
    for line in lines:
        if key_blob(line) not in seen:
            seen.add(key_blob(line))
            out.append(line)
    return out


def check_user_keys(user: str, lines: list[str]) -> None:
    """Raise BadUserKeys unless `user` is a plausible user name and `lines` are within the
    limits: normalised key lines (the SSH layer parses the keys themselves), at most
    MAX_USER_KEYS, none longer than MAX_USER_KEY_LENGTH, no key twice."""
    if not isinstance(user, str) or not 0 < len(user) <= 256 \
            or any(c.isspace() or ord(c) < 32 for c in user):
        raise BadUserKeys(f"not a user name: {user!r:.80}")
    if len(lines) > MAX_USER_KEYS:
        raise BadUserKeys(f"at most {MAX_USER_KEYS} keys per user (got {len(lines)})")
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not isinstance(line, str) or len(line.encode("utf-8", "replace")) \
                > MAX_USER_KEY_LENGTH:
            raise BadUserKeys(f"key {n}: longer than {MAX_USER_KEY_LENGTH} bytes")
        if not _KEY_LINE.fullmatch(line):
            raise BadUserKeys(f"key {n}: expected '<key type> <base64> [comment]'")
        if key_blob(line) in seen:
            raise BadUserKeys(f"key {n}: the same key twice")
        seen.add(key_blob(line))


# The interface ----------------------------------------------------------------------


# Narrow interfaces: each part of the gateway names the one it uses in its signatures.
# Every method returns a Deferred; when the backend is unreachable they fail with
# StoreUnavailable. MemoryStore, RedisStore and CachingStore implement all of them
# (SessionStore); the choice between them is made once, in service.build_store.


class StoreLifecycle(Protocol):
    """Connecting to the backend, and asking whether it answers."""

    def start(self) -> None:
        """Connect (if there is anything to connect to); returns at once."""

    def stop(self) -> Deferred[None] | None:
        """Disconnect; the Deferred fires when done."""

    def ping(self) -> Deferred[None]:
        """Succeeds when the backend answers."""


class SessionRecords(Protocol):
    """Sessions: who may reach which studio (the admin API, the HTTP proxy, the authorizer)."""

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

    def subscribe(self, callback: Invalidation) -> Callable[[], None]:
        """Call `callback(session_id)` whenever any node changes a session or its tunnel
        (and `callback(None)` when changes may have been missed). Returns an
        unsubscribe function."""


class Refresh(enum.Enum):
    """What a claim's refresh found (:meth:`TunnelClaims.refresh_tunnels`)."""

    #: Still ours: extended, or claimed again (it had expired and nobody else claimed).
    OURS = "ours"
    #: Another tunnel or node holds the session: the studio moved.
    HELD_ELSEWHERE = "held elsewhere"
    #: The session is gone (ended unheard, or lost by the store).
    GONE = "gone"


class TunnelClaims(Protocol):
    """Which node holds each session's tunnel (the tunnel table, the dialer, peers)."""

    def get(self, session_id: str) -> Deferred[SessionRecord | None]:
        """The session, or None (a bind checks the session exists and its token)."""

    def claim_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[TunnelHolder | None]:
        """Make `holder` the session's tunnel holder for `ttl` seconds, replacing any
        previous one atomically; returns the previous holder. SessionNotFound if the
        session does not exist."""

    def refresh_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[bool]:
        """Extend the holder's TTL to `ttl` if it is still ours (same tunnel and node), or
        claim again when no holder is stored (the claim expired, as in a store outage
        longer than its TTL) and the session exists. False only when another tunnel or
        node holds the session, or the session is gone: then this tunnel must close."""

    def refresh_tunnels(self, holders: Sequence[TunnelHolder],
                        ttl: float) -> Deferred[list[Refresh]]:
        """:meth:`refresh_tunnel` for each holder, in one round trip: the answers in the
        holders' order, each saying which of the two a refused claim is (held
        elsewhere, or the session gone), found in the same atomic step."""

    def release_tunnel(self, holder: TunnelHolder) -> Deferred[bool]:
        """Delete the holder if it is still ours; whether it was."""

    def get_tunnel(self, session_id: str) -> Deferred[TunnelHolder | None]:
        """The session's current tunnel holder, or None."""

    def subscribe(self, callback: Invalidation) -> Callable[[], None]:
        """As SessionRecords.subscribe: a claim changing is a session change."""


class ConnectionHistory(Protocol):
    """When each session's studio was last connected (:class:`Seen`): written by
    claim_tunnel and release_tunnel, dropped with the session. Only the not-connected
    answers read it (the HTTP page, the SSH refusal, the admin API), never a request."""

    def last_connected(self, session_id: str) -> Deferred[Seen | None]:
        """What the registry recorded; None when it recorded nothing (no such session, or
        one made before this was recorded, e.g. by an older node, or loaded from the
        sessions file after a restart)."""


class UserKeyStore(Protocol):
    """Users' SSH public keys (authorized_keys-style lines, checked by check_user_keys)."""

    def get_user_keys(self, user: str) -> Deferred[list[str]]:
        """The user's key lines (empty when none), in the order they were added."""

    def set_user_keys(self, user: str, lines: list[str]) -> Deferred[None]:
        """Replace the user's keys (an empty list forgets the user); BadUserKeys if the
        lines break a limit."""

    def add_user_keys(self, user: str, lines: list[str]) -> Deferred[list[str]]:
        """Add keys the user does not have yet (same base64 key: kept as it was), in one
        atomic step; returns all the user's keys. BadUserKeys, changing nothing, when
        the result would have more than MAX_USER_KEYS."""

    def remove_user_keys(self, user: str, blobs: list[str] | None = None) -> Deferred[int]:
        """Forget the user's keys whose base64 key is in `blobs` (None: all of them), in
        one atomic step; how many went."""

    def subscribe_user_keys(self, callback: Invalidation) -> Callable[[], None]:
        """Call `callback(user)` whenever any node changes a user's keys (and
        `callback(None)` when changes may have been missed)."""

class LoginState(Protocol):
    """Login state that every node must share (auth/): single-use ids and logouts."""

    def spend_once(self, key: str, ttl: float) -> Deferred[bool]:
        """Mark the single-use id `key` (a login link's, a hand-off code's) spent for `ttl`
        seconds, its remaining lifetime, in one atomic step: True the first time on any
        node, False afterwards. StoreUnavailable when that cannot be known (callers refuse
        the id: never accept it twice)."""

    def is_spent(self, key: str) -> Deferred[bool]:
        """Whether any node spent `key` (and its lifetime has not run out)."""

    def log_out(self, login_id: str, ttl: float) -> Deferred[None]:
        """Record that a login ended, for `ttl` seconds (how long its cookies could still
        be valid), and tell every node's subscribe_logouts callbacks."""

    def logged_out(self) -> Deferred[dict[str, float]]:
        """Every recorded logout: login id -> seconds it is still kept."""

    def subscribe_logouts(self, callback: Invalidation) -> Callable[[], None]:
        """Call `callback(login_id)` whenever any node records a logout (and
        `callback(None)` when some may have been missed: read logged_out() again)."""


class PendingLogins(Protocol):
    """OpenID logins between their start and their callback, shared by every node (the
    issuer's redirect may land on any node behind the load balancer). Only a shared store
    (Redis) has them; one node keeps them in its memory (auth/oidc.py)."""

    def keep_pending_login(self, state: str, value: str, ttl: float) -> Deferred[None]:
        """Keep `value` (at most MAX_PENDING_LOGIN_BYTES) under `state` for `ttl` seconds;
        ValueError for a bad state, value or ttl; StoreUnavailable when it cannot be
        kept."""

    def take_pending_login(self, state: str) -> Deferred[str | None]:
        """The value kept under `state`, in one atomic step with its removal: on every
        node, one caller gets it and every later one None (also for an unknown, expired
        or malformed state). StoreUnavailable when it cannot be known."""

    def drop_pending_logins(self, states: Sequence[str]) -> Deferred[None]:
        """Forget the pending logins `states` (a node's oldest, past its bound)."""


class TransferCounts(Protocol):
    """Bytes moved, counted by every node in time buckets (traffic/quota.py): a counter is
    named by a scope key ("user:alice", "session:abcd") and a bucket number."""

    def add_transfer(self, counts: dict[str, int], bucket: int, ttl: float) -> Deferred[None]:
        """Add each key's bytes to its counter of `bucket`, kept `ttl` seconds."""

    def get_transfer(self, keys: list[str], buckets: list[int]
                     ) -> Deferred[dict[str, list[int]]]:
        """Each key's counts in `buckets` (0 where none was kept)."""

    def reset_transfer(self, key: str, buckets: list[int]) -> Deferred[None]:
        """Forget `key`'s counts in `buckets`."""


class SessionStore(StoreLifecycle, SessionRecords, TunnelClaims, ConnectionHistory,
                   UserKeyStore, LoginState, TransferCounts, Protocol):
    """All of it: what service.build_store makes and GatewayService starts and stops."""
