"""The Platform's SSH keys of a user (when PLATFORM_URL is set).

``GET {PLATFORM_URL}/api/users/{user}/ssh-keys`` with the gateway's client
credentials (HTTP Basic, as the studio access call), ``Accept:
application/json``. The answer ``200 {"keys": ["ssh-ed25519 AAAA... comment",
...]}`` lists the keys the user may log in with; ``404`` means none. Anything
else, or no answer within the timeout, is an error: keys the gateway does not
know are refused for now, with a message saying why. Answers are cached per
user for LOCAL_CACHE_TTL, errors for a few seconds. Lines the gateway would
not accept through its own API (DSA, short RSA, options) are skipped. See
docs/login.md and docs/ssh.md.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.conch.ssh.keys import Key
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.auth.platform_http import MAX_BODY, PlatformCallFailed, PlatformHTTP
from studios_gateway.registry.base import MAX_USER_KEYS, key_blob
from studios_gateway.ssh.keys import KeysUnavailable, parse_public_keys

__all__ = ["MAX_BODY", "PlatformKeys"]

#: How long a failed call is remembered (seconds): OpenSSH offers several keys in a row.
ERROR_TTL = 5.0


class PlatformKeys(PlatformHTTP):
    """Asks the Platform for a user's SSH keys; caches the answers."""

    _log = Logger()
    call_name = "the Platform's SSH key calls"
    metric_label = "ssh_keys"

    def __init__(self, platform_url: str, credentials: Callable[[], tuple[str, str] | None],
                 *, reactor: Any, ttl: float, http: Any = None, timeout: float = 5.0,
                 max_entries: int = 10_000):
        super().__init__(platform_url, credentials, reactor=reactor, http=http,
                         timeout=timeout)
        self._ttl = ttl
        self._max = max_entries
        #: user -> (expires at, set of key blobs, or the error message)
        self._cache: OrderedDict[str, tuple[float, frozenset[bytes] | str]] = OrderedDict()
        self._inflight: dict[str, list[Deferred[frozenset[bytes]]]] = {}
        self.calls = 0

    def url(self, user: str) -> str:
        return f"{self._base}/api/users/{quote(user, safe='')}/ssh-keys"

    async def accepts(self, user: str, key: Key) -> bool:
        """Whether the Platform lists `key` for `user`; KeysUnavailable if it cannot say."""
        return key.blob() in await self.keys(user)

    def keys(self, user: str, *, max_age: float | None = None) -> Deferred[frozenset[bytes]]:
        """The blobs of the user's keys (cached; with `max_age`, no answer older than
        that); fails with KeysUnavailable."""
        now = self._reactor.seconds()
        hit = self._cache.get(user)
        if hit is not None and hit[0] > now and (
                max_age is None or hit[0] - self._ttl >= now - max_age):
            self._cache.move_to_end(user)
            if isinstance(hit[1], str):
                return defer.fail(KeysUnavailable(hit[1]))
            return defer.succeed(hit[1])
        waiting: Deferred[frozenset[bytes]] = Deferred()
        if user in self._inflight:
            self._inflight[user].append(waiting)
            return waiting
        self._inflight[user] = [waiting]
        d = Deferred.fromCoroutine(self._fetch(user))

        def done(result: frozenset[bytes] | Failure) -> None:
            if isinstance(result, Failure):
                message = (result.getErrorMessage() if result.check(KeysUnavailable)
                           else "the Platform's SSH key call failed")
                if not result.check(KeysUnavailable):
                    self._log.failure("the Platform's SSH key call for {user} failed", result,
                                      user=user)
                self._remember(user, message, min(self._ttl, ERROR_TTL))
                outcome: Any = KeysUnavailable(message)
            else:
                self._remember(user, result, self._ttl)
                outcome = result
            for w in self._inflight.pop(user, []):
                if isinstance(outcome, Exception):
                    w.errback(outcome)
                else:
                    w.callback(outcome)

        d.addBoth(done)
        return waiting

    def forget(self, user: str | None = None) -> None:
        """Ask the Platform again next time (one user, or everyone)."""
        if user is None:
            self._cache.clear()
        else:
            self._cache.pop(user, None)

    def _remember(self, user: str, value: frozenset[bytes] | str, ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache.pop(user, None)
        self._cache[user] = (self._reactor.seconds() + ttl, value)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    async def _fetch(self, user: str) -> frozenset[bytes]:
        self.calls += 1
        try:
            keys = await self._ask(user)
        except KeysUnavailable as e:
            self.failed(f"{e} (for {user})", kind=str(e))
            raise
        self.answered()
        return self._blobs(user, keys)

    async def _ask(self, user: str) -> list[str]:
        what = "the Platform's SSH key call"
        try:
            code, raw = await self.fetch(self.url(user), what)
        except PlatformCallFailed as e:
            raise KeysUnavailable(str(e)) from None
        if code == 404:
            return []
        keys = _keys_in(raw) if code == 200 else None
        if keys is None:
            raise KeysUnavailable(f"{what} answered HTTP {code}"
                                  + (" without a list of keys" if code == 200 else ""))
        return keys

    def _blobs(self, user: str, keys: list[str]) -> frozenset[bytes]:
        good = _usable(keys)
        if len(good) < len(keys):
            self._log.warn("the Platform lists {n} SSH keys for {user} that the gateway does "
                           "not accept (bad lines, DSA, short RSA, options, over {max}); "
                           "skipped", n=len(keys) - len(good), user=user, max=MAX_USER_KEYS)
        return frozenset(base64.b64decode(key_blob(line)) for line in good)


def _keys_in(body: bytes) -> list[str] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return None
    return keys


def _usable(lines: list[str]) -> list[str]:
    good = []
    for line in lines[:MAX_USER_KEYS]:
        try:
            good.extend(parse_public_keys(line))
        except ValueError:
            continue
    return good

