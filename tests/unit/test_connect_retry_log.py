"""What a person reads in a studio's log while its gateway is away: the failure once, then
again every REPEAT_EVERY with the attempts so far, not three lines per attempt."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from studios_gateway.studio import client as tunnel
from studios_gateway.studio.client import Backoff, ConnectClient
from studios_gateway.studio.settings import load_client_settings

ENV = {"CONNECT_STRING": "studios-connect://s1:" + "t" * 32 + "@127.0.0.1:7070/",
       "CONNECT_TOOL_PORT": "8888"}


class Refusing:
    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.fail(error.ConnectionRefusedError("refused"))


def said(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]


def test_an_unreachable_gateway_is_said_once_then_every_few_minutes() -> None:
    clock = Clock()
    client = ConnectClient(load_client_settings(ENV), clock, backoff=Backoff(rng=lambda: 1.0))
    client.running = True  # not started: no tool polling
    client.gateway_endpoint = lambda gateway: Refusing()  # type: ignore[method-assign]
    with capturedLogs() as events:
        client._connect()
        while clock.seconds() < tunnel.REPEAT_EVERY + 10:
            clock.advance(client._pending.getTime() - clock.seconds())
    lines = said(events)
    attempts = sum("cannot reach gateway" in formatEvent(e) for e in events)
    assert attempts > 30  # retried all along, at debug
    assert lines[:3] == ["connecting to gateway 127.0.0.1:7070",
                         "cannot reach gateway 127.0.0.1:7070: Connection was refused by "
                         "other side: refused.",
                         "reconnecting in 0.5s"]
    again = [line for line in lines[3:] if "cannot reach" in line]
    assert len(again) == 1 and again[0].endswith("attempts so far)")
    # connecting, failure, reconnecting; then the failure and its reconnecting once more
    assert len(lines) == 5, lines


def test_a_new_failure_is_said_at_once() -> None:
    clock = Clock()
    client = ConnectClient(load_client_settings(ENV), clock, backoff=Backoff(rng=lambda: 1.0))
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
    failures = [line for line in said(events) if "cannot reach" in line]
    assert len(failures) == 2 and "refused" in failures[0] and "timed out" in failures[1]


def test_a_tool_started_at_the_bind_is_not_said_to_be_served_yet() -> None:
    """The bind line said 'serving the tool' while a bind-first tool had not started."""
    from twisted.internet.testing import StringTransport

    from studios_gateway.studio.client import TunnelClientProtocol
    from studios_gateway.studio.settings import Gateway
    from studios_gateway.wire.bind import BindReply

    for bind_first, words in ((True, "starting the tool, on port 8888"),
                              (False, "serving the tool on port 8888")):
        client = ConnectClient(load_client_settings(ENV), Clock(), bind_first=bind_first)
        client.running = True
        protocol = TunnelClientProtocol(client, Gateway("127.0.0.1", 7070))
        with capturedLogs() as events:
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(BindReply(ok=True).encode())
        bound = [line for line in said(events) if " bound to gateway " in line]
        assert len(bound) == 1 and bound[0].endswith(words), bound
