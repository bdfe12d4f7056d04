"""Admin API for users' SSH keys, mounted under /api/users on the management port.

  GET    /api/users/{user}/keys           -> {"user", "keys": [{"key", "fingerprint"}]}
  PUT    /api/users/{user}/keys           replace: body is authorized_keys text, or JSON
                                          {"keys": ["ssh-ed25519 AAAA... comment", ...]}
  POST   /api/users/{user}/keys           add (same body), keeping the existing keys
  DELETE /api/users/{user}/keys           forget all of the user's keys
  DELETE /api/users/{user}/keys/{fp}      forget one key (fp: SHA256:..., URL-encoded)

Authentication is the management root's (bearer key). Every change is logged as the
rest of the admin API's are, ``admin API: SSH keys of alice replaced (1 key) by
127.0.0.1``, whatever CONNECT_LOG_LEVEL says (the audit trail); keys are never logged (a
fingerprint may be).
The keys live in the session registry (shared by every node with the same
Redis); when it does not answer, the call fails with 503.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from studios_gateway import logs
from studios_gateway.management.api import peer_of
from studios_gateway.management.endpoints import json_reply
from studios_gateway.registry.base import StoreUnavailable, UserKeyStore, key_blob
from studios_gateway.ssh.keys import fingerprint, parse_public_keys, valid_user

__all__ = ["UserKeysResource"]

MAX_BODY = 256 * 1024
log = Logger(namespace="studios_gateway.ssh.api")


def keys_count(n: int) -> str:
    """``1 key``, ``2 keys``, ``0 keys``."""
    return f"{n} key" if n == 1 else f"{n} keys"


class _BadRequest(Exception):
    pass


def _body_lines(request: Request) -> list[str]:
    content = request.content
    if content is None:
        raise _BadRequest("a body with the keys is required")
    content.seek(0, 2)
    if content.tell() > MAX_BODY:
        raise _BadRequest(f"body larger than {MAX_BODY} bytes")
    content.seek(0)
    raw = content.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest("the body is not UTF-8") from None
    ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if ctype.startswith("application/json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise _BadRequest("the body is not valid JSON") from None
        except RecursionError:  # arrays or objects nested thousands deep
            raise _BadRequest("the body is not valid JSON: nested too deeply") from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _BadRequest('expected {"keys": ["<type> <base64> [comment]", ...]}')
        text = "\n".join(keys)
    try:
        return parse_public_keys(text)
    except ValueError as e:
        raise _BadRequest(str(e)) from None


def _describe(user: str, lines: list[str]) -> dict[str, Any]:
    return {"user": user, "keys": [
        {"key": line, "fingerprint": fingerprint(Key.fromString(line.encode()))}
        for line in lines]}


class UserKeysResource(Resource):
    """/api/users: children are ``{user}/keys[/{fingerprint}]``; `store` is the session
    store (its ``*_user_keys`` methods)."""

    isLeaf = True

    def __init__(self, store: UserKeyStore):
        super().__init__()
        self.store = store
        logs.always(log.namespace)

    def _target(self, request: Request) -> tuple[str, str | None]:
        parts = [unquote(p.decode("utf-8", "replace")) for p in request.postpath or []]
        if parts and parts[-1] == "":
            parts = parts[:-1]
        if len(parts) in (2, 3) and parts[1] == "keys" and valid_user(parts[0]):
            return parts[0], parts[2] if len(parts) == 3 else None
        raise LookupError

    def render(self, request: Request) -> Any:
        try:
            user, fp = self._target(request)
        except LookupError:
            return json_reply(request, 404, {"error": "expected /api/users/{user}/keys"})
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def send(reply: tuple[int, Any]) -> None:
            if not gone:
                request.write(json_reply(request, *reply))
                request.finish()

        def crashed(f: Any) -> None:
            log.failure("the SSH keys API failed", f)
            send((500, {"error": "internal error"}))

        Deferred.fromCoroutine(self._answer(request, user, fp)).addCallbacks(send, crashed)
        return NOT_DONE_YET

    async def _answer(self, request: Request, user: str, fp: str | None) -> tuple[int, Any]:
        method = request.method.decode("ascii", "replace")
        store = self.store
        try:
            if method == "GET" and fp is None:
                return 200, _describe(user, await store.get_user_keys(user))
            if method == "PUT" and fp is None:
                lines = _body_lines(request)
                await store.set_user_keys(user, lines)
                log.info("admin API: SSH keys of {user} replaced ({keys}) by {peer}",
                         user=user, keys=keys_count(len(lines)), peer=peer_of(request))
                return 200, _describe(user, lines)
            if method == "POST" and fp is None:
                lines = _body_lines(request)
                merged = await store.add_user_keys(user, lines)
                log.info("admin API: SSH keys added for {user} ({sent} sent, {now} now) by "
                         "{peer}", user=user, sent=keys_count(len(lines)),
                         now=keys_count(len(merged)), peer=peer_of(request))
                return 200, _describe(user, merged)
            if method == "DELETE":
                blobs = None
                if fp is not None:
                    blobs = [key_blob(line) for line in await store.get_user_keys(user)
                             if fingerprint(Key.fromString(line.encode())) == fp]
                    if not blobs:
                        return 404, {"error": f"{user} has no key {fp}"}
                n = await store.remove_user_keys(user, blobs)
                if fp is None:
                    log.info("admin API: SSH keys of {user} deleted ({keys}) by {peer}",
                             user=user, keys=keys_count(n), peer=peer_of(request))
                else:  # a fingerprint is fine to log; the key never is
                    log.info("admin API: SSH key {fp} of {user} deleted by {peer}", fp=fp,
                             user=user, peer=peer_of(request))
                return 200, {"user": user, "deleted": n}
        except (_BadRequest, ValueError) as e:
            return 400, {"error": str(e)}
        except StoreUnavailable as e:
            return 503, {"error": f"the users' key registry is unavailable: {e.reason}"}
        request.setHeader(b"allow", b"GET, PUT, POST, DELETE")
        return 405, {"error": f"{method} is not allowed here"}
