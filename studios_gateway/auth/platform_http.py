"""The gateway's HTTP client for calls to the Platform (access, SSH keys).

One place for what every such call shares: the base URL, the gateway's
client credentials as HTTP Basic, ``Accept: application/json``, a timeout,
and a pool of kept-alive connections closed on stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred


class PlatformHTTP:
    def __init__(self, platform_url: str, credentials: Callable[[], tuple[str, str] | None], *,
                 reactor: Any, http: Any = None, timeout: float = 5.0):
        self._base = platform_url.rstrip("/")
        self._credentials = credentials
        self._reactor = reactor
        self._timeout = timeout
        self._pool: Any = None
        if http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(reactor)
            http = HTTPClient(Agent(reactor, pool=self._pool))
        self._http = http

    def stop(self) -> Deferred[None] | None:
        """Close kept-alive connections to the Platform."""
        return self._pool.closeCachedConnections() if self._pool is not None else None

    def _get(self, url: str) -> Deferred[Any]:
        """GET ``url`` with the credentials; fires with the treq response."""
        from studios_gateway.auth.oidc import basic_auth

        creds = self._credentials()
        headers = {"Accept": ["application/json"]}
        if creds is not None:
            headers["Authorization"] = [basic_auth(*creds)]
        return self._http.request("GET", url, headers=headers, timeout=self._timeout,
                                  reactor=self._reactor)
