"""The gateway says whether its Redis persists (AOF or RDB) and warns when it does not."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from studios_gateway.registry.redis_persistence import (
    check_eviction,
    check_persistence,
    describe,
    describe_eviction,
    log_persistence,
)

AOF_ON = "# Persistence\r\nloading:0\r\naof_enabled:1\r\n"
AOF_OFF = "# Persistence\r\nloading:0\r\naof_enabled:0\r\n"


@pytest.mark.parametrize("info, save, persists, words", [
    (AOF_ON, "", True, "AOF"),
    (AOF_OFF, "3600 1 300 100", True, "RDB snapshots (save 3600 1 300 100)"),
    (AOF_ON, "60 1", True, "AOF and RDB"),
    (AOF_OFF, "", False, "neither AOF nor RDB"),
    (AOF_OFF, None, None, "cannot tell"),  # CONFIG refused (a managed Redis)
    (None, "", None, "cannot tell"),
])
def test_describe(info: str | None, save: str | None, persists: bool | None,
                  words: str) -> None:
    got = describe(info, save)
    assert got[0] is persists and words in got[1]


class FakeRedis:
    def __init__(self, info: Any, save: Any, maxmemory: str = "0",
                 policy: str = "noeviction"):
        self.answers = {"INFO": info, "CONFIG": save}
        self.settings = {"maxmemory": maxmemory, "maxmemory-policy": policy}

    def command(self, *args: str) -> defer.Deferred[Any]:
        answer = self.answers[args[0]]
        if args[:2] == ("CONFIG", "GET") and args[2] in self.settings \
                and not isinstance(answer, Exception):
            answer = [args[2], self.settings[args[2]]]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def checked(store: FakeRedis) -> tuple[bool | None, str]:
    out: list[Any] = []
    check_persistence(store).addBoth(out.append)
    return out[0]


def test_the_replies_as_the_client_gives_them() -> None:
    assert checked(FakeRedis(AOF_OFF, ["save", ""]))[0] is False
    assert checked(FakeRedis(AOF_OFF.encode(), [b"save", b"900 1"]))[0] is True
    assert checked(FakeRedis(AOF_OFF, {"save": "900 1"}))[0] is True
    assert checked(FakeRedis(AOF_OFF, RuntimeError("ERR unknown command 'CONFIG'")))[0] is None


def test_a_redis_that_persists_nothing_is_a_warning_naming_what_is_lost() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        log_persistence(FakeRedis(AOF_OFF, ["save", ""]), "redis:6379")
        log_persistence(FakeRedis(AOF_ON, ["save", ""]), "redis:6380")
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("address") in ("redis:6379", "redis:6380")]
    assert [(e["address"], e["log_level"].name) for e in ours] == [
        ("redis:6379", "warn"), ("redis:6380", "info")]
    assert "loses every session" in ours[0]["log_format"]


@pytest.mark.parametrize("maxmemory, policy, lost", [
    ("0", "allkeys-lru", None),  # no limit: the policy never applies
    ("104857600", "noeviction", None),
    ("104857600", "allkeys-lru", "sessions, tunnel bindings"),
    ("104857600", "volatile-ttl", "tunnel bindings, used login links and logouts"),
    (None, None, None),  # CONFIG refused
])
def test_describe_eviction(maxmemory: str | None, policy: str | None,
                           lost: str | None) -> None:
    risk = describe_eviction(maxmemory, policy)
    if lost is None:
        assert risk is None
    else:
        assert risk is not None and lost in risk and "noeviction" in risk


def test_eviction_asked_as_the_client_gives_the_replies() -> None:
    out: list[Any] = []
    check_eviction(FakeRedis(AOF_ON, None, "1000", "allkeys-lfu")).addBoth(out.append)
    assert out[0] is not None and "allkeys-lfu" in out[0]
    out.clear()
    check_eviction(FakeRedis(AOF_ON, RuntimeError("ERR unknown command"))).addBoth(out.append)
    assert out == [None]


def test_a_redis_that_may_evict_is_a_warning_at_start() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        log_persistence(FakeRedis(AOF_ON, ["save", ""], "1000", "allkeys-lru"), "redis:6381")
        log_persistence(FakeRedis(AOF_ON, ["save", ""], "1000", "noeviction"), "redis:6382")
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e["address"] for e in events
              if e.get("log_level") is not None and e["log_level"].name == "warn"
              and e.get("address") in ("redis:6381", "redis:6382")]
    assert warned == ["redis:6381"]
