"""The admin API on the management port: /api/sessions.

  POST   /api/sessions            create (JSON: id?, workspace_id, tool, owner,
                                  allowed_users, ssh_enabled) -> id, url, token,
                                  connect_string
  GET    /api/sessions            list, with tunnel state
  GET    /api/sessions/{id}       one, with tunnel state
  PATCH  /api/sessions/{id}       change it (JSON: allowed_users, ssh_enabled); users
                                  taken off the list lose their open connections, and
                                  SSH turned off closes the session's SSH connections
  DELETE /api/sessions/{id}       end it (its tunnel is closed)
  POST   /api/sessions/{id}/token mint a new connect token (the old one stops working)
  POST   /api/sessions/{id}/login-links
                                  a one-time login link for a user of the session (JSON:
                                  user; the owner or an allowed user); without an OpenID
                                  issuer only; the connect token is not touched

Authentication is the management root's (bearer key).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from studios_gateway import logs
from studios_gateway.management.endpoints import (
    JsonDirectory,
    json_reply,
    method_not_allowed,
    not_found,
)
from studios_gateway.management.sessions import (
    NewSession,
    RequestError,
    Sessions,
    validate_change,
    validate_create,
    validate_login_link,
)
from studios_gateway.registry.base import SessionExists, StoreUnavailable
from studios_gateway.repeats import Repeats

MAX_BODY = 64 * 1024


def _reply(request: Request, code: int, body: Any) -> None:
    request.write(json_reply(request, code, body))
    request.finish()


def _read_json(request: Request) -> Any:
    length = request.getHeader(b"content-length")
    content = request.content
    if content is None:
        raise RequestError("a JSON body is required")
    content.seek(0, 2)
    if content.tell() > MAX_BODY or (length and int(length) > MAX_BODY):
        raise RequestError(f"body larger than {MAX_BODY} bytes")
    content.seek(0)
    raw = content.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestError("the body is not valid JSON") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise RequestError("the body is not valid JSON: nested too deeply") from None


class _WallClock:
    """The time for Repeats, in the admin API (no reactor is given to its resources)."""

    @staticmethod
    def seconds() -> float:
        return time.time()


class _Async(Resource):
    """A leaf whose handlers return Deferreds; errors become JSON with a status."""

    isLeaf = True
    _log = Logger()
    #: The session store's refusals, in the log once a minute each (a caller may retry).
    _repeats = Repeats(_WallClock())

    def _run(self, request: Request, handler: Callable[[], Any]) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def ok(result: tuple[int, Any]) -> None:
            if not gone:
                _reply(request, *result)

        def failed(f: Failure) -> None:
            if gone:
                return
            if f.check(RequestError):
                _reply(request, 400, {"error": str(f.value)})
            elif f.check(SessionExists):
                _reply(request, 409, {"error": "a session with that id exists"})
            elif f.check(StoreUnavailable):
                # Said in the log too (the changes it makes are): a full disk under the
                # storage root, or Redis away, was seen only by the API's caller.
                if self._repeats.due("store unavailable") is not None:
                    self._log.warn("admin API: {method} {path} not done: session store "
                                   "unavailable: {error}",
                                   method=request.method.decode("ascii", "replace"),
                                   path=request.path.decode("ascii", "replace"),
                                   error=str(f.value))
                _reply(request, 503, {"error": f"session store unavailable: {f.value}"})
            else:
                self._log.failure("admin API request failed", f)
                _reply(request, 500, {"error": "internal error (see the gateway's log)"})

        defer.maybeDeferred(handler).addCallbacks(ok, failed)
        return NOT_DONE_YET


#: For other parts' admin endpoints (/api/users, /api/quota): the same JSON errors.
AsyncResource = _Async


#: login_link(session id, user) -> a one-time login URL; None when an OpenID issuer logs
#: users in (the gateway mints no links then).
LoginLinks = Callable[[str, str], str] | None


def peer_of(request: Request) -> str:
    """The address an admin API request came from, for the audit lines."""
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _shown(value: Any) -> str:
    """A changed field's new value for the audit line (a list as ``a,b``)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SessionsResource(_Async):
    """/api/sessions. Every change it makes is logged (the audit trail: what, which
    session, from which address), whatever CONNECT_LOG_LEVEL says (:data:`AUDIT`);
    tokens and login links never are."""

    def __init__(self, sessions: Sessions, present: Callable[[NewSession], dict[str, Any]],
                 login_link: LoginLinks = None):
        super().__init__()
        self._sessions = sessions
        self._present = present
        self._login_link = login_link

    def render(self, request: Request) -> Any:
        path = [p for p in request.postpath or [] if p]
        shape = _shape(path)
        routes = _ROUTES.get(shape) if shape is not None else None
        if routes is None:
            return not_found(request)
        handler = routes.get(request.method)
        if handler is None:
            # An endpoint that exists, another method: 405 with the methods it takes.
            return method_not_allowed(request, [m.decode() for m in routes])
        sid = path[0].decode("ascii", "replace") if path else ""
        return self._run(request, lambda: handler(self, request, sid))

    @defer.inlineCallbacks
    def _list(self) -> Any:
        return 200, {"sessions": (yield self._sessions.list())}

    @defer.inlineCallbacks
    def _create(self, request: Request) -> Any:
        fields = validate_create(_read_json(request))
        new = yield self._sessions.create(fields)
        self._log.info("admin API: session {sid} created for {owner} (tool {tool}) by {peer}",
                       sid=new.record.id, owner=new.record.owner, tool=new.record.tool,
                       peer=peer_of(request))
        return 201, self._present(new)

    @defer.inlineCallbacks
    def _show(self, sid: str) -> Any:
        found = yield self._sessions.show(sid)
        if found is None:
            return 404, {"error": f"no session {sid}"}
        return 200, found

    @defer.inlineCallbacks
    def _change(self, request: Request, sid: str) -> Any:
        change = validate_change(_read_json(request))
        changed = yield self._sessions.change(sid, change)
        if changed is None:
            return 404, {"error": f"no session {sid}"}
        self._log.info("admin API: session {sid} changed ({fields}) by {peer}", sid=sid,
                       fields=", ".join(f"{k}={_shown(v)}" for k, v in sorted(change.items())),
                       peer=peer_of(request))
        return 200, changed

    @defer.inlineCallbacks
    def _end(self, request: Request, sid: str) -> Any:
        if (yield self._sessions.end(sid)):
            self._log.info("admin API: session {sid} ended by {peer}", sid=sid,
                           peer=peer_of(request))
            return 200, {"id": sid, "ended": True}
        return 404, {"error": f"no session {sid}"}

    @defer.inlineCallbacks
    def _rotate(self, request: Request, sid: str) -> Any:
        new = yield self._sessions.rotate_token(sid)
        if new is None:
            return 404, {"error": f"no session {sid}"}
        self._log.info("admin API: session {sid} given a new connect token by {peer}",
                       sid=sid, peer=peer_of(request))
        return 200, self._present(new)

    @defer.inlineCallbacks
    def _link(self, request: Request, sid: str) -> Any:
        user = validate_login_link(_read_json(request))
        if self._login_link is None:
            return 409, {"error": "users log in through the OpenID issuer "
                                  "(PLATFORM_URL or CONNECT_OIDC_ISSUER_URL); the "
                                  "gateway mints no login links"}
        allowed = yield self._sessions.may_use(sid, user)
        if allowed is None:
            return 404, {"error": f"no session {sid}"}
        if not allowed:
            return 403, {"error": f"{user} is neither the owner of session {sid} nor on its "
                                  "allow-list (add them first: `studios-gateway sessions users "
                                  f"{sid} --add {user}`, or PATCH allowed_users)"}
        link = self._login_link(sid, user)
        self._log.info("admin API: a one-time login link for {user} on session {sid} "
                       "made by {peer}", user=user, sid=sid, peer=peer_of(request))
        return 201, {"id": sid, "user": user, "login_link": link}


