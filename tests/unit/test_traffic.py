"""The access log's lines and the traffic observer's counting (fake clock, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import Logger

from studios_gateway.traffic.access_log import (
    NAMESPACE,
    AccessLog,
    json_line,
    text_fields,
    text_line,
)
from studios_gateway.traffic.facts import HTTP, SSH, WEBSOCKET, Finished, path_only
from studios_gateway.traffic.metrics import TrafficMetrics, status_class, tool_label
from studios_gateway.traffic.observer import Traffic
from studios_gateway.traffic.usage import Usage

T0 = 1_796_000_000.25  # 2026-11-30T00:53:20.25Z


def facts(**kw: Any) -> Finished:
    base: dict[str, Any] = dict(kind=HTTP, started=T0, duration=0.0123, session_id="abcd",
                                tool="jupyterlab", subject="alice", client="10.1.2.3",
                                method="GET", path="/lab/tree", status=200, bytes_in=321,
                                bytes_out=4567)
    base.update(kw)
    return Finished(**base)


def test_text_line_has_every_field() -> None:
    line = text_line(facts(), "gw-1")
    assert line.startswith(
        '10.1.2.3 - alice [30/Nov/2026:00:53:20 +0000] "GET /lab/tree" 200 4567 ')
    for part in ("in=321", "out=4567", "duration=0.012", "kind=http", "session=abcd",
                 "tool=jupyterlab", "node=gw-1"):
        assert part in line.split(), (part, line)
    assert "reason" not in line


def test_text_line_escapes_what_would_break_the_line() -> None:
    line = text_line(facts(path='/a b"c\n\\', subject="", reason='no "tunnel"\n'), "gw")
    assert "\n" not in line
    assert '"GET /a\\x20b\\x22c\\x0a\\x5c" 200' in line
    assert ' - - [' in line  # no user yet
    assert line.endswith('reason="no \\x22tunnel\\x22\\x0a"')


def test_json_line() -> None:
    record = json.loads(json_line(facts(kind=SSH, method="SSH", path="", status=None,
                                        reason="quota"), "gw-2"))
    assert record == {"time": "2026-11-30T00:53:20.250Z", "node": "gw-2", "kind": "ssh",
                      "session": "abcd", "tool": "jupyterlab", "user": "alice",
                      "client": "10.1.2.3", "method": "SSH", "path": "", "status": None,
                      "bytes_in": 321, "bytes_out": 4567, "duration": 0.0123,
                      "reason": "quota"}


def test_path_only_drops_query_and_fragment() -> None:
    assert path_only("/lab?token=s3cret#x") == "/lab"
    assert path_only("/a#b?c") == "/a"


class Events(list):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)


def test_access_log_namespace_and_modes() -> None:
    events = Events()
    for mode in ("off", "text", "json"):
        log = AccessLog(mode, "gw")
        log._log.observer = events
        log(facts())
    assert [e["log_namespace"] for e in events] == [NAMESPACE, NAMESPACE]
    assert events[0]["access_line"].startswith("10.1.2.3 ")
    assert json.loads(events[1]["access_line"])["path"] == "/lab/tree"


def test_labels_stay_in_small_sets() -> None:
    assert [status_class(s) for s in (101, 204, 302, 429, 502, None, 99)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "none", "none"]
    assert tool_label("") == "none" and tool_label("made-up-tool") == "other"


def make_traffic(mode: str = "json") -> tuple[Traffic, CollectorRegistry, Events, Clock]:
    registry = CollectorRegistry()
    events = Events()
    clock = Clock()
    clock.advance(T0)
    traffic = Traffic(metrics=TrafficMetrics(registry),
                      access_log=AccessLog(mode, "gw", Logger(observer=events)), clock=clock)
    return traffic, registry, events, clock


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_http_requests_are_counted_per_class_tool_and_session() -> None:
    traffic, registry, events, _ = make_traffic()
    traffic.http_done(facts())
    traffic.http_done(facts(status=502, bytes_in=10, bytes_out=20))
    assert value(registry, "studios_gateway_http_requests_total", code="2xx",
                 tool="jupyterlab") == 1
    assert value(registry, "studios_gateway_http_requests_total", code="5xx",
                 tool="jupyterlab") == 1
    assert value(registry, "studios_gateway_transfer_bytes_total", kind="http",
                 direction="out") == 4587
    assert value(registry, "studios_gateway_http_request_duration_seconds_count",
                 tool="jupyterlab") == 2
    figures = traffic.usage.get("abcd")
    assert figures is not None and (figures.requests, figures.bytes_in) == (2, 331)
    assert len(events) == 2


def test_a_websocket_meter_is_carried_each_tick_and_logged_at_the_end() -> None:
    traffic, registry, events, clock = make_traffic()
    stopped: list[str] = []
    meter = traffic.open(WEBSOCKET, "abcd", "alice", stopped.append)
    assert value(registry, "studios_gateway_websockets_open") == 1
    assert value(registry, "studios_gateway_studios_active") == 1
    meter.inbound(100)
    meter.outbound(1000)
    traffic.tick()
    assert value(registry, "studios_gateway_transfer_bytes_total", kind="websocket",
                 direction="out") == 1000
    meter.outbound(5)
    traffic.close(meter, facts(kind=WEBSOCKET, status=101, bytes_in=0, bytes_out=0))
    assert value(registry, "studios_gateway_transfer_bytes_total", kind="websocket",
                 direction="out") == 1005
    assert value(registry, "studios_gateway_websockets_open") == 0
    assert value(registry, "studios_gateway_studios_active") == 0
    line = json.loads(events[-1]["access_line"])
    assert (line["kind"], line["bytes_in"], line["bytes_out"]) == ("websocket", 100, 1005)
    figures = traffic.usage.get("abcd")
    assert figures is not None and figures.as_dict()["open_connections"] == 0
    assert figures.bytes_out == 1005 and figures.websockets == 1
    traffic.session_ended("abcd")
    assert traffic.usage.get("abcd") is None


def test_ssh_sessions_channels_and_refusals() -> None:
    traffic, registry, events, _ = make_traffic()
    meter = traffic.open(SSH, "abcd", "alice", lambda why: None)
    traffic.ssh_channels(1)
    traffic.ssh_channels(1)
    traffic.ssh_channels(-1)
    assert value(registry, "studios_gateway_ssh_channels_open") == 1
    assert value(registry, "studios_gateway_ssh_channels_total") == 2
    assert value(registry, "studios_gateway_ssh_sessions_open") == 1
    traffic.close(meter, facts(kind=SSH, method="SSH", path="", status=None))
    traffic.ssh_refused(facts(kind=SSH, method="SSH", path="", status=None,
                              reason="there is no session x"))
    assert value(registry, "studios_gateway_ssh_sessions_total", outcome="ok") == 1
    assert value(registry, "studios_gateway_ssh_sessions_total", outcome="refused") == 1
    assert json.loads(events[-1]["access_line"])["reason"] == "there is no session x"


def test_the_positional_entry_writes_each_mode_s_line_and_counts_the_session() -> None:
    # Traffic.http (the HTTP proxy's per-request path) takes a Finished's fields in its
    # order; the lines are text_line's and json_line's (their fields: the tests above).
    for f in (facts(), facts(status=None, reason='no "tunnel"', subject=""),
              facts(status=502, tool="made-up", path="/a b", duration=7.5)):
        fields = (f.kind, f.started, f.duration, f.session_id, f.tool, f.subject, f.client,
                  f.method, f.path, f.status, f.bytes_in, f.bytes_out, f.reason)
        assert text_fields(*fields, "gw") == text_line(f, "gw")
        for mode, line in (("text", text_line), ("json", json_line)):
            traffic, _, events, _ = make_traffic(mode)
            traffic.http(*fields)
            traffic.http(*fields)
            assert [e["access_line"] for e in events] == [line(f, "gw")] * 2
            figures = traffic.usage.get("abcd")
            assert figures is not None and figures.as_dict() == {
                "requests": 2, "websockets": 0, "ssh_sessions": 0, "bytes_in": 642,
                "bytes_out": 9134, "open_websockets": 0, "open_ssh": 0,
                "last_active": f.started + f.duration, "open_connections": 0}
        traffic, _, events, _ = make_traffic("off")
        traffic.http(*fields)
        assert events == [] and traffic.usage.get("abcd") is not None


def test_http_counts_a_new_series_from_its_first_request() -> None:
    traffic, registry, _, _ = make_traffic()
    for status in (200, 200, 404, None):
        traffic.http(HTTP, T0, 0.003, "abcd", "jupyterlab", "alice", "10.1.2.3", "GET", "/",
                     status, 1, 2, "")
    lab = {"tool": "jupyterlab"}
    expected = [
        ("studios_gateway_http_requests_total", {"code": "2xx", **lab}, 2),
        ("studios_gateway_http_requests_total", {"code": "4xx", **lab}, 1),
        ("studios_gateway_http_requests_total", {"code": "none", **lab}, 1),
        ("studios_gateway_http_request_duration_seconds_bucket", {"le": "0.005", **lab}, 4),
        ("studios_gateway_http_request_duration_seconds_bucket", {"le": "0.0025", **lab}, 0),
        ("studios_gateway_transfer_bytes_total", {"kind": "http", "direction": "in"}, 4),
        ("studios_gateway_transfer_bytes_total", {"kind": "http", "direction": "out"}, 8)]
    assert [value(registry, name, **labels) for name, labels, _ in expected] == [
        n for *_, n in expected]
    assert value(registry, "studios_gateway_http_request_duration_seconds_sum",
                 **lab) == pytest.approx(0.012)


def test_usage_keeps_its_order_and_forgets_with_the_last_session_remembered() -> None:
    usage = Usage(limit=2)
    a = usage.of("a", 1.0)
    assert usage.of("a", 2.0) is a and a.last_active == 2.0
    usage.of("b", 3.0)
    assert usage.of("a", 4.0) is a  # a is the most recent again: b goes first
    usage.of("c", 5.0)
    assert (usage.get("a"), usage.get("b")) == (a, None)
    usage.forget("c")
    assert usage.get("c") is None
    c = usage.of("c", 6.0)  # forgotten: a new entry, not the one remembered as the last
    assert c.last_active == 6.0 and usage.get("c") is c and c.requests == 0
    a.open_websockets = c.open_websockets = 1  # nothing idle to let go: kept beyond limit
    d = usage.of("d", 7.0)
    assert usage.get("d") is None and usage.of("d", 8.0) is not d


def test_requests_naming_no_known_session_leave_no_figures() -> None:
    # A request refused before its session was found (no tool: a made-up <id>.<domain>,
    # a bad cookie's redirect) made an entry of its own, kept until the table held 100 000:
    # the soak's 404s to random studios grew it by ~20 a minute (soak53).
    traffic, _, events, _ = make_traffic()
    for n in range(50):
        traffic.http_done(facts(session_id=f"nosuch{n}", tool="", status=404))
    assert [traffic.usage.get(f"nosuch{n}") for n in range(50)] == [None] * 50
    assert len(events) == 50  # each still has its access line
    traffic.http_done(facts())  # found: its figures begin
    traffic.http_done(facts(tool="", status=403, bytes_in=5, bytes_out=7))  # then refused
    figures = traffic.usage.get("abcd")
    assert figures is not None and (figures.requests, figures.bytes_in) == (2, 326)
