"""The settings every node must share: what is compared, and one warning per pair."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

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

    def announce_node(self, value: str, ttl: float, *, tell: bool) -> defer.Deferred[None]:
        self.records[self.node_id] = value
        if tell:
            self.told.append(self.node_id)
        return defer.succeed(None)

    def node_records(self) -> defer.Deferred[dict[str, str]]:
        return defer.succeed(dict(self.records))

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
        store.hear(None)  # events were lost: compare again, nothing new
        clock.advance(20)  # the refresh writes the record again without telling
        assert len(warnings) == 1 and store.told == ["node-a"]
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
