"""The connect client's connections to the tool: patience for a restart, not for an outage."""

from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from studios_gateway.config import ConfigError
from studios_gateway.studio import client as tunnel
from studios_gateway.studio.client import ConnectClient
from studios_gateway.studio.settings import (
    TOOL_RESTART_WAIT,
    ClientSettings,
    Gateway,
    load_client_settings,
)


class Endpoint:
    """Refuses while `up` is False; counts attempts."""

    def __init__(self) -> None:
        self.up = False
        self.attempts = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.attempts += 1
        if self.up:
            return defer.succeed(factory.buildProtocol(None))
        return defer.fail(error.ConnectionRefusedError("refused"))


def client(**changes: Any) -> tuple[ConnectClient, Clock, Endpoint]:
    """A client whose tool is an Endpoint; `changes` to its ClientSettings."""
    clock = Clock()
    settings = ClientSettings(gateways=(Gateway("127.0.0.1", 1, None),), session_id="abcd1234",
                              token="t" * 43, tool_port=9, **changes)
    c = ConnectClient(settings, clock)
    endpoint = Endpoint()
    c.tool_endpoint = lambda: endpoint  # type: ignore[method-assign]
    return c, clock, endpoint


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_a_restarting_tool_is_waited_for() -> None:
    c, clock, endpoint = client()
    got = outcome(c.connect_tool(Protocol))
    clock.advance(tunnel.TOOL_POLL)
    clock.advance(tunnel.TOOL_POLL)
    assert got == [] and endpoint.attempts == 3
    endpoint.up = True
    clock.advance(tunnel.TOOL_POLL)
    assert len(got) == 1 and isinstance(got[0], Protocol)


def test_a_tool_down_longer_than_the_window_fails_at_once_until_it_is_back() -> None:
    c, clock, endpoint = client()
    first = outcome(c.connect_tool(Protocol))
    clock.pump([tunnel.TOOL_POLL] * int(TOOL_RESTART_WAIT / tunnel.TOOL_POLL + 2))
    assert len(first) == 1 and first[0].check(error.ConnectError)  # waited the window
    attempts = endpoint.attempts
    second = outcome(c.connect_tool(Protocol))
    assert len(second) == 1 and second[0].check(error.ConnectError)  # no second wait
    assert endpoint.attempts == attempts + 1  # but it did try
    endpoint.up = True
    third = outcome(c.connect_tool(Protocol))
    assert len(third) == 1 and isinstance(third[0], Protocol)
    endpoint.up = False  # down again: patient again, as for a restart
    fourth = outcome(c.connect_tool(Protocol))
    assert fourth == []
    clock.pump([tunnel.TOOL_POLL] * int(TOOL_RESTART_WAIT / tunnel.TOOL_POLL + 2))
    assert len(fourth) == 1 and fourth[0].check(error.ConnectError)
    for f in (first, second, fourth):
        f[0].trap(error.ConnectError)


def test_the_restart_window_is_the_studios_to_set() -> None:
    """CONNECT_TOOL_RESTART_WAIT: a tool that takes longer to restart than 10 s (or one
    nothing restarts, whose visitors should not wait at all) had every request wait 10 s
    before its 504 page. Here 2 s: the 504 then, and a tool still down answered at once;
    0: at once from the first request."""
    c, clock, endpoint = client(tool_restart_wait=2.0)
    first = outcome(c.connect_tool(Protocol))
    clock.pump([tunnel.TOOL_POLL] * 3)
    assert first == []  # 1.5 s: still waiting
    clock.advance(tunnel.TOOL_POLL)
    assert len(first) == 1 and first[0].check(error.ConnectError)  # 2 s
    second = outcome(c.connect_tool(Protocol))
    assert len(second) == 1 and second[0].check(error.ConnectError)
    c, clock, endpoint = client(tool_restart_wait=0.0)
    at_once = outcome(c.connect_tool(Protocol))
    assert len(at_once) == 1 and at_once[0].check(error.ConnectError)
    assert endpoint.attempts == 1
    for f in (first, second, at_once):
        f[0].trap(error.ConnectError)


