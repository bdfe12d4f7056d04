"""studios-connect's log while its gateway stays unreachable: the failure once, in plain
words, then a reminder with the count at most once a minute (REPEAT_EVERY), not three
lines per attempt; a changed failure at once.

Before, each attempt logged 'connecting to gateway ...', 'cannot reach gateway ...: User
timeout caused connection failure.' and 'reconnecting in 7.4s' at info: ~1,350 lines for
an hour away.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from studios_gateway.studio import client as tunnel
from studios_gateway.studio.client import Backoff, ConnectClient, TunnelClientProtocol
from studios_gateway.studio.settings import Gateway, load_client_settings
from studios_gateway.wire.bind import BindReply

ENV = {"CONNECT_STRING": "studios-connect://s1:" + "t" * 32 + "@10.0.0.9:7070/",
       "CONNECT_TOOL_PORT": "8888"}


@pytest.fixture
def info() -> Iterator[list[str]]:
    """The client's lines at info and above while the test runs."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level.name != "debug":
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


class Unreachable:
    """A gateway endpoint whose every dial fails as ``failure`` says (after ``after`` s)."""

    def __init__(self, clock: Clock, failure: Exception, after: float = 10.0):
        self.clock, self.failure, self.after, self.dials = clock, failure, after, 0

    def connect(self, factory: object) -> defer.Deferred[object]:
        self.dials += 1
        d: defer.Deferred[object] = defer.Deferred()
        self.clock.callLater(self.after, d.errback, self.failure)
        return d


def client_for(clock: Clock, endpoint: Unreachable) -> ConnectClient:
    client = ConnectClient(load_client_settings(ENV), clock, backoff=Backoff(rng=lambda: 1.0))
    client.running = True  # not started: no tool polling
    client.gateway_endpoint = lambda gateway: endpoint  # type: ignore[method-assign]
    return client


def test_an_hour_of_silent_drops_is_a_line_a_minute(info: list[str]) -> None:
    clock = Clock()
    endpoint = Unreachable(clock, error.TimeoutError())  # SYNs dropped: the 10 s timeout
    client = client_for(clock, endpoint)
    client._connect()
    for _ in range(3600):
        clock.advance(1)
    assert endpoint.dials > 190  # it kept trying, every ~18 s (10 s dial + 8 s wait)
    assert info[:3] == ["connecting to gateway 10.0.0.9:7070",
                        "cannot reach gateway 10.0.0.9:7070: no answer within 10s",
                        "reconnecting in 0.5s"]
    # one per minute at most (the first attempt 60 s after the last), each with its
    # "reconnecting in" line; the "connecting" lines of retries go to debug
    reminders = [line for line in info[3:] if "cannot reach" in line]
    assert 45 <= len(reminders) <= 60, reminders
    assert all(line.startswith("reconnecting in ") for line in info[3:]
               if line not in reminders)
    assert len(info) == 3 + 2 * len(reminders), info
    for line in reminders:
        assert re.fullmatch(r"cannot reach gateway 10\.0\.0\.9:7070: no answer within 10s "
                            r"\(\d+ attempts in \d+s; still trying\)", line), line


def test_a_new_reason_is_said_at_once_and_a_bind_starts_over(info: list[str]) -> None:
    clock = Clock()
    endpoint = Unreachable(clock, error.TimeoutError(), after=0)
    client = client_for(clock, endpoint)
    client._connect()
    clock.advance(0.5)
    clock.advance(8)
    clock.advance(8)
    del info[:]
    endpoint.failure = error.ConnectionRefusedError()  # the host is back, the gateway not
    clock.advance(8)
    assert info[0] == ("cannot reach gateway 10.0.0.9:7070: Connection was refused by "
                       "other side. (4 attempts in 24s; still trying)")
    assert len(info) == 2 and info[1].startswith("reconnecting in "), info
    protocol = TunnelClientProtocol(client, Gateway("10.0.0.9", 7070))
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(BindReply(ok=True, tunnel_id="t").encode())  # bound again
    del info[:]
    client._connect()
    clock.advance(0)
    assert info[:2] == ["connecting to gateway 10.0.0.9:7070",
                        "cannot reach gateway 10.0.0.9:7070: Connection was refused by "
                        "other side."]


