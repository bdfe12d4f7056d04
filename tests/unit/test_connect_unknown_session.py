"""A connect client that hears unknown_session keeps trying for CONNECT_UNKNOWN_SESSION_WAIT."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from studios_gateway.config import ConfigError
from studios_gateway.studio.client import Backoff, ConnectClient, TunnelClientProtocol
from studios_gateway.studio.settings import (
    UNKNOWN_SESSION_WAIT,
    Gateway,
    load_client_settings,
)
from studios_gateway.wire.bind import BindReply
from studios_gateway.wire.closing import CLOSE_GRACE
from tests.support.stuck_socket import StuckSocket

ENV = {"CONNECT_STRING": "studios-connect://s1:" + "t" * 32 + "@127.0.0.1:7070/",
       "CONNECT_TOOL_PORT": "8888"}


class Run:
    def __init__(self, wait: str | None):
        env = dict(ENV) if wait is None else {**ENV, "CONNECT_UNKNOWN_SESSION_WAIT": wait}
        self.clock = Clock()
        self.fatal: list[str] = []
        self.client = ConnectClient(load_client_settings(env), self.clock,
                                    on_fatal=self.fatal.append, backoff=Backoff(rng=lambda: 1.0))
        self.client.running = True  # not started: no tool polling, no real dialling
        self.dials = 0
        self.client._connect = self._dial  # type: ignore[method-assign]

    def _dial(self) -> None:
        self.dials += 1

    def answer(self, reply: BindReply) -> None:
        """One bind attempt answered with `reply` (the connection then closes)."""
        protocol = TunnelClientProtocol(self.client, Gateway("127.0.0.1", 7070))
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(reply.encode())
        if not reply.ok:
            protocol.connectionLost(None)

    def unknown(self) -> None:
        self.answer(BindReply(ok=False, code="unknown_session", reason="no session s1"))


def test_unknown_session_is_retried_with_back_off_until_the_wait_ends() -> None:
    run = Run("60s")
    run.unknown()
    assert run.fatal == [] and run.client.state == "backing-off"
    delays = []
    while run.clock.seconds() < 60:
        before = run.clock.seconds()
        pending = run.client._pending
        run.clock.advance(pending.getTime() - before)
        delays.append(run.clock.seconds() - before)
        run.unknown()
    # One quick retry, one full-jitter wait (the draw is 1.0 here), then the steady period.
    assert run.dials == len(delays) and delays[:4] == pytest.approx([0.5, 8.0, 7.2, 7.2])
    assert max(delays) == 8.0  # the back-off's cap: a restarting gateway is not hammered
    assert len(run.fatal) == 1 and run.client.state == "refused"
    assert "unknown_session: no session s1" in run.fatal[0]
    assert "for 60s, CONNECT_UNKNOWN_SESSION_WAIT); giving up" in run.fatal[0]


def test_a_bind_in_between_starts_the_wait_again() -> None:
    run = Run("10s")
    run.unknown()
    run.clock.advance(9)
    run.answer(BindReply(ok=True, tunnel_id="t"))
    assert run.client.state == "bound"
    run.clock.advance(100)
    run.unknown()  # the gateway restarted again: a new wait of 10 s
    assert run.fatal == []
    run.clock.advance(10)
    run.unknown()
    assert len(run.fatal) == 1


def test_zero_gives_up_at_once_and_other_final_refusals_stay_final() -> None:
    run = Run("0")
    run.unknown()
    assert len(run.fatal) == 1 and "giving up" not in run.fatal[0]
    run = Run(None)
    assert run.client.settings.unknown_session_wait == UNKNOWN_SESSION_WAIT == 300.0
    run.answer(BindReply(ok=False, code="bad_token", reason="wrong token"))
    assert len(run.fatal) == 1 and "bad_token" in run.fatal[0]


def test_the_setting_is_a_duration() -> None:
    assert load_client_settings({**ENV, "CONNECT_UNKNOWN_SESSION_WAIT": "2m"}
                                ).unknown_session_wait == 120.0
    with pytest.raises(ConfigError, match="CONNECT_UNKNOWN_SESSION_WAIT='soon'"):
        load_client_settings({**ENV, "CONNECT_UNKNOWN_SESSION_WAIT": "soon"})


def test_stopping_while_dialling_says_nothing_and_dials_no_more() -> None:
    # HostnameEndpoint fails a cancelled attempt with ConnectingCancelledError, whose text
    # is the address: 'cannot reach gateway localhost:PORT: HostnameAddress(...)' at every
    # demo stop.
    from twisted.internet import defer, error
    from twisted.internet.address import HostnameAddress
    from twisted.logger import globalLogPublisher

    clock = Clock()
    client = ConnectClient(load_client_settings(ENV), clock, backoff=Backoff(rng=lambda: 1.0))
    client.running = True

    class Dialling:
        def connect(self, factory: object) -> defer.Deferred[object]:
            return defer.Deferred(lambda d: d.errback(error.ConnectingCancelledError(
                HostnameAddress(b"localhost", 7070))))

    client.gateway_endpoint = lambda gateway: Dialling()  # type: ignore[method-assign]
    said: list[str] = []

    def observe(event: dict) -> None:
        said.append(str(event.get("log_format", "")))

    globalLogPublisher.addObserver(observe)
    try:
        client._connect()
        client.stopService()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not [line for line in said if "cannot reach" in line]
    assert client.state == "stopped" and not clock.getDelayedCalls()


def test_a_refusal_from_a_gateway_that_reads_nothing_ends_within_the_grace() -> None:
    """The connection a refusal ended closed once the gateway took what was buffered for
    it: a gateway that reads nothing held it, and the next attempt, for good. It is reset
    CLOSE_GRACE after the refusal, and the client tries again."""
    run = Run("60s")
    sock = StuckSocket()
    sock.write(b"x" * 1000)  # (the bind, still unread)
    sock.connect(TunnelClientProtocol(run.client, Gateway("127.0.0.1", 7070)))
    sock.protocol.dataReceived(BindReply(ok=False, code="unknown_session",
                                         reason="no session s1").encode())
    assert sock.disconnecting and not sock.disconnected
    run.clock.advance(CLOSE_GRACE)
    assert sock.aborted and run.client.state == "backing-off"
