"""The settings every node must share: what is compared, and one warning per pair."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.node_settings import (
    NodeSettingsWatch,
    compare_nodes,
    disagreement,
    parse_record,
    shared_settings,
)

A = {"CONNECT_PROXY_URL": "https://connect.example.com", "routing": "subdomain",
     "CONNECT_STUDIOS_DOMAIN": "connect.example.com", "login": "login links"}


def config(**over: Any) -> Any:
    values: dict[str, Any] = dict(
        effective_proxy_url="https://connect.example.com/", path_routing=False,
        effective_studios_domain="connect.example.com", platform_url=None,
        oidc_issuer_url=None)
    values.update(over)
    return SimpleNamespace(**values)


def test_shared_settings_name_the_public_address_routing_domain_and_login() -> None:
    assert shared_settings(config()) == A
    other = shared_settings(config(path_routing=True, platform_url="https://platform.example"))
    assert other["routing"] == "path" and other["login"] == "openid https://platform.example"


def test_compare_names_each_differing_setting_with_both_values() -> None:
    assert compare_nodes(A, dict(A)) == []
    b = {**A, "CONNECT_PROXY_URL": "https://conect.example.com"}
    assert compare_nodes(A, b) == [("CONNECT_PROXY_URL", "https://connect.example.com",
                                    "https://conect.example.com")]
    # A setting the other node's version does not publish is not a disagreement.
    assert compare_nodes(A, {"CONNECT_PROXY_URL": A["CONNECT_PROXY_URL"]}) == []
    text = disagreement("node-a", "node-b", compare_nodes(A, b))
    assert "node node-a and node node-b" in text
    assert "'https://connect.example.com' here but 'https://conect.example.com' on node-b" in text
    assert "rolling change" in text
    assert parse_record("not json") is None and parse_record("[1]") is None


class FakeStore:
    """The node-record calls of a RedisStore, in memory."""

    def __init__(self, node_id: str, records: dict[str, str]):
        self.node_id = node_id
        self.records = records
        self.callbacks: list[Callable[[str | None], None]] = []
        self.told: list[str] = []

    def when_connected(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def subscribe_nodes(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def announce_node(self, value: str, ttl: float, *, tell: bool) -> defer.Deferred[Any]:
        replaced = self.records.get(self.node_id)
        self.records[self.node_id] = value
        if tell:
            self.told.append(self.node_id)
        return defer.succeed(replaced)

    def node_records(self) -> defer.Deferred[dict[str, str]]:
        return defer.succeed(dict(self.records))

    def withdraw_node(self) -> defer.Deferred[None]:
        self.records.pop(self.node_id, None)
        return defer.succeed(None)

    def hear(self, node_id: str | None) -> None:
        for callback in list(self.callbacks):
            callback(node_id)


def test_one_warning_per_disagreeing_node_and_again_only_when_its_values_change() -> None:
    warnings: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            warnings.append(formatEvent(event))

    records = {"node-b": json.dumps({**A, "CONNECT_PROXY_URL": "https://old.example.com"}),
               "node-c": json.dumps(A)}
    store = FakeStore("node-a", records)
    clock = Clock()
    globalLogPublisher.addObserver(observe)
    try:
        watch = NodeSettingsWatch(store, A, clock, ttl=60)
        watch.start()
        assert store.told == ["node-a"] and "node-a" in records
        assert len(warnings) == 1 and "'https://old.example.com' on node-b" in warnings[0]
        assert watch.disagreeing == 1
        store.hear("node-b")  # it announced again, same values: nothing new
        clock.advance(20)  # the refresh writes the record again without telling
        assert len(warnings) == 1 and store.told == ["node-a"]
        store.hear(None)  # events were lost: compare again, nothing new
        clock.advance(20)  # (and the next refresh tells every node again)
        assert len(warnings) == 1 and store.told == ["node-a", "node-a"]
        records["node-d"] = json.dumps({**A, "routing": "path"})
        store.hear("node-d")
        assert len(warnings) == 2 and "'subdomain' here but 'path' on node-d" in warnings[1]
        records["node-b"] = json.dumps(A)  # node-b fixed: it agrees now
        store.hear("node-b")
        assert watch.disagreeing == 1 and len(warnings) == 2
        watch.stop()
        assert store.callbacks == []
    finally:
        globalLogPublisher.removeObserver(observe)


class Logged:
    """The formatted log lines of one level while in a `with` block."""

    def __init__(self, level: str):
        self.level = level
        self.lines: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_level") is not None and event["log_level"].name == self.level:
            self.lines.append(formatEvent(event))

    def __enter__(self) -> Logged:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


class FlakyStore(FakeStore):
    """A FakeStore whose Redis can be away (every call fails as RedisStore's do)."""

    down = False
    writes = 0

    def _away(self) -> defer.Deferred[Any] | None:
        if self.down:
            return defer.fail(StoreUnavailable("Redis at 127.0.0.1:1 is unavailable"))
        return None

    def announce_node(self, value: str, ttl: float, *, tell: bool) -> defer.Deferred[Any]:
        self.writes += not self.down
        return self._away() or super().announce_node(value, ttl, tell=tell)

    def node_records(self) -> defer.Deferred[dict[str, str]]:
        return self._away() or super().node_records()

    def withdraw_node(self) -> defer.Deferred[None]:
        return self._away() or super().withdraw_node()


def test_an_outage_is_logged_once_and_the_node_tells_everyone_when_redis_is_back() -> None:
    """Every refresh (20 s) of every node failed with its own log line while Redis was
    away; after it, nothing told the other nodes, though Redis may have lost every record."""
    records = {"node-b": json.dumps({**A, "routing": "path"})}
    store = FlakyStore("node-a", records)
    clock = Clock()
    with Logged("info") as info, Logged("warn") as warn:
        watch = NodeSettingsWatch(store, A, clock, ttl=60)
        watch.start()
        assert len(warn.lines) == 1 and store.told == ["node-a"]
        store.down = True
        for _ in range(30):  # ten minutes away
            clock.advance(20)
        assert len(info.lines) == 1 and "cannot publish" in info.lines[0], info.lines
        records.clear()  # Redis came back empty (a restart without persistence)
        records["node-b"] = json.dumps({**A, "routing": "path"})
        store.down = False
        clock.advance(20)
        assert store.told == ["node-a", "node-a"]  # told again: every node compares
        assert len(info.lines) == 2 and "published again" in info.lines[1]
        assert watch.disagreeing == 1
        for _ in range(5):
            clock.advance(20)
        assert len(info.lines) == 2 and store.told == ["node-a", "node-a"]
        watch.stop()


def started(store: FakeStore) -> tuple[NodeSettingsWatch, Clock]:
    clock = Clock()
    watch = NodeSettingsWatch(store, A, clock, ttl=60)
    watch.start()
    return watch, clock


def test_lost_events_make_the_next_refresh_tell_every_node() -> None:
    store = FakeStore("node-a", {})
    watch, clock = started(store)
    clock.advance(20)
    assert store.told == ["node-a"]
    store.hear(None)  # the subscriber reconnected: Redis may have restarted
    clock.advance(20)
    assert store.told == ["node-a", "node-a"]
    clock.advance(20)
    assert store.told == ["node-a", "node-a"]
    watch.stop()


def test_lost_events_while_redis_cannot_be_asked_are_no_failure_to_log() -> None:
    """Lost events are said when the subscriber connection goes, and when it is back,
    often before the command connection (at a node's start): the comparison each started
    failed at once, and every such start logged "cannot compare the cluster's settings
    now: Redis at ... is unavailable (not connected yet)", though Redis was there (and
    every outage added one more to Redis's own lines). The store tells again once its
    commands work; a node's own event that cannot be compared is still said."""
    class Starting(FlakyStore):
        ready: defer.Deferred[None] = defer.Deferred()

        def when_connected(self) -> defer.Deferred[None]:
            return self.ready

    records = {"node-b": json.dumps({**A, "routing": "path"})}
    store = Starting("node-a", records)
    store.down = True  # the command connection is not up yet
    with Logged("info") as info, Logged("warn") as warn:
        watch = NodeSettingsWatch(store, A, Clock(), ttl=60)
        watch.start()
        store.hear(None)  # the subscriber is up: its events so far were lost
        assert info.lines == [] and warn.lines == []
        store.down = False
        store.ready.callback(None)  # both connections up
        assert len(warn.lines) == 1 and "'path' on node-b" in warn.lines[0]
        assert info.lines == [] and store.told == ["node-a"]
        store.down = True
        store.hear(None)  # the subscriber lost: Redis went away
        assert info.lines == []
        store.hear("node-c")  # (a node's own event while the commands fail)
        assert len(info.lines) == 1 and "cannot compare" in info.lines[0]
        watch.stop()


def test_nothing_is_written_after_stop() -> None:
    store = FlakyStore("node-a", {})
    watch, clock = started(store)
    watch.stop()
    writes = store.writes
    store.hear(None)
    clock.advance(600)
    assert store.writes == writes and not clock.getDelayedCalls()


def test_a_hostile_record_is_ignored_or_shown_escaped_and_bounded() -> None:
    """Anyone who can write the Redis: a record nested too deep raised RecursionError out
    of the comparison, a huge one was parsed and its values logged whole, and a key's name
    (shown as the node id) could put a line break into the log."""
    assert parse_record("[" * 100_000) is None
    assert parse_record(json.dumps({**A, "x": "y" * 10_000})) is None
    long = {**A, "CONNECT_PROXY_URL": "https://x\n2026 [fake] line " + "z" * 1000}
    records = {"node-b\nfake line": json.dumps({**A, "routing": "path"}),
               "node-c": "[" * 3000, "node-d": json.dumps(long)}
    store = FakeStore("node-a", records)
    with Logged("warn") as warn, Logged("info") as info:
        watch = NodeSettingsWatch(store, A, Clock(), ttl=60)
        watch.start()
        watch.stop()
    assert info.lines == []
    assert len(warn.lines) == 1 and "node-d" in warn.lines[0]
    assert "\n" not in warn.lines[0] and len(warn.lines[0]) < 800
    assert "'https://x\\n2026 [fake] line zzz" in warn.lines[0]
    assert watch.disagreeing == 1


def test_a_node_that_stops_deletes_its_record_and_the_others_stop_counting_it() -> None:
    """A stopped node's record stayed until its TTL (60 s), so every other node kept it in
    studios_gateway_cluster_settings_differ for a minute after it drained. Now stop()
    deletes it (the store publishes that), and a node that hears it counts it no more and
    says so once. Without Redis the record is left to expire, said once."""
    records = {"node-b": json.dumps({**A, "routing": "path"})}
    store = FakeStore("node-a", records)
    with Logged("info") as info:
        watch, _ = started(store)
        assert watch.disagreeing == 1 and "node-a" in records
        records.pop("node-b")  # node-b drained: its record deleted, node:node-b published
        store.hear("node-b")
        assert watch.disagreeing == 0
        assert len(info.lines) == 1 and "node node-b no longer differs" in info.lines[0]
        store.hear("node-b")
        assert len(info.lines) == 1
        done: list[Any] = []
        watch.stop().addCallback(done.append)
        assert done == [None] and "node-a" not in records
    flaky = FlakyStore("node-a", {})
    with Logged("info") as info:
        watch, _ = started(flaky)
        flaky.down = True
        watch.stop()
        watch.stop()
    assert len(info.lines) == 1 and "expires within 60s" in info.lines[0], info.lines
    assert "node-a" in flaky.records


def test_a_record_deleted_by_another_process_of_this_node_is_written_again_at_once() -> None:
    """A process of this node id that drains (an earlier one still draining, a twin)
    deletes the record under the id, this live process's: the others compared without
    it, and lacked its peer address, until this one's next refresh (up to 20 s). It hears
    the deletion (node:<its id>) and writes its record again at once, without telling."""
    records: dict[str, str] = {}
    store = FakeStore("node-a", records)
    watch, _ = started(store)
    told = list(store.told)
    records.pop("node-a")  # (the other process's withdraw_node)
    store.hear("node-a")
    assert json.loads(records["node-a"])["instance"] == watch.instance
    assert store.told == told  # (no tell: the others heard the deletion already)
    watch.stop()
    store.hear("node-a")  # its own withdrawal, heard: nothing written after stop
    assert "node-a" not in records


def test_two_live_processes_with_one_node_id_are_warned_about_a_restart_is_not() -> None:
    """Two gateways with one CONNECT_NODE_ID (containers sharing a host name, a copied
    gateway.env) took each other for themselves: requests through one for studios bound
    to the other answered "Studio not connected", and nothing in either log said why."""
    records: dict[str, str] = {}
    clock = Clock()
    with Logged("warn") as warn:
        first = NodeSettingsWatch(FakeStore("node-a", records), A, clock, ttl=60)
        first.start()
        clock.advance(20)
        # A restart: the dead process's record is replaced, which is no twin.
        again = NodeSettingsWatch(FakeStore("node-a", records), A, clock, ttl=60)
        first._refresh.stop()  # (the first process is gone: it writes nothing more)
        again.start()
        for _ in range(5):
            clock.advance(20)
        assert warn.lines == []
        # A second live process with the same id: each sees the other's record between
        # two of its own, and says so once.
        twin = NodeSettingsWatch(FakeStore("node-a", records), A, clock, ttl=60)
        twin.start()
        for _ in range(5):
            clock.advance(20)
    assert len(warn.lines) == 2, warn.lines
    assert all("another gateway process announces itself as node node-a too" in line
               and "CONNECT_NODE_ID" in line for line in warn.lines)
    assert json.loads(records["node-a"])["instance"] in (again.instance, twin.instance)
    assert compare_nodes(A, json.loads(records["node-a"])) == []  # not a setting