def test_a_connection_that_ends_before_the_bind_is_answered_says_so(info: list[str]) -> None:
    """Connected, then nothing: the kernel ended it (a silent gateway host) or the
    gateway reset it. Before, the client only said 'reconnecting in 0.5s'."""
    clock = Clock()
    client = client_for(clock, Unreachable(clock, error.TimeoutError()))
    protocol = TunnelClientProtocol(client, Gateway("10.0.0.9", 7070))
    protocol.makeConnection(StringTransport())
    client._protocol = protocol
    client.state = "connecting"
    protocol.connectionLost(Failure(error.ConnectionLost("Connection timed out")))
    assert info == ["cannot reach gateway 10.0.0.9:7070: the connection ended before the "
                    "bind was answered (Connection timed out)", "reconnecting in 0.5s"]


# The same, told with the contract review's fixtures: a refusing gateway at 127.0.0.1.

CON_ENV = {"CONNECT_STRING": "studios-connect://s1:" + "t" * 32 + "@127.0.0.1:7070/",
           "CONNECT_TOOL_PORT": "8888"}


class Refusing:
    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(error.ConnectionRefusedError("refused"))


def said_at_info(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]


def test_an_unreachable_gateway_is_said_once_then_every_few_minutes() -> None:
    clock = Clock()
    client = ConnectClient(load_client_settings(CON_ENV), clock, backoff=Backoff(rng=lambda: 1.0))
    client.running = True  # not started: no tool polling
    client.gateway_endpoint = lambda gateway: Refusing()  # type: ignore[method-assign]
    with capturedLogs() as events:
        client._connect()
        while clock.seconds() < tunnel.REPEAT_EVERY + 10:
            clock.advance(client._pending.getTime() - clock.seconds())
    lines = said_at_info(events)
    attempts = sum("cannot reach gateway" in formatEvent(e) for e in events)
    assert attempts > 5  # retried all along, at debug
    assert lines[:3] == ["connecting to gateway 127.0.0.1:7070",
                         "cannot reach gateway 127.0.0.1:7070: Connection was refused by "
                         "other side: refused.",
                         "reconnecting in 0.5s"]
    again = [line for line in lines[3:] if "cannot reach" in line]
    assert len(again) == 1 and again[0].endswith("; still trying)")
    # connecting, failure, reconnecting; then the failure and its reconnecting once more
    assert len(lines) == 5, lines


def test_a_new_failure_is_said_at_once() -> None:
    clock = Clock()
    client = ConnectClient(load_client_settings(CON_ENV), clock, backoff=Backoff(rng=lambda: 1.0))
    client.running = True
    why = ["refused"]

    class Failing:
        def connect(self, factory: Any) -> defer.Deferred[Any]:
            if why[0] == "refused":
                return defer.fail(error.ConnectionRefusedError("refused"))
            return defer.fail(error.TimeoutError("timed out"))

    client.gateway_endpoint = lambda gateway: Failing()  # type: ignore[method-assign]
    with capturedLogs() as events:
        client._connect()
        for _ in range(3):
            clock.advance(client._pending.getTime() - clock.seconds())
        why[0] = "timeout"
        clock.advance(client._pending.getTime() - clock.seconds())
    failures = [line for line in said_at_info(events) if "cannot reach" in line]
    assert len(failures) == 2 and "refused" in failures[0] and "no answer within" in failures[1]


def test_a_tool_started_at_the_bind_is_not_said_to_be_served_yet() -> None:
    """The bind line said 'serving the tool' while a bind-first tool had not started."""
    from twisted.internet.testing import StringTransport

    from studios_gateway.studio.client import TunnelClientProtocol
    from studios_gateway.studio.settings import Gateway
    from studios_gateway.wire.bind import BindReply

    for bind_first, words in ((True, "starting the tool, on port 8888"),
                              (False, "serving the tool on port 8888")):
        client = ConnectClient(load_client_settings(CON_ENV), Clock(), bind_first=bind_first)
        client.running = True
        protocol = TunnelClientProtocol(client, Gateway("127.0.0.1", 7070))
        with capturedLogs() as events:
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(BindReply(ok=True).encode())
        bound = [line for line in said_at_info(events) if " bound to gateway " in line]
        assert len(bound) == 1 and bound[0].endswith(words), bound
