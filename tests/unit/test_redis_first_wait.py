"""A command made before the Redis store's first connection waits for it, within the
command timeout (registry/redis.py ``_when_first_connected``): what is left of those waits
once they timed out, or at a stop."""

from __future__ import annotations

from twisted.internet.task import Clock

from studios_gateway.registry.redis import RedisStore


def waiting_store() -> tuple[RedisStore, Clock]:
    """A store started (as far as its commands know) whose first connection never comes."""
    clock = Clock()
    store = RedisStore("127.0.0.1:1", clock=clock, timeout=2.0)
    store._started = True  # (its links are not started: no connection is made)
    return store, clock


def test_waits_that_timed_out_are_not_kept_until_redis_comes() -> None:
    """Each command made while Redis stays away from a node's start waited 2 s, then
    failed, but its wait was kept until Redis came (an hour away at a few hundred
    requests and binds a second: millions of them)."""
    store, clock = waiting_store()
    failed: list[str] = []
    for _ in range(1000):
        store.get("abc123").addErrback(lambda f: failed.append(f.getErrorMessage()))
    assert failed == [] and len(store._commands._waiters) == 1000
    clock.advance(store.timeout)
    assert len(failed) == 1000 and "not connected yet" in failed[0]
    assert store._commands._waiters == {} and store._first_waits == {}
    assert clock.getDelayedCalls() == []


def test_a_stop_ends_the_commands_waiting_for_the_first_connection() -> None:
    store, clock = waiting_store()
    failed: list[str] = []
    store.get("abc123").addErrback(lambda f: failed.append(f.getErrorMessage()))
    connected = store._commands.when_ready()  # another waiter (service: log_persistence)
    store.stop()
    assert failed == ["Redis store not started (get)"]
    assert clock.getDelayedCalls() == [] and not connected.called
