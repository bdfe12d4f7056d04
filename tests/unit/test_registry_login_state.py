"""Login state every node must share (the store's spend_once / log_out): the contract
(run here against MemoryStore, the cache and the journals; in
tests/integration/test_login_state_redis.py against Redis), and how auth/ uses it: a
login link or hand-off code used on one node is refused on another, a store that cannot
answer refuses it (503), a logout on one node ends the login on the others."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.auth.authorizer import LOGOUT_RETRY, Authorizer
from studios_gateway.auth.files import Journal
from studios_gateway.auth.login import Auth, Identity
from studios_gateway.auth.settings import AuthSettings
from studios_gateway.registry.cache import CachingStore
from studios_gateway.registry.memory import MemoryStore
from tests.support.auth_browser import LoginDriver, request
from tests.support.stores import FlakyStore
from tests.unit.test_auth_authorizer import record
from tests.unit.test_auth_login import run
from tests.unit.test_registry_memory import Recorder

PROXY = "https://connect.example.test"
KEY = b"k" * 32


class LoginStateContract:
    """What every store does with single-use ids and logouts. Subclasses provide
    `self.store`, `self.other` (a second node on the same backend) and `check_lifetime`."""

    store: Any
    other: Any

    def check_lifetime(self, kind: str, key: str, ttl: float) -> defer.Deferred[None]:
        """`key` (kind "once" or "logout") is kept `ttl` seconds and then forgotten."""
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_an_id_is_spent_once_on_any_node(self) -> Any:
        assert (yield self.other.is_spent("jti-1")) is False
        assert (yield self.store.spend_once("jti-1", 60)) is True
        assert (yield self.other.spend_once("jti-1", 60)) is False
        assert (yield self.store.spend_once("jti-1", 60)) is False
        assert (yield self.other.is_spent("jti-1")) is True
        assert (yield self.other.spend_once("jti-2", 60)) is True

    @defer.inlineCallbacks
    def test_spent_ids_are_kept_for_their_lifetime(self) -> Any:
        assert (yield self.store.spend_once("jti-3", 30)) is True
        yield self.check_lifetime("once", "jti-3", 30)
        assert (yield self.other.spend_once("jti-3", 30)) is True  # forgotten: spendable

    @defer.inlineCallbacks
    def test_bad_ids_and_lifetimes_are_refused(self) -> Any:
        for key, ttl in (("two words", 5), ("", 5), ("x" * 129, 5), ("a/b", 5),
                         ("ok", 0), ("ok", -1), ("ok", True), ("ok", "5")):
            for call in (self.store.spend_once, self.store.log_out):
                try:
                    yield call(key, ttl)
                except ValueError:
                    continue
                raise AssertionError(f"{call.__name__}({key!r}, {ttl!r}) accepted")
        assert (yield self.store.is_spent("two words")) is False

    @defer.inlineCallbacks
    def test_a_logout_reaches_every_node(self) -> Any:
        heard = Recorder()
        self.other.subscribe_logouts(heard)
        yield self.store.log_out("login-1", 3600)
        yield heard.wait_for("login-1")
        live = yield self.other.logged_out()
        assert set(live) == {"login-1"} and 3500 < live["login-1"] <= 3600

    @defer.inlineCallbacks
    def test_logouts_are_kept_for_the_login_lifetime(self) -> Any:
        yield self.store.log_out("login-2", 30)
        yield self.check_lifetime("logout", "login-2", 30)
        assert "login-2" not in (yield self.other.logged_out())


class MemoryLoginStateTests(LoginStateContract, unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = self.other = MemoryStore(self.clock)

    def check_lifetime(self, kind: str, key: str, ttl: float) -> defer.Deferred[None]:
        def kept() -> bool:
            if kind == "once":
                return bool(self.successResultOf(self.other.is_spent(key)))
            return key in self.successResultOf(self.other.logged_out())

        self.clock.advance(ttl - 0.5)
        assert kept()
        self.clock.advance(1)
        assert not kept()
        return defer.succeed(None)


class CachedLoginStateTests(MemoryLoginStateTests):
    """The cache passes the login state straight through (nothing of it is cached)."""

    def setUp(self) -> None:
        self.clock = Clock()
        backend = MemoryStore(self.clock)
        self.store = CachingStore(backend, 120, self.clock)
        self.other = CachingStore(backend, 120, self.clock)


class JournalTests(unittest.TestCase):
    """One node, no Redis: the memory store's login state is backed by the journals."""

    def test_a_restart_remembers_spent_ids_and_logouts(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="login-state-"))  # outside the repository
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        clock = Clock()
        clock.advance(1_700_000_000)
        first = MemoryStore(clock)
        first.keep_login_journals(Journal(root / "spent.log"), Journal(root / "logouts.log"))
        assert self.successResultOf(first.spend_once("jti-1", 100)) is True
        self.successResultOf(first.log_out("login-1", 50))
        self.successResultOf(first.stop())
        clock.advance(10)
        again = MemoryStore(clock)
        again.keep_login_journals(Journal(root / "spent.log"), Journal(root / "logouts.log"))
        self.addCleanup(again.stop)
        assert self.successResultOf(again.spend_once("jti-1", 100)) is False
        assert self.successResultOf(again.is_spent("jti-1")) is True
        assert self.successResultOf(again.logged_out()) == {"login-1": 40.0}
        assert (root / "spent.log").stat().st_mode & 0o777 == 0o600


    def test_a_full_disk_refuses_a_link_for_now_and_a_logout_holds_all_the_same(self) -> None:
        """A journal that cannot be written (a full disk: /dev/full) ended the login link's
        POST in a traceback ('a login route failed', critical), with the id left spent in
        memory: the link was then 'used already'. Now the id is not spent, the login is
        refused for now (StoreUnavailable: 503 'Try again shortly', one warning), and a
        logout holds in this process."""
        from studios_gateway.registry.base import StoreUnavailable

        root = Path(tempfile.mkdtemp(prefix="login-state-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        clock = Clock()
        clock.advance(1_700_000_000)
        store = MemoryStore(clock)
        spent, logouts = Journal(root / "spent.log"), Journal(root / "logouts.log")
        store.keep_login_journals(spent, logouts)
        self.addCleanup(store.stop)
        for journal in (spent, logouts):
            journal._file.close()
            journal._file = open("/dev/full", "a", encoding="ascii")  # noqa: SIM115
        failure = self.failureResultOf(store.spend_once("jti-1", 100), StoreUnavailable)
        assert failure.value.reason == ("a used link or code cannot be recorded: cannot "
                                        "write " + str(root / "spent.log") +
                                        ": No space left on device"), failure.value.reason
        assert self.successResultOf(store.is_spent("jti-1")) is False
        self.successResultOf(store.log_out("login-1", 50))
        assert self.successResultOf(store.logged_out()) == {"login-1": 50.0}
        # Space again (the journal was opened again after the failure): spent once.
        assert self.successResultOf(store.spend_once("jti-1", 100)) is True
        assert self.successResultOf(store.spend_once("jti-1", 100)) is False
        assert "jti-1" in (root / "spent.log").read_text()


# How auth/ uses it --------------------------------------------------------------------------


def node(store: Any, clock: Clock, *, issuer: bool = False) -> Auth:
    """One gateway node's Auth on `store` (shared with other nodes), subdomain mode."""
    authorizer = Authorizer(store, clock=clock, ttl=120,
                            workspace_allowed=lambda workspace: True)
    settings = AuthSettings(proxy_url=PROXY, studios_domain="connect.example.test",
                            path_routing=False, storage_root="/nonexistent",
                            secure_cookies=True,
                            issuer="https://idp.example.org" if issuer else None)
    auth = Auth(settings, reactor=clock, authorizer=authorizer, key=KEY)
    auth.start()
    return auth


class TwoNodesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.backend = MemoryStore(self.clock)
        self.successResultOf(self.backend.create(record("abc")))
        self.flaky = FlakyStore(self.backend)
        self.a = node(CachingStore(self.backend, 120, self.clock), self.clock)
        self.b = node(CachingStore(self.flaky, 120, self.clock), self.clock)

    def test_a_login_link_used_on_one_node_is_refused_on_the_other(self) -> None:
        link = self.a.mint_login_link("abc", "alice")
        who, _ = run(LoginDriver(self.a).open(link, method="POST"))
        assert isinstance(who, Identity) and who.subject == "alice"
        for method in ("GET", "POST"):
            refused = run(self.b.handle(request(link, method=method)))
            assert refused.status == 400 and b"used already" in refused.body

    def test_a_hand_off_code_is_spent_once_across_nodes(self) -> None:
        bind = "b" * 43  # the studio host's hand-off cookie, which the code names
        to_studio = self.a.routes._complete(
            "alice", "login-1", self.clock.seconds() + 3600,
            "https://abc.connect.example.test/lab", new_login=False, bind=bind)
        handoff = dict(to_studio.headers)[b"Location"].decode()
        assert "/_connect/handoff?code=" in handoff
        cookie = ((b"Cookie", f"__Host-connect_handoff={bind}".encode()),)
        self.flaky.up = False
        # not known: refused
        assert run(self.b.handle(request(handoff, headers=cookie))).status == 503
        self.flaky.up = True
        landed = run(self.b.handle(request(handoff, headers=cookie)))
        assert landed.status == 302 and dict(landed.headers)[b"Location"] == b"/lab"
        again = run(self.a.handle(request(handoff, headers=cookie)))
        assert again.status == 400 and b"used already" in again.body

    def test_a_store_that_cannot_answer_refuses_the_link_for_now(self) -> None:
        link = self.a.mint_login_link("abc", "alice")
        self.flaky.up = False
        for method in ("GET", "POST"):
            busy = run(self.b.handle(request(link, method=method)))
            assert busy.status == 503 and (b"Retry-After", b"5") in busy.headers
        self.flaky.up = True  # nothing was spent meanwhile: the link still works
        who, _ = run(LoginDriver(self.b).open(link, method="POST"))
        assert isinstance(who, Identity)

    def test_a_logout_on_one_node_ends_the_login_on_the_other(self) -> None:
        alice = LoginDriver(self.a)
        who, _ = run(alice.open(self.a.mint_login_link("abc", "alice"), method="POST"))
        closed: list[str] = []
        self.b.authorizer.track("abc", "alice", closed.append, login_id=who.login_id)
        self.b.authorizer.track("abc", "alice", closed.append, login_id="someone-else")
        self.a.authorizer.logout(who.login_id)
        assert closed == ["logged out"]
        assert self.b.authorizer.is_logged_out(who.login_id)

    def test_a_logout_the_store_missed_is_written_later(self) -> None:
        self.flaky.up = False
        self.b.authorizer.logout("login-b")  # B cannot reach the store
        assert self.b.authorizer.is_logged_out("login-b")
        assert not self.a.authorizer.is_logged_out("login-b")
        self.clock.advance(LOGOUT_RETRY)
        assert not self.a.authorizer.is_logged_out("login-b")  # still down
        self.flaky.up = True
        self.clock.advance(LOGOUT_RETRY)
        assert self.a.authorizer.is_logged_out("login-b")

    def test_a_node_learns_earlier_logouts_at_start_and_after_missed_events(self) -> None:
        self.a.authorizer.logout("early")
        deaf = DeafStore(self.backend)
        late = node(deaf, self.clock)
        assert late.authorizer.is_logged_out("early")  # read at start
        deaf.listening = False  # as a lost pub/sub link: events do not arrive
        self.a.authorizer.logout("while-away")
        assert not late.authorizer.is_logged_out("while-away")
        deaf.listening = True
        deaf.lost()  # the store says events may have been missed: read them all again
        assert late.authorizer.is_logged_out("while-away")


class DeafStore:
    """A MemoryStore whose logout events can be held back, as a lost subscription."""

    def __init__(self, inner: MemoryStore):
        self.inner = inner
        self.listening = True
        self.callbacks: list[Any] = []
        inner.subscribe_logouts(self._heard)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def subscribe_logouts(self, callback: Any) -> Any:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def _heard(self, login_id: str | None) -> None:
        if self.listening:
            for cb in list(self.callbacks):
                cb(login_id)

    def lost(self) -> None:
        self._heard(None)
