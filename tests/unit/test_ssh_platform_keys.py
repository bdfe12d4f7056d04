"""The Platform's SSH key call against a small real HTTP server on 127.0.0.1 (twisted.web):
the request (path, credentials), the answers, the cache, errors and limits."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa
from twisted.conch.ssh.keys import Key
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from studios_gateway.ssh.keys import KeysUnavailable
from studios_gateway.ssh.platform_keys import MAX_BODY, PlatformKeys
from tests.support.platform import FakePlatform, http_client


def public(private: Any) -> tuple[Key, str]:
    key = Key(private).public()
    return key, key.toString("OPENSSH").decode() + " alice@laptop"


class PlatformKeysTests(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.platform = FakePlatform(default=(404, b'{"error": "no such user"}'))
        self.url = self.platform.listen(self) + "/"
        self.creds: tuple[str, str] | None = ("gw-client", "s3cret")
        self.keys = self.client()
        self.key, self.line = public(ed25519.Ed25519PrivateKey.generate())

    def client(self, **kw: Any) -> PlatformKeys:
        kw.setdefault("ttl", 60)
        return PlatformKeys(self.url, lambda: self.creds, reactor=reactor, http=http_client(),
                            **kw)

    def answer(self, user: str, code: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.platform.answers[f"/api/users/{user}/ssh-keys"] = (code, data)

    def accepts(self, user: str = "alice", key: Key | None = None) -> defer.Deferred[bool]:
        return defer.Deferred.fromCoroutine(self.keys.accepts(user, key or self.key))

    @defer.inlineCallbacks
    def unavailable(self, user: str = "alice") -> Any:
        try:
            yield self.accepts(user)
        except KeysUnavailable as e:
            return str(e)
        raise AssertionError("accepted")

    @defer.inlineCallbacks
    def test_the_call_and_the_cache(self) -> Any:
        other, _ = public(ed25519.Ed25519PrivateKey.generate())
        self.answer("alice", 200, {"keys": [self.line]})
        assert (yield self.accepts()) is True
        assert (yield self.accepts(key=other)) is False
        path, auth = self.platform.requests[0]
        assert path == "/api/users/alice/ssh-keys"
        assert auth == "Basic " + base64.b64encode(b"gw-client:s3cret").decode()
        assert len(self.platform.requests) == 1  # cached for the TTL
        self.keys.forget("alice")
        self.answer("alice", 200, {"keys": []})
        assert (yield self.accepts()) is False
        assert len(self.platform.requests) == 2

    @defer.inlineCallbacks
    def test_unknown_user_and_odd_names(self) -> Any:
        assert (yield self.accepts("nobody")) is False  # 404: no keys
        self.answer("a%40b.example%2Fx%20y", 200, {"keys": [self.line]})
        assert (yield self.accepts("a@b.example/x y")) is True
        self.creds = None  # no client registered yet: no Authorization header
        assert (yield self.accepts("bob")) is False
        assert self.platform.requests[-1][1] == ""

    @defer.inlineCallbacks
    def test_errors_deny_with_a_reason_and_are_remembered_briefly(self) -> Any:
        self.answer("alice", 500, b"oops")
        assert (yield self.unavailable()) == "the Platform's SSH key call answered HTTP 500"
        assert (yield self.unavailable()) == "the Platform's SSH key call answered HTTP 500"
        assert len(self.platform.requests) == 1  # OpenSSH offers keys in a row
        for name, body in (("b", b"not json"), ("c", {"keys": "ssh-ed25519 AAAA"}),
                           ("d", {"keys": [1]})):
            self.answer(name, 200, body)
            assert "HTTP 200" in (yield self.unavailable(name))
        self.answer("e", 200, b"[" + b" " * MAX_BODY + b"]")
        assert (yield self.unavailable("e")) == \
            "the Platform's SSH key call answered more than 1024 KiB"
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_no_answer_in_time(self) -> Any:
        self.keys = self.client(timeout=0.3)
        self.platform.hang = True
        message = yield self.unavailable()
        assert message == "the Platform's SSH key call got no answer within 0.3s", message

    @defer.inlineCallbacks
    def test_a_body_that_never_ends_fails_in_time(self) -> Any:
        # The headers arrive, the body stalls: the timeout covers the whole answer (it
        # covered only the headers, and the login waited for as long as the Platform
        # held the connection open).
        self.keys = self.client(timeout=0.3)
        self.platform.stall_body = True
        self.answer("alice", 200, {"keys": [self.line]})
        message = yield self.unavailable()
        assert message == "the Platform's SSH key call got no answer within 0.3s", message
        assert len(self.platform.stalled) == 1
        # The gateway hung up: the Platform's side of the connection is gone.
        yield self.platform.stalled[0].notifyFinish().addErrback(lambda _: None)
        assert self.platform.stalled[0].channel is None

    @defer.inlineCallbacks
    def test_a_platform_that_is_down(self) -> Any:
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        where = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        self.url = where + "/"
        self.keys = self.client()
        assert (yield self.unavailable()) == \
            f"the Platform's SSH key call failed: {where} cannot be reached"

    @defer.inlineCallbacks
    def test_keys_the_gateway_would_refuse_are_skipped(self) -> Any:
        _, dsa_line = public(dsa.generate_private_key(1024))  # noqa: S505 (refused)
        short, short_line = public(rsa.generate_private_key(65537, 1024))  # noqa: S505
        self.answer("alice", 200, {"keys": ["garbage", dsa_line, short_line,
                                            'from="10.0.0.1" ' + self.line, self.line]})
        assert (yield self.accepts()) is True
        assert (yield self.accepts(key=short)) is False

    @defer.inlineCallbacks
    def test_one_call_for_concurrent_logins(self) -> Any:
        self.answer("alice", 200, {"keys": [self.line]})
        results = yield defer.gatherResults([self.accepts() for _ in range(5)])
        assert results == [True] * 5
        assert len(self.platform.requests) == 1
