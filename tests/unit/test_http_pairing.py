"""A keep-alive client and its pooled tool connection stay wired (each one the other's
producer) between requests; every way the pair ends unwires both sides."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from studios_gateway.wire.stream import StreamReset
from tests.unit.test_http_proxy import GET, OK, Harness, parse_responses


def count_registrations(t: StringTransport) -> list[Any]:
    calls: list[Any] = []
    register = t.registerProducer

    def counted(producer: Any, streaming: bool) -> None:
        calls.append(producer)
        register(producer, streaming)

    t.registerProducer = counted  # type: ignore[method-assign]
    return calls


def test_a_keep_alive_client_wires_its_pooled_connection_once() -> None:
    h = Harness()
    p, t = h.client()
    client_calls = count_registrations(t)
    p.dataReceived(GET)
    up, ut = h.up(0)
    up_calls = count_registrations(ut)
    up.dataReceived(OK)
    # Back in the pool, still wired to this client.
    assert h.factory.pool.count("abc") == 1
    assert t.producer is up.client_full and ut.producer is not None
    for _ in range(3):
        p.dataReceived(GET)
        up.dataReceived(OK)
    assert len(h.upstream.conns) == 1
    assert [r[2] for r in parse_responses(t.value())] == [b"hi"] * 4
    assert len(client_calls) == 1 and up_calls == []  # (the first wiring came before)
    # The client goes: both sides unwired before its transport closes.
    p.drain()
    assert t.disconnecting and t.producer is None and ut.producer is None


def test_another_client_taking_a_parked_connection_unwires_its_first_client() -> None:
    h = Harness(max_idle_per_session=1)
    a, at = h.client()
    b, bt = h.client("192.0.2.8")
    a.dataReceived(GET)
    up, ut = h.up(0)
    up.dataReceived(OK)
    # a's transport is full for a moment: the parked connection's reads pause.
    at.producer.pauseProducing()
    assert ut.producerState == "paused"
    b.dataReceived(GET)  # takes the one idle connection, a's
    assert len(h.upstream.conns) == 1
    assert at.producer is None and bt.producer is up.client_full
    assert ut.producerState == "producing"  # a's back-pressure no longer holds it
    up.dataReceived(OK)
    assert [r[0] for r in parse_responses(bt.value())] == [200]
    # Parked with b now; a's next request takes it back from b.
    a.dataReceived(GET)
    assert len(h.upstream.conns) == 1
    assert at.producer is up.client_full and bt.producer is None
    up.dataReceived(OK)
    assert [r[0] for r in parse_responses(at.value())] == [200, 200]


def test_a_parked_connection_lost_unwires_its_client() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    up, _ = h.up(0)
    up.dataReceived(OK)
    up.connectionLost(Failure(StreamReset("reset")))
    assert t.producer is None and h.factory.pool.count() == 0
    p.dataReceived(GET)  # a new connection, wired as usual
    up2, _ = h.up(1)
    assert t.producer is up2.client_full
    up2.dataReceived(OK)
    assert [r[0] for r in parse_responses(t.value())] == [200, 200]


def test_a_refused_head_on_a_paired_connection_unwires_first() -> None:
    h = Harness()
    p, t = h.client()
    p.dataReceived(GET)
    up, ut = h.up(0)
    up.dataReceived(OK)
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: x\r\n\r\n")
    assert t.disconnecting and t.producer is None and ut.producer is None
