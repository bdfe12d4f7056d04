"""A tool that accepts a connection and never answers: the probes give up and let go."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from studios_gateway.studio import points_back
from studios_gateway.studio.presets.probe import PROBE_TIMEOUT, http_status


class Silent(Protocol):
    """Takes the request and says nothing; tells when it has it and when it ends."""

    def __init__(self, made: Deferred[None], lost: Deferred[None]) -> None:
        self.made, self.lost = made, lost

    def dataReceived(self, data: bytes) -> None:
        if not self.made.called:  # (the probe is connected: it sent its request)
            self.made.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class HungToolTests(unittest.TestCase):
    timeout = 10

    @defer.inlineCallbacks
    def test_a_fetch_given_up_closes_its_connection(self) -> Any:
        """Readiness cancels a fetch after PROBE_TIMEOUT; the connection stayed open until
        the tool closed it (one more at every probe of a tool that hangs)."""
        made: Deferred[None] = Deferred()
        lost: Deferred[None] = Deferred()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: Silent(made, lost)),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        d = http_status(reactor)(f"http://127.0.0.1:{port.getHost().port}/")
        yield made
        d.cancel()
        yield lost  # the probe closed it (trial's timeout fails the test otherwise)
        yield self.assertFailure(d, CancelledError)


def test_the_bind_time_question_gives_up_on_a_tool_that_does_not_answer() -> None:
    clock = Clock()
    given_up: list[bool] = []
    fetched: Deferred[int] = Deferred(lambda _: given_up.append(True))
    said: list[str | None] = []
    points_back.check(lambda host, headers: lambda url: fetched, 8888, "abc123",
                      "http://abc123.localhost:8080/", clock).addCallback(said.append)
    clock.advance(PROBE_TIMEOUT - 0.1)
    assert not given_up and not said
    clock.advance(0.1)
    assert given_up == [True] and said == [None]  # not the gateway's port: goes on
    assert not clock.getDelayedCalls()


def test_the_bind_time_question_carries_the_mark_the_bind_gave() -> None:
    """The gateway takes only a marked request for one of its own that came back
    (http.loop): the question carries the mark of the bind's reply, and none from a
    gateway that gave none (which, an earlier one, asks for no mark)."""
    from twisted.internet import defer

    asked: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    def fetch_for(host: str, headers: tuple[tuple[str, str], ...]) -> object:
        asked.append((host, headers))
        return lambda url: defer.succeed(508)

    said: list[str | None] = []
    points_back.check(fetch_for, 8080, "abc123", "http://abc123.localhost:8080/",
                      mark="m4rk").addCallback(said.append)
    points_back.check(fetch_for, 8080, "abc123", "http://abc123.localhost:8080/"
                      ).addCallback(said.append)
    assert asked == [("abc123.localhost:8080", (("X-Connect-Session", "abc123"),
                                                ("X-Connect-Mark", "m4rk"))),
                     ("abc123.localhost:8080", (("X-Connect-Session", "abc123"),))]
    assert all(s and "gateway's own HTTP port" in s for s in said)
