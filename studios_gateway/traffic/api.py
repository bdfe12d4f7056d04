"""Admin API for the transfer quotas, mounted under /api/quota on the management port.

  GET    /api/quota/users/{user}        -> bytes the user moved in the window, the limit,
  GET    /api/quota/sessions/{id}          whether it is reached and when it frees up
  DELETE /api/quota/users/{user}        forget the counts (the user or session may move
  DELETE /api/quota/sessions/{id}          its whole quota again; on every node)

The counts are every node's (the shared store). Without the quota of that scope
configured, the endpoints answer 404. A reset is logged whatever CONNECT_LOG_LEVEL says,
as the rest of the admin API's changes are (the audit trail).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web.server import Request

from studios_gateway import logs
from studios_gateway.management.api import AsyncResource, peer_of
from studios_gateway.management.endpoints import method_not_allowed
from studios_gateway.traffic.quota import Quota

__all__ = ["QuotaResource"]

_SCOPES = {b"users": "user", b"sessions": "session"}


class QuotaResource(AsyncResource):
    def __init__(self, quota: Quota | None):
        super().__init__()
        self._quota = quota
        logs.always(self._log.namespace)

    def render(self, request: Request) -> Any:
        path = [p for p in request.postpath or [] if p]
        scope = _SCOPES.get(path[0]) if len(path) == 2 else None
        if scope is None:
            return self._run(request, lambda: defer.succeed(
                (404, {"error": "no such endpoint: /api/quota/users/{user} or "
                                "/api/quota/sessions/{id}, GET or DELETE"})))
        if request.method not in (b"GET", b"DELETE"):
            return method_not_allowed(request, ["GET", "DELETE"])
        name = path[1].decode("utf-8", "replace")
        quota = self._quota
        s = quota.settings if quota is not None else None
        limit = None if s is None else (s.user_bytes if scope == "user" else s.session_bytes)
        if quota is None or limit is None:
            return self._run(request, lambda: defer.succeed(
                (404, {"error": f"no {scope} transfer quota is configured"})))
        if request.method == b"GET":
            return self._run(request, lambda: quota.usage(scope, name).addCallback(
                lambda usage: (200, usage)))
        def reset(_: object) -> tuple[int, dict[str, Any]]:
            self._log.info("admin API: transfer quota counts of {scope} {name} reset by {peer}",
                           scope=scope, name=name, peer=peer_of(request))
            return 200, {scope: name, "reset": True}

        return self._run(request, lambda: quota.reset(scope, name).addCallback(reset))
