"""The connect client's connections to the tool: patience for a restart, not for an outage."""

from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from studios_gateway.studio import client as tunnel
from studios_gateway.studio.client import ConnectClient
from studios_gateway.studio.settings import ClientSettings, Gateway


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


def client() -> tuple[ConnectClient, Clock, Endpoint]:
    clock = Clock()
    settings = ClientSettings(gateways=(Gateway("127.0.0.1", 1, None),), session_id="abcd1234",
                              token="t" * 43, tool_port=9)
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
    clock.pump([tunnel.TOOL_POLL] * int(tunnel.TOOL_CONNECT_RETRY / tunnel.TOOL_POLL + 2))
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
    clock.pump([tunnel.TOOL_POLL] * int(tunnel.TOOL_CONNECT_RETRY / tunnel.TOOL_POLL + 2))
    assert len(fourth) == 1 and fourth[0].check(error.ConnectError)
    for f in (first, second, fourth):
        f[0].trap(error.ConnectError)
