"""Sessions as the admin API sees them: create, list, show, end, and connect strings.

Plain logic over the session store and the local tunnel table, so the web
resource (api.py) and the CLI stay thin.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred

from studios_gateway.away import describe, last_seen, restart_where
from studios_gateway.images import StudioImage, studio_image
from studios_gateway.registry.base import (
    SessionExists,
    SessionRecord,
    SessionStore,
    hash_token,
    new_token,
)
from studios_gateway.shown import shown
from studios_gateway.versions import CONNECT_PROTOCOL_VERSION, ConnectVersion, VersionError
from studios_gateway.wire import tools
from studios_gateway.wire.ids import SESSION_ID_RULE, is_session_id

USER = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
USER_RULE = "1 to 128 letters, digits and ._@+-"
#: Most names on one session's allow-list.
MAX_ALLOWED_USERS = 1000
WORKSPACE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
CONNECT_SCHEME = "studios-connect"


class RequestError(ValueError):
    """The caller sent something we refuse; the message says what and why."""


@dataclass(frozen=True)
class NewSession:
    record: SessionRecord
    token: str


def connect_string(session_id: str, token: str, host: str, port: int, pin: str | None) -> str:
    """The one line a studio needs: studios-connect://<id>:<token>@host:port[?pin=...]."""
    hostpart = f"[{host}]" if ":" in host else host
    query = f"?pin={quote(pin, safe=':')}" if pin else ""
    return f"{CONNECT_SCHEME}://{session_id}:{token}@{hostpart}:{port}/{query}"


def session_url(session_id: str, proxy_url: str, studios_domain: str, path_routing: bool) -> str:
    """Where a person opens the studio, in the configured routing mode."""
    parts = urlsplit(proxy_url)
    if path_routing:
        return f"{proxy_url.rstrip('/')}/_studio/{session_id}/"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{session_id}.{studios_domain}{port}/"


def studio_routing(proxy_url: str, studios_domain: str, path_routing: bool
                   ) -> Callable[[str], tuple[str, str]]:
    """``routing(session_id) -> (mode, url)`` for this deployment: the routing mode
    ("path" or "subdomain") and :func:`session_url`. Built once; the admin API shows the
    URL, the tunnel tells it to the studio in the bind answer."""
    mode = "path" if path_routing else "subdomain"

    def routing(session_id: str) -> tuple[str, str]:
        return mode, session_url(session_id, proxy_url, studios_domain, path_routing)

    return routing


def validate_create(body: Any,
                    server: ConnectVersion = CONNECT_PROTOCOL_VERSION) -> dict[str, Any]:
    """Check a POST /api/sessions body; return clean fields or raise RequestError.
    An image's Connect version must be one a gateway at `server` speaks."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = set(body) - {"id", "workspace_id", "tool", "owner", "allowed_users", "ssh_enabled",
                           "image"}
    if unknown:
        raise RequestError(f"unknown fields: {', '.join(sorted(unknown))}")
    sid = body.get("id")
    if sid is not None and not is_session_id(sid):
        raise RequestError(f"id must be {SESSION_ID_RULE}")
    owner = body.get("owner")
    if owner is None:
        raise RequestError(f"owner is required: {USER_RULE}")
    if not isinstance(owner, str) or not USER.fullmatch(owner):
        raise RequestError(f"owner {_given(owner)} is not a user name: {USER_RULE}")
    ws = body.get("workspace_id")
    if ws is not None:
        ws = str(ws) if isinstance(ws, int) and not isinstance(ws, bool) else ws
        if not isinstance(ws, str) or not WORKSPACE.fullmatch(ws):
            raise RequestError("workspace_id must be an id of letters, digits and ._-")
    tool = body.get("tool")
    if tool is not None:
        tool = tools.canonical(tool) if isinstance(tool, str) else None
        if tool is None:
            raise RequestError(f"tool must be one of {tools.accepted()}")
    image = _image(body.get("image"), server)
    if tool is None:
        try:
            tool = (image.tool if image else None) or "generic"
        except VersionError as e:
            raise RequestError(str(e)) from None
    users = _allowed_users(body.get("allowed_users", []))
    ssh = body.get("ssh_enabled", False)
    if not isinstance(ssh, bool):
        raise RequestError("ssh_enabled must be true or false")
    return {"id": sid, "workspace_id": ws, "tool": tool, "owner": owner,
            "allowed_users": users, "ssh_enabled": ssh, **image_fields(image)}


def _image(text: Any, server: ConnectVersion) -> StudioImage | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise RequestError("image must be an image reference such as "
                           "registry.example/data-studio-jupyter:4.2.5-0.12.0")
    try:
        return studio_image(text, server)
    except VersionError as e:
        raise RequestError(str(e)) from None


def image_fields(image: StudioImage | None) -> dict[str, str | None]:
    """The session record's image fields for `image` (all None without one)."""
    if image is None:
        return {"image": None, "tool_version": None, "update_version": None,
                "connect_version": None}
    return {"image": image.reference.text, "tool_version": image.tool_version,
            "update_version": image.update_version,
            "connect_version": str(image.connect_version)}


