"""The Platform's access call against a small real HTTP server on 127.0.0.1 (twisted.web):
the request, each kind of answer, what the error says, the deadline and the size bound,
and that an authorizer whose call failed asks again (nothing stays waiting)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from studios_gateway.auth.authorizer import (
    ERROR_TTL,
    Authorizer,
    PlatformAccess,
    PlatformUnavailable,
)
from studios_gateway.auth.platform_http import QUIET
from studios_gateway.registry.base import SessionRecord
from studios_gateway.registry.memory import MemoryStore
from tests.support.platform import FakePlatform, http_client

WHAT = "the Platform's access call for bob on abcd"


class PlatformAccessTests(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.platform = FakePlatform(default=(200, b'{"allowed": true}'))
        self.creds: tuple[str, str] | None = ("gw-client", "s3cret")
        self.url = self.platform.listen(self)
        self.access = self.client()

    def client(self, **kw: Any) -> PlatformAccess:
        return PlatformAccess(self.url, lambda: self.creds, reactor=reactor,
                              http=http_client(), **kw)

    @defer.inlineCallbacks
    def error(self, code: int, body: bytes) -> Any:
        self.platform.default = (code, body)
        try:
            yield self.access.check("abcd", "bob")
        except PlatformUnavailable as e:
            return str(e)
        raise AssertionError("the call answered")

    @defer.inlineCallbacks
    def test_yes_and_no(self) -> Any:
        assert (yield self.access.check("abcd", "bob")) is True
        uri, auth = self.platform.requests[0]
        assert uri == "/api/studios/abcd/access?user=bob"
        assert auth == "Basic " + base64.b64encode(b"gw-client:s3cret").decode()
        for code, body in ((200, b'{"allowed": false}'), (403, b"<html>no</html>"),
                           (404, b"")):
            self.platform.default = (code, body)
            assert (yield self.access.check("abcd", "bob")) is False

    @defer.inlineCallbacks
    def test_errors_say_what_came_back(self) -> Any:
        assert (yield self.error(500, b"<html>oops</html>")) == f"{WHAT} answered HTTP 500"
        assert (yield self.error(401, b'{"error": "invalid_client"}')) == (
            f"{WHAT} answered HTTP 401: check the gateway's OIDC client (its id and secret)")
        self.creds = None  # not registered yet (the issuer is down): nothing to send
        assert (yield self.error(401, b'{"error": "invalid_client"}')) == (
            f"{WHAT} answered HTTP 401: the gateway has no OIDC client secret to send (the "
            "issuer has not answered since the start, or the client has none)")
        assert self.platform.requests[-1][1] == ""
        self.creds = ("gw-client", "s3cret")
        for body in (b"{not json", b"[true]", b'{"allowed": "yes"}', b""):
            assert (yield self.error(200, body)) == \
                f'{WHAT} answered HTTP 200 without {{"allowed": true|false}}', body

    @defer.inlineCallbacks
    def test_an_answer_too_large_is_not_read_whole(self) -> Any:
        # It was read whole (any size), and a padded yes let the user in.
        padded = b'{"allowed": true, "pad": "' + b"x" * 1024 * 1024 + b'"}'
        assert (yield self.error(200, padded)) == f"{WHAT} answered more than 1024 KiB"

    @defer.inlineCallbacks
    def test_a_body_that_never_ends_fails_in_time(self) -> Any:
        # The headers arrive, the body stalls: the deadline covers the whole answer. It
        # covered only the headers, and this user's requests to the studio waited for as
        # long as the Platform held the connection open (each new one joined the first).
        self.access = self.client(timeout=0.3)
        self.platform.stall_body = True
        assert (yield self.error(200, b'{"allowed": true}')) == \
            f"{WHAT} got no answer within 0.3s"
        # The gateway hung up on it (this waits for the server to see the connection go).
        yield self.platform.stalled[0].notifyFinish().addErrback(lambda _: None)
        assert self.platform.stalled[0].channel is None

    @defer.inlineCallbacks
    def test_a_platform_that_is_down(self) -> Any:
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        self.access = self.client()
        assert (yield self.error(200, b"")) == \
            f"{WHAT} failed: {self.url} cannot be reached"

    @defer.inlineCallbacks
    def test_an_outage_is_a_few_lines_not_one_per_call(self) -> Any:
        # While the Platform is down, every user's request and every open connection's
        # re-check fails; each was one warning (a flood with many users).
        clock = Clock()
        self.access = self.client(clock=clock)
        events: list[dict[str, Any]] = []
        self.access._log = Logger(namespace="platform", observer=events.append)
        self.platform.default = (502, b"<html>bad gateway</html>")
        for i in range(20):
            with self.assertRaises(PlatformUnavailable):
                yield self.access.check("abcd", f"user{i}")
        lines = [formatEvent(e) for e in events]
        assert lines == ["the Platform's access call for user0 on abcd answered HTTP 502"]
        clock.advance(QUIET)
        with self.assertRaises(PlatformUnavailable):
            yield self.access.check("abcd", "bob")
        assert formatEvent(events[-1]) == (
            "the Platform's access call for bob on abcd answered HTTP 502 (and 19 more "
            "like it in the last 60s)")
        # Another kind of failure is told at once (an operator learns what changed).
        self.platform.default = (401, b'{"error": "invalid_client"}')
        for user in ("dave", "erin"):
            with self.assertRaises(PlatformUnavailable):
                yield self.access.check("abcd", user)
        assert formatEvent(events[-1]) == (
            "the Platform's access call for dave on abcd answered HTTP 401: check the "
            "gateway's OIDC client (its id and secret)")
        clock.advance(5)
        self.platform.default = (200, b'{"allowed": false}')
        assert (yield self.access.check("abcd", "bob")) is False
        assert (yield self.access.check("abcd", "carol")) is False
        assert [formatEvent(e) for e in events[3:]] == [
            "the Platform's access calls answer again (23 failed in the last 65s)"]
        assert [e["log_level"].name for e in events] == ["warn", "warn", "warn", "info"]

    @defer.inlineCallbacks
    def test_the_authorizer_asks_again_after_a_stalled_answer(self) -> Any:
        store = MemoryStore(Clock())
        yield store.create(SessionRecord(
            id="abcd", workspace_id=None, tool="jupyter", owner="alice", allowed_users=(),
            ssh_enabled=False, token_hash="sha256:x", created_at=0.0))
        clock = Clock()  # the decisions' cache; the calls run on the reactor
        authorizer = Authorizer(store, clock=clock, ttl=120, platform=self.client(
            timeout=0.3), workspace_allowed=lambda _: True)
        self.platform.stall_body = True
        first = yield authorizer.check("abcd", "bob")
        assert (first.allowed, first.status) == (False, 503)
        self.platform.stall_body = False
        clock.advance(ERROR_TTL)  # the failure is forgotten: asked again
        again = yield authorizer.check("abcd", "bob")
        assert (again.allowed, again.reason) == (True, "platform")
        self.flushLoggedErrors()



@pytest.mark.parametrize(("issuer", "sent"), [
    (None, True),  # the Platform is the issuer (PLATFORM_URL alone)
    ("https://platform.example.test/", True),  # the same origin, said again
    ("https://platform.example.test:443/realms/x", True),
    ("https://idp.example.test/realms/x", False),  # another provider
    ("http://platform.example.test/", False),  # another scheme is another origin
])
def test_the_platform_gets_the_client_secret_only_when_it_is_the_issuer(
        tmp_path: Any, issuer: str | None, sent: bool) -> None:
    """With CONNECT_OIDC_ISSUER_URL naming another provider, the Platform's calls carried
    that provider's client id and secret (HTTP Basic) to the Platform: a secret of one
    party sent to another. Now only the Platform's own client is sent to it."""
    from studios_gateway.auth.login import Auth
    from studios_gateway.auth.oidc import ClientRegistration
    from studios_gateway.config_loading import load_config
    from studios_gateway.ssh.component import make_platform_keys

    env = {"PLATFORM_URL": "https://platform.example.test",
           "CONNECT_PROXY_URL": "https://connect.example.test",
           "CONNECT_STORAGE_ROOT": str(tmp_path)}
    if issuer is not None:
        env["CONNECT_OIDC_ISSUER_URL"] = issuer
    config = load_config(environ=env)
    auth = Auth.from_config(config, MemoryStore(Clock()), reactor=reactor)
    assert auth.rp is not None and auth.authorizer.platform is not None
    auth.rp.client = ClientRegistration(
        issuer=auth.rp.settings.issuer, client_name="gw", client_id="gw-client",
        client_secret="s3cret", redirect_uris=("https://connect.example.test/cb",))
    expected = ("gw-client", "s3cret") if sent else None
    assert auth.authorizer.platform._credentials() == expected
    keys = make_platform_keys(auth, reactor)  # the SSH key call: the same rule
    assert keys is not None and keys._credentials() == expected
    warned = [w for w in config.warnings if "CONNECT_OIDC_ISSUER_URL" in w]
    assert len(warned) == (0 if sent else 1), config.warnings
