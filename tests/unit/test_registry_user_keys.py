"""Users' SSH keys in the session registry: the contract every store keeps (here against
MemoryStore, in tests/integration/test_registry_redis.py against Redis), the local cache,
and the SSH side (StoreUserKeys, the single-node file, the one-time import)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.registry.base import (
    MAX_USER_KEY_LENGTH,
    MAX_USER_KEYS,
    BadUserKeys,
    StoreUnavailable,
    key_blob,
)
from studios_gateway.registry.cache import CachingStore
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.keys import KeysUnavailable, key_file_path
from studios_gateway.ssh.user_keys import FileImport, StoreUserKeys, keep_in_file
from tests.support.stores import FlakyStore
from tests.unit.test_registry_memory import Recorder


def line(n: int, comment: str = "") -> str:
    """A syntactically valid key line (the registry does not parse keys)."""
    return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA{n:08d}" + (f" {comment}" if comment else "")


def real_key() -> tuple[Key, str]:
    key = Key(ed25519.Ed25519PrivateKey.generate()).public()
    return key, key.toString("OPENSSH").decode() + " alice@laptop"


class UserKeysContract:
    """What every store does with users' keys. Subclasses provide `self.store` and
    `self.other` (a second node on the same backend)."""

    store: Any
    other: Any

    def assertBad(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        def failed(f: Any) -> None:
            f.trap(BadUserKeys)

        def succeeded(result: Any) -> None:
            raise AssertionError(f"accepted: {result!r:.100}")

        return d.addCallbacks(succeeded, failed)

    @defer.inlineCallbacks
    def test_lifecycle(self) -> Any:
        user = "alice@example.com:x"  # '@' and ':' are fine in user names
        assert (yield self.store.get_user_keys(user)) == []
        yield self.store.set_user_keys(user, [line(1, "laptop"), line(2)])
        assert (yield self.other.get_user_keys(user)) == [line(1, "laptop"), line(2)]
        merged = yield self.other.add_user_keys(user, [line(2, "again"), line(3), line(3)])
        assert merged == [line(1, "laptop"), line(2), line(3)]
        assert (yield self.store.get_user_keys(user)) == merged
        assert (yield self.store.remove_user_keys(user, [key_blob(line(2)), "nope"])) == 1
        assert (yield self.other.get_user_keys(user)) == [line(1, "laptop"), line(3)]
        assert (yield self.store.remove_user_keys(user)) == 2
        assert (yield self.other.get_user_keys(user)) == []
        assert (yield self.store.remove_user_keys(user)) == 0
        assert (yield self.store.add_user_keys("bob", [])) == []
        yield self.store.set_user_keys("carol", [line(1)])
        yield self.store.set_user_keys("carol", [])
        assert (yield self.other.get_user_keys("carol")) == []

    @defer.inlineCallbacks
    def test_limits(self) -> Any:
        many = [line(n) for n in range(MAX_USER_KEYS)]
        yield self.store.set_user_keys("alice", many)
        assert len((yield self.other.get_user_keys("alice"))) == MAX_USER_KEYS
        yield self.assertBad(self.store.set_user_keys("bob", [*many, line(999)]))
        # One more for alice is refused and changes nothing; a key she has is fine.
        yield self.assertBad(self.other.add_user_keys("alice", [line(999)]))
        assert len((yield self.store.add_user_keys("alice", [line(5)]))) == MAX_USER_KEYS
        long = line(1, "x" * MAX_USER_KEY_LENGTH)
        yield self.assertBad(self.store.set_user_keys("bob", [long]))
        yield self.assertBad(self.store.add_user_keys("bob", [long]))
        yield self.assertBad(self.store.set_user_keys("bob", ["not a key"]))
        yield self.assertBad(self.store.set_user_keys("bob", [line(1), line(1, "dup")]))
        yield self.assertBad(self.store.set_user_keys("bad user", [line(1)]))
        yield self.assertBad(self.store.set_user_keys("", [line(1)]))
        assert (yield self.other.get_user_keys("bob")) == []

    @defer.inlineCallbacks
    def test_changes_reach_other_nodes(self) -> Any:
        keys_seen, sessions_seen = Recorder(), Recorder()
        self.other.subscribe_user_keys(keys_seen)
        self.other.subscribe(sessions_seen)
        yield self.store.set_user_keys("alice", [line(1)])
        yield keys_seen.wait_for("alice", 1)
        yield self.store.add_user_keys("alice", [line(2)])
        yield keys_seen.wait_for("alice", 2)
        yield self.store.remove_user_keys("alice", [key_blob(line(1))])
        yield keys_seen.wait_for("alice", 3)
        yield self.store.remove_user_keys("alice")
        yield keys_seen.wait_for("alice", 4)
        assert "alice" not in sessions_seen.seen


class MemoryUserKeysTests(UserKeysContract, unittest.TestCase):
    def setUp(self) -> None:
        self.store = self.other = MemoryStore(Clock())


class CachedUserKeysTests(UserKeysContract, unittest.TestCase):
    """The cache keeps the contract (its own writes are seen at once)."""

    def setUp(self) -> None:
        backend = MemoryStore(Clock())
        self.store = CachingStore(backend, 120, Clock())
        self.other = CachingStore(backend, 120, Clock())


class UserKeysCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = MemoryStore(self.clock)
        self.flaky = FlakyStore(self.backend)
        self.cache = CachingStore(self.flaky, 120, self.clock)

    def get(self, user: str = "alice") -> list[str]:
        return self.successResultOf(self.cache.get_user_keys(user))

    def test_cached_for_ttl_and_dropped_on_a_change_anywhere(self) -> None:
        self.successResultOf(self.backend.set_user_keys("alice", [line(1)]))
        assert self.get() == [line(1)]
        calls = self.flaky.total_calls
        self.clock.advance(119)
        assert self.get() == [line(1)] and self.flaky.total_calls == calls
        self.clock.advance(2)
        self.get()
        assert self.flaky.total_calls == calls + 1
        # Another node changes them: its event drops our copy at once.
        self.successResultOf(self.backend.add_user_keys("alice", [line(2)]))
        assert self.get() == [line(1), line(2)]

    def test_none_is_cached_until_a_key_is_registered(self) -> None:
        assert self.get() == []
        self.successResultOf(self.backend.set_user_keys("alice", [line(1)]))
        assert self.get() == [line(1)]

    def test_own_writes_are_seen_at_once(self) -> None:
        assert self.get() == []
        self.successResultOf(self.cache.add_user_keys("alice", [line(1)]))
        assert self.get() == [line(1)]
        self.successResultOf(self.cache.remove_user_keys("alice"))
        assert self.get() == []

    def test_outage_serves_the_last_answer(self) -> None:
        self.successResultOf(self.cache.set_user_keys("alice", [line(1)]))
        assert self.get() == [line(1)]
        self.clock.advance(1000)
        self.cache.invalidate(None)
        self.backend._key_subscribers.notify(None)  # the pub/sub link was lost
        self.flaky.up = False
        assert self.get() == [line(1)]
        self.failureResultOf(self.cache.get_user_keys("bob"), StoreUnavailable)
        self.failureResultOf(self.cache.set_user_keys("alice", []), StoreUnavailable)
        assert self.get() == [line(1)]  # the failed write keeps the fallback
        self.flaky.up = True
        self.successResultOf(self.backend.set_user_keys("alice", [line(2)]))
        assert self.get() == [line(2)]

    def test_callers_cannot_change_the_cached_list(self) -> None:
        self.successResultOf(self.backend.set_user_keys("alice", [line(1)]))
        self.get().append(line(2))
        assert self.get() == [line(1)]


# The SSH side --------------------------------------------------------------------------


class FakePlatform:
    def __init__(self, answer: bool | str = False):
        self.answer = answer
        self.asked: list[str] = []

    async def accepts(self, user: str, key: Key) -> bool:
        self.asked.append(user)
        if isinstance(self.answer, str):
            raise KeysUnavailable(self.answer)
        return self.answer


class StoreUserKeysTests(unittest.TestCase):
    def setUp(self) -> None:
        self.backend = MemoryStore(Clock())
        self.flaky = FlakyStore(self.backend)
        self.key, self.line = real_key()

    def accepts(self, keys: StoreUserKeys, user: str = "alice") -> Any:
        d = defer.Deferred.fromCoroutine(keys.accepts(user, self.key))
        return self.successResultOf(d)

    def test_registered_keys_first_then_the_platform(self) -> None:
        platform = FakePlatform(answer=True)
        keys = StoreUserKeys(self.flaky, platform)
        self.successResultOf(self.backend.set_user_keys("alice", [self.line]))
        assert self.accepts(keys) is True
        assert platform.asked == []  # a registered key needs no Platform
        assert self.accepts(keys, "bob") is True
        assert platform.asked == ["bob"]
        platform.answer = False
        assert self.accepts(keys, "bob") is False
        assert self.accepts(StoreUserKeys(self.flaky), "bob") is False

    def test_failures_say_why(self) -> None:
        keys = StoreUserKeys(self.flaky, FakePlatform("the Platform's SSH key call answered "
                                                      "HTTP 500"))
        self.successResultOf(self.backend.set_user_keys("alice", [self.line]))
        assert self.accepts(keys) is True
        f = self.failureResultOf(defer.Deferred.fromCoroutine(keys.accepts("bob", self.key)),
                                 KeysUnavailable)
        assert str(f.value) == ("cannot check bob's SSH keys right now (the Platform's SSH "
                                "key call answered HTTP 500); try again shortly")
        self.flaky.up = False
        f = self.failureResultOf(defer.Deferred.fromCoroutine(
            StoreUserKeys(self.flaky).accepts("alice", self.key)), KeysUnavailable)
        assert "the gateway's key registry is unavailable" in str(f.value)


class KeyFileTests(unittest.TestCase):
    def setUp(self) -> None:
        import shutil
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="user-keys-test-"))  # not in the repository
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        self.path = key_file_path(str(self.root))
        self.path.parent.mkdir(parents=True)
        self.key, self.line = real_key()
        self.path.write_text(json.dumps({"users": {"alice": [self.line, "garbage"],
                                                   "bob": [self.line]}}))

    def test_single_node_keeps_the_file(self) -> None:
        store = MemoryStore(Clock())
        keep_in_file(store, str(self.root))
        assert self.successResultOf(store.get_user_keys("bob")) == [self.line]
        assert self.successResultOf(store.get_user_keys("alice")) == []  # a bad line
        self.successResultOf(store.set_user_keys("alice", [line(1)]))
        assert json.loads(self.path.read_text())["users"]["alice"] == [line(1)]
        assert stat.S_IMODE(os.stat(self.path).st_mode) == 0o600
        self.successResultOf(store.remove_user_keys("bob"))
        assert "bob" not in json.loads(self.path.read_text())["users"]

    def test_import_merges_once_and_waits_for_the_registry(self) -> None:
        clock = Clock()
        backend = MemoryStore(clock)
        flaky = FlakyStore(backend)
        self.successResultOf(backend.set_user_keys("bob", [line(1)]))
        self.path.write_text(json.dumps({"users": {"bob": [self.line],
                                                   "carol": [self.line]}}))
        flaky.up = False
        job = FileImport(flaky, str(self.root), clock)
        job.start()
        clock.advance(10)  # retried every 2 s while the registry is down
        assert not job.done.called and self.path.exists()
        flaky.up = True
        clock.advance(2)
        assert self.successResultOf(job.done) == 2
        assert self.successResultOf(backend.get_user_keys("bob")) == [line(1), self.line]
        assert self.successResultOf(backend.get_user_keys("carol")) == [self.line]
        assert not self.path.exists()
        assert self.path.with_name("user_keys.json.imported").exists()
        # Once: a key deleted since does not come back at the next start.
        self.successResultOf(backend.remove_user_keys("carol"))
        again = FileImport(flaky, str(self.root), clock)
        again.start()
        assert self.successResultOf(again.done) == 0
        assert self.successResultOf(backend.get_user_keys("carol")) == []