def _allowed_users(users: Any) -> tuple[str, ...]:
    if not isinstance(users, list):
        raise RequestError("allowed_users must be a list of user names")
    if len(users) > MAX_ALLOWED_USERS:
        raise RequestError(f"allowed_users has {len(users)} names; at most "
                           f"{MAX_ALLOWED_USERS}")
    for user in users:  # the first one that is not a name, named
        if not isinstance(user, str) or not USER.fullmatch(user):
            raise RequestError(f"allowed_users: {_given(user)} is not a user name: "
                               f"{USER_RULE}")
    return tuple(dict.fromkeys(users))


def _given(value: Any) -> str:
    """A value the client sent, quoted for an error message (escaped, cut short)."""
    if isinstance(value, str):
        return f"'{shown(value, 64)}'" if value else "''"
    return shown(json.dumps(value), 64)


#: What PATCH /api/sessions/{id} may change.
CHANGEABLE = ("allowed_users", "ssh_enabled")


def validate_change(body: Any) -> dict[str, Any]:
    """Check a PATCH /api/sessions/{id} body: allowed_users, ssh_enabled, or both."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = set(body) - set(CHANGEABLE)
    if unknown:
        raise RequestError(f"only allowed_users and ssh_enabled can be changed, not "
                           f"{', '.join(sorted(unknown))}")
    if not body:
        raise RequestError("nothing to change: give allowed_users, ssh_enabled or both")
    change: dict[str, Any] = {}
    if "allowed_users" in body:
        change["allowed_users"] = _allowed_users(body["allowed_users"])
    if "ssh_enabled" in body:
        if not isinstance(body["ssh_enabled"], bool):
            raise RequestError("ssh_enabled must be true or false")
        change["ssh_enabled"] = body["ssh_enabled"]
    return change


def validate_login_link(body: Any) -> str:
    """Check a POST /api/sessions/{id}/login-links body; return the user named."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = set(body) - {"user"}
    if unknown:
        raise RequestError(f"unknown fields: {', '.join(sorted(unknown))}")
    user = body.get("user")
    if not isinstance(user, str) or not USER.fullmatch(user):
        raise RequestError("user is required: a user name of letters, digits and ._@+-")
    return user


