"""A node whose clock is off, said by the node that hears it announce itself."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from studios_gateway.registry.node_clocks import CLOCK
from studios_gateway.registry.node_settings import INSTANCE, NodeSettingsWatch
from tests.unit.test_node_settings import A, FakeStore


def test_a_node_whose_clock_is_off_is_said_once_when_it_is_heard_announcing() -> None:
    warnings: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            warnings.append(formatEvent(event))

    clock = Clock()
    clock.advance(100_000)
    # node-b's record from long ago (a refresh, not heard now): its time says nothing
    records = {"node-b": json.dumps({**A, INSTANCE: "b1", CLOCK: "90000.000"})}
    store = FakeStore("node-a", records)
    globalLogPublisher.addObserver(observe)
    try:
        watch = NodeSettingsWatch(store, A, clock, ttl=60)
        watch.start()
        assert json.loads(records["node-a"])[CLOCK] == "100000.000"  # its own time, written
        assert warnings == []
        # node-b announces itself (restarted): its record is moments old, its clock 20 s
        # behind: within what cookies allow, not said
        records["node-b"] = json.dumps({**A, INSTANCE: "b2", CLOCK: "99980.000"})
        store.hear("node-b")
        assert warnings == []
        # node-c starts with its clock 95 s ahead of this one's
        records["node-c"] = json.dumps({**A, INSTANCE: "c1", CLOCK: "100095.000"})
        store.hear("node-c")
        assert len(warnings) == 1, warnings
        assert "the clock of node node-c is 95s ahead of this node's (node-a)" in warnings[0]
        assert "log in again" in warnings[0] and "synchronised" in warnings[0]
        store.hear("node-c")  # the same process again: not repeated
        assert len(warnings) == 1
        records["node-d"] = json.dumps({**A, INSTANCE: "d1", CLOCK: "99000.000"})
        store.hear("node-d")
        assert "the clock of node node-d is 1000s behind this node's" in warnings[-1]
        records["node-e"] = json.dumps({**A, INSTANCE: "e1"})  # an earlier release: no time
        store.hear("node-e")
        assert len(warnings) == 2
    finally:
        globalLogPublisher.removeObserver(observe)
