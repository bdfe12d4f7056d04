"""Login state in a real redis-server: the contract of tests/unit/test_registry_login_state.py
on two nodes sharing one Redis, the key layout, two authorizers ending a login on each
other at once, and an outage (spending fails at once; nothing is accepted twice)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.internet import defer, reactor

from studios_gateway.auth.authorizer import Authorizer
from tests.integration.test_registry_redis import RedisCase, fail_fast, new_store
from tests.support.redis_server import redis_available
from tests.unit.test_registry_login_state import LoginStateContract

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server not installed")]


class RedisLoginStateTests(LoginStateContract, RedisCase):
    def setUp(self) -> defer.Deferred[None]:
        return self.two_nodes()

    @defer.inlineCallbacks
    def check_lifetime(self, kind: str, key: str, ttl: float) -> Any:
        name = f"{self.store.prefix}:_{kind}:{key}"
        pttl = int((yield self.store.command("PTTL", name)))
        assert ttl * 1000 - 5000 < pttl <= ttl * 1000, pttl
        yield self.store.command("PEXPIREAT", name, 1)  # let the lifetime run out now
        if kind == "once":
            assert (yield self.other.is_spent(key)) is False
        else:
            assert key not in (yield self.other.logged_out())

    @defer.inlineCallbacks
    def test_layout_next_to_sessions(self) -> Any:
        from tests.unit.test_registry_memory import record

        yield self.store.create(record("abc123"))
        yield self.store.spend_once("abc123", 60)  # an id that looks like a session id
        yield self.store.log_out("abc123", 60)
        p = self.store.prefix
        assert (yield self.store.command("EXISTS", f"{p}:_once:abc123")) == 1
        assert (yield self.store.command("EXISTS", f"{p}:_logout:abc123")) == 1
        assert [r.id for r in (yield self.other.list_sessions())] == ["abc123"]
        assert (yield self.other.get("abc123")) == record("abc123")

    @defer.inlineCallbacks
    def test_a_logout_on_one_node_closes_connections_on_the_other_at_once(self) -> Any:
        def authorizer(store: Any) -> Authorizer:
            a = Authorizer(store, clock=reactor, ttl=120, workspace_allowed=lambda w: True)
            a.start()
            self.addCleanup(a.stop)
            return a

        from tests.unit.test_registry_memory import record

        # The session exists, and alice may use it: the logout is the only reason to close
        # (a recheck that found no session closed it as ended first: CI, two runners).
        yield self.store.create(record("abc123"))
        node_a, node_b = authorizer(self.store), authorizer(self.other)
        closed: defer.Deferred[str] = defer.Deferred()
        node_b.track("abc123", "alice", closed.callback, login_id="login-x")
        start = time.monotonic()
        node_a.logout("login-x")
        assert (yield closed) == "logged out"
        print(f"a logout on node A closed the connection on node B in "
              f"{(time.monotonic() - start) * 1000:.1f} ms")
        assert node_b.is_logged_out("login-x")
        assert "login-x" in (yield self.other.logged_out())  # what a node reads at start


class RedisLoginStateOutageTests(RedisCase):
    """Redis goes away: spending an id fails at once (the login page answers 503), and an
    id spent before the outage stays spent after it."""

    timeout = 20

    @defer.inlineCallbacks
    def test_spending_fails_closed_while_redis_is_down(self) -> Any:
        store = yield self.started(new_store(self.server))
        assert (yield store.spend_once("before", 600)) is True
        self.server.kill()
        yield fail_fast(lambda: store.spend_once("during", 600),
                     lambda: store.is_spent("before"), lambda: store.log_out("l1", 60),
                     lambda: store.logged_out())
        self.server.start()  # no persistence configured: a fresh, empty Redis
        yield store.when_connected()
        assert (yield store.spend_once("during", 600)) is True
        assert (yield store.spend_once("during", 600)) is False