def test_the_restart_window_is_a_duration() -> None:
    env = {"CONNECT_GATEWAY_URL": "127.0.0.1:7070", "CONNECT_SESSION_ID": "abcd1234",
           "CONNECT_SESSION_TOKEN": "t" * 43, "CONNECT_TOOL_PORT": "9"}
    assert load_client_settings(env).tool_restart_wait == TOOL_RESTART_WAIT == 10
    assert load_client_settings({**env, "CONNECT_TOOL_RESTART_WAIT": "1m"}
                                ).tool_restart_wait == 60
    assert load_client_settings({**env, "CONNECT_TOOL_RESTART_WAIT": "0"}
                                ).tool_restart_wait == 0
    with pytest.raises(ConfigError, match="CONNECT_TOOL_RESTART_WAIT='soon'"):
        load_client_settings({**env, "CONNECT_TOOL_RESTART_WAIT": "soon"})


def gated(bind_first: bool) -> tuple[ConnectClient, Clock, Endpoint, defer.Deferred[None],
                                      list[str]]:
    """A client whose tool is a preset's: ready when `gate` fires; records connect attempts."""
    clock = Clock()
    settings = ClientSettings(gateways=(Gateway("127.0.0.1", 1, None),), session_id="abcd1234",
                              token="t" * 43, tool_port=9)
    gate: defer.Deferred[None] = defer.Deferred()
    c = ConnectClient(settings, clock, tool_ready=gate, bind_first=bind_first)
    endpoint = Endpoint()
    c.tool_endpoint = lambda: endpoint  # type: ignore[method-assign]
    dialled: list[str] = []
    c._connect = lambda: dialled.append("gateway")  # type: ignore[method-assign]
    return c, clock, endpoint, gate, dialled


def test_a_bind_first_preset_dials_the_gateway_before_its_tool_exists() -> None:
    c, clock, endpoint, gate, dialled = gated(bind_first=True)
    c.startService()
    assert dialled == ["gateway"] and endpoint.attempts == 0  # no port polling either


def test_a_preset_tool_is_bound_once_its_probe_says_ready_not_when_its_port_opens() -> None:
    c, clock, endpoint, gate, dialled = gated(bind_first=False)
    endpoint.up = True
    c.startService()
    clock.advance(5)
    assert dialled == [] and endpoint.attempts == 0
    gate.callback(None)
    assert dialled == ["gateway"]


def test_streams_wait_for_the_tools_readiness_then_connect() -> None:
    c, clock, endpoint, gate, _ = gated(bind_first=True)
    endpoint.up = True
    got = outcome(c.connect_tool(Protocol))
    clock.advance(TOOL_RESTART_WAIT * 3)
    assert got == [] and endpoint.attempts == 0
    gate.callback(None)
    assert len(got) == 1 and isinstance(got[0], Protocol)
    late = outcome(c.connect_tool(Protocol))  # once ready, no wait at all
    assert isinstance(late[0], Protocol)


def test_a_tool_that_never_gets_ready_is_tried_after_the_start_wait() -> None:
    c, clock, endpoint, gate, _ = gated(bind_first=True)
    got = outcome(c.connect_tool(Protocol))
    clock.advance(tunnel.TOOL_START_WAIT)
    assert endpoint.attempts == 1 and got == []  # now patient as for a restart
    clock.pump([tunnel.TOOL_POLL] * int(TOOL_RESTART_WAIT / tunnel.TOOL_POLL + 2))
    assert len(got) == 1 and got[0].check(error.ConnectError)
    got[0].trap(error.ConnectError)


def assert_said_once_after_the_notice(clock: Clock, events: list[Any]) -> None:
    """Nothing warned before TOOL_SLOW_NOTICE, then one warning naming the port, however
    long the tool stays away."""
    from twisted.logger import LogLevel, formatEvent

    clock.pump([tunnel.TOOL_POLL] * int(tunnel.TOOL_SLOW_NOTICE / tunnel.TOOL_POLL - 1))
    assert not [e for e in events if e["log_level"] == LogLevel.warn]
    clock.pump([tunnel.TOOL_POLL] * int(3 * tunnel.TOOL_SLOW_NOTICE / tunnel.TOOL_POLL))
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warned == ["the tool is not accepting connections on 127.0.0.1:9 after 30s "
                      "(Connection was refused by other side: refused.); still waiting. "
                      "The tool must listen on CONNECT_TOOL_PORT (9), on 127.0.0.1 or all "
                      "interfaces"]