#: A handler of /api/sessions: (the resource, the request, the session id: "" for
#: /api/sessions itself) -> a Deferred (status, JSON body).
_Handler = Callable[[SessionsResource, Request, str], Any]

#: The routes of /api/sessions, by path shape (:func:`_shape`): each method's handler.
#: Both the dispatch and a 405's Allow header (the methods in this order) read it.
_ROUTES: dict[int | bytes, dict[bytes, _Handler]] = {
    0: {b"GET": lambda api, request, sid: api._list(),
        b"POST": lambda api, request, sid: api._create(request)},
    1: {b"GET": lambda api, request, sid: api._show(sid),
        b"PATCH": lambda api, request, sid: api._change(request, sid),
        b"DELETE": lambda api, request, sid: api._end(request, sid)},
    b"token": {b"POST": lambda api, request, sid: api._rotate(request, sid)},
    b"login-links": {b"POST": lambda api, request, sid: api._link(request, sid)},
}


def _shape(path: list[bytes]) -> int | bytes | None:
    """A path under /api/sessions as a key of _ROUTES: how many segments (0 or 1), or a
    session's sub-resource by name; None for deeper paths."""
    if len(path) < 2:
        return len(path)
    return path[1] if len(path) == 2 else None


#: The namespace of the admin API's lines (its audit trail): written at info and above
#: whatever CONNECT_LOG_LEVEL says, as the access log is (an operator who asks for
#: warnings only still sees who created, changed or ended a session).
AUDIT = f"{__name__}.{SessionsResource.__name__}"


def make_api(sessions: Sessions, present: Callable[[NewSession], dict[str, Any]],
             login_link: LoginLinks = None) -> Resource:
    logs.always(AUDIT)
    api = JsonDirectory()
    api.putChild(b"sessions", SessionsResource(sessions, present, login_link))
    return api