class Sessions:
    """Session lifecycle for the admin API."""

    def __init__(self, store: SessionStore, *, clock: Any,
                 on_end: Callable[[str], Any] = lambda s: None,
                 on_revoke: Callable[[str, str], Any] = lambda s, u: None,
                 tunnel_state: Callable[[str], Deferred[dict[str, Any] | None]] | None = None,
                 usage: Callable[[str], Any] | None = None,
                 workspace_allowed: Callable[[str | None], bool] = lambda ws: True,
                 platform_url: str | None = None):
        self._store = store
        #: Where a studio not connected is restarted (PLATFORM_URL): the page's words.
        self._where = restart_where(platform_url)
        #: TOWER_DATA_STUDIO_ALLOWED_WORKSPACES: a session no one could use is refused.
        self._workspace_allowed = workspace_allowed
        self._clock = clock
        self._on_end = on_end
        self._on_revoke = on_revoke
        self._tunnel_state = tunnel_state or self._store_tunnel_state
        #: usage(session_id) -> the session's traffic figures (or a Deferred of them)
        self._usage = usage

    def _store_tunnel_state(self, session_id: str) -> Deferred[dict[str, Any] | None]:
        d = defer.maybeDeferred(self._store.get_tunnel, session_id)
        return d.addCallback(lambda h: None if h is None else {
            "node": h.node_id, "connect_version": h.client_version,
            "tool_version": h.tool_version or None, "tool_port": h.tool_port,
            "bound_at": h.bound_at})

    @defer.inlineCallbacks
    def create(self, fields: dict[str, Any]) -> Any:
        ws = fields["workspace_id"]
        if not self._workspace_allowed(ws):
            # Every request to it would be refused (docs/login.md): say so now.
            raise RequestError(
                "workspace_id is required: TOWER_DATA_STUDIO_ALLOWED_WORKSPACES lets only the "
                "workspaces it lists use studios" if ws is None else
                f"workspace {ws} may not use studios (TOWER_DATA_STUDIO_ALLOWED_WORKSPACES)")
        token = new_token()
        sid = fields["id"]
        for _ in range(5 if sid is None else 1):
            candidate = sid or secrets.token_hex(4)
            record = SessionRecord(
                id=candidate, workspace_id=fields["workspace_id"], tool=fields["tool"],
                owner=fields["owner"], allowed_users=fields["allowed_users"],
                ssh_enabled=fields["ssh_enabled"], token_hash=hash_token(token),
                created_at=time.time(),
                **{k: fields.get(k) for k in image_fields(None)})
            try:
                yield self._store.create(record)
            except SessionExists:
                if sid is not None:
                    raise
                continue
            return NewSession(record, token)
        raise SessionExists("could not find a free session id")

    @defer.inlineCallbacks
    def rotate_token(self, session_id: str) -> Any:
        record = yield self._store.get(session_id)
        if record is None:
            return None
        token = new_token()
        yield self._store.update(replace(record, token_hash=hash_token(token)))
        return NewSession(record, token)

    @defer.inlineCallbacks
    def may_use(self, session_id: str, user: str) -> Any:
        """None without such a session, else whether `user` is its owner or allow-listed."""
        record = yield self._store.get(session_id)
        if record is None:
            return None
        return user == record.owner or user in record.allowed_users

    @defer.inlineCallbacks
    def change(self, session_id: str, fields: dict[str, Any]) -> Any:
        """Change the session's allow-list and/or ssh_enabled; returns the new description
        or None. Users taken off the list lose access at once (`on_revoke`); with SSH
        turned off, the open SSH connections to the session close as the registry's change
        is heard (the SSH proxy follows it)."""
        record = yield self._store.get(session_id)
        if record is None:
            return None
        new = replace(record, **fields)
        yield self._store.update(new)
        for user in set(record.allowed_users) - set(new.allowed_users):
            self._on_revoke(session_id, user)
        return (yield self.describe(new))

    @defer.inlineCallbacks
    def describe(self, record: SessionRecord) -> Any:
        tunnel = yield self._tunnel_state(record.id)
        live = tunnel or {}
        out = {"id": record.id, "workspace_id": record.workspace_id, "tool": record.tool,
               "owner": record.owner, "allowed_users": list(record.allowed_users),
               "ssh_enabled": record.ssh_enabled, "created_at": record.created_at,
               "image": record.image,
               # what the studio announced at bind, else what the image's tag says
               "tool_version": live.get("tool_version") or record.tool_version,
               "update_version": record.update_version,
               "connect_version": live.get("connect_version") or record.connect_version,
               "connected": tunnel is not None, "tunnel": tunnel}
        out.update((yield self._last_connected(record, tunnel is not None)))
        if self._usage is not None:
            out["usage"] = yield defer.maybeDeferred(self._usage, record.id)
        return out

    @defer.inlineCallbacks
    def _last_connected(self, record: SessionRecord, connected: bool) -> Any:
        """"last_connected": what the registry recorded (bound_at, unbound_at; null when
        nothing: a session made before it was recorded, or the store cannot say now), and
        for a studio not connected "away": which case it is and the words a person gets
        (null when it cannot tell)."""
        seen = yield last_seen(self._store, record.id)
        out: dict[str, Any] = {"last_connected": None if seen is None else {
            "bound_at": seen.bound_at, "unbound_at": seen.unbound_at}}
        if not connected:
            away = describe(seen, record.created_at, self._clock.seconds(), self._where)
            out["away"] = None if away is None else {
                "case": away.case.value, "since": away.since, "text": away.text}
        return out

    @defer.inlineCallbacks
    def show(self, session_id: str) -> Any:
        record = yield self._store.get(session_id)
        if record is None:
            return None
        return (yield self.describe(record))

    @defer.inlineCallbacks
    def list(self) -> Any:
        records = yield self._store.list_sessions()
        out = []
        for record in sorted(records, key=lambda r: r.created_at):
            out.append((yield self.describe(record)))
        return out

    @defer.inlineCallbacks
    def end(self, session_id: str) -> Any:
        deleted = yield self._store.delete(session_id)
        if deleted:
            yield defer.maybeDeferred(self._on_end, session_id)
        return bool(deleted)