def test_a_tool_that_never_opens_its_port_is_reported_once_with_the_port_it_must_use() -> None:
    """The log said 'waiting for the tool to accept connections' once, then nothing, for
    ever: a tool on its own default port looked like a slow one."""
    from twisted.logger import capturedLogs

    c, clock, endpoint = client()
    with capturedLogs() as events:
        c.startService()
        assert_said_once_after_the_notice(clock, events)
    assert c.state == "waiting-for-tool"  # and still trying
    c.stopService()


def test_a_tool_listening_on_ipv6_loopback_only_is_reported_as_such() -> None:
    """A tool given --bind ::1 (or "localhost" taken as IPv6's) was reported as one not
    listening at all, with advice (127.0.0.1 or all interfaces) that did not say the port
    was open on ::1 (builder50)."""
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    c, clock, endpoint = client()
    on_ipv6 = Endpoint()
    on_ipv6.up = True
    c.tool_endpoint_on_ipv6_loopback = lambda: on_ipv6  # type: ignore[method-assign]
    with capturedLogs() as events:
        c.startService()
        clock.pump([tunnel.TOOL_POLL] * int(3 * tunnel.TOOL_SLOW_NOTICE / tunnel.TOOL_POLL))
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warned == ["the tool is not accepting connections on 127.0.0.1:9 after 30s "
                      "(Connection was refused by other side: refused.), but [::1]:9 accepts "
                      "them: the tool listens on IPv6's loopback only; still waiting. Make it "
                      "listen on 127.0.0.1 or all interfaces (0.0.0.0)"]
    assert on_ipv6.attempts == 1 and c.state == "waiting-for-tool"
    c.stopService()


def test_a_command_started_at_the_bind_on_the_wrong_port_is_reported_once_with_its_port(
        ) -> None:
    """A command started at the bind (its port is not waited for before the dial) that
    listened on its own default port: browsers got the 504 page for ever, and the log said
    only 'tool on port N is not answering' for each of their requests."""
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    c, clock, endpoint = client()
    c._connect = lambda: None  # type: ignore[method-assign]
    c.bind_first = True
    with capturedLogs() as events:
        c.startService()
        c.watch_tool()
        assert_said_once_after_the_notice(clock, events)
        endpoint.up = True  # a slow tool, at last
        clock.pump([tunnel.TOOL_POLL] * 4)
        attempts = endpoint.attempts
        clock.pump([tunnel.TOOL_POLL] * 4)
    assert endpoint.attempts == attempts  # watched until it accepted, no longer
    said = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
    assert "tool is accepting connections on port 9 (120s after it started)" in said, said
    c.stopService()


def test_streams_the_tool_does_not_take_are_said_once_a_minute_with_their_count() -> None:
    """Every stream to a tool that was away was a warning: a page's every request, and the
    504 page reloading itself, for as long as the tool was away."""
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    c, clock, endpoint = client()
    with capturedLogs() as events:
        for _ in range(30):  # 30 requests in 29s
            c.tool_not_answering("refused")
            clock.advance(1)
        clock.advance(tunnel.REPEAT_EVERY)
        c.tool_not_answering("refused")
        endpoint.up = True  # back: the next failure is news again
        outcome(c.connect_tool(Protocol))
        c.tool_not_answering("refused")
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    line = "tool on port 9 is not answering (refused); resetting the stream"
    # 29 quiet ones since the line before, 90 s ago (not "in the last 60s": they came in
    # the first 29 s of those 90)
    assert warned == [line, f"{line} (and 29 more like it in the last 90s)", line]
    assert len([e for e in events if e["log_level"] == LogLevel.debug]) >= 29


def test_a_stop_ends_the_watch_on_the_tools_port_before_and_after_the_dial() -> None:
    """The look at the tool's port, before the dial and after it, is cancelled at the stop:
    nothing of the client is left on the clock."""
    for after_the_dial in (False, True):
        c, clock, endpoint = client()
        c._connect = lambda: None  # type: ignore[method-assign]
        c.bind_first = after_the_dial
        c.startService()
        if after_the_dial:
            c.watch_tool()
        clock.pump([tunnel.TOOL_POLL] * 3)
        assert clock.getDelayedCalls() and endpoint.attempts == 4
        c.stopService()
        assert not clock.getDelayedCalls()
