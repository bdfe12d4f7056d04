"""GatewayService lifecycle and the management resources, without a real reactor."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from studios_gateway.component import Component, StartError, endpoint_for
from studios_gateway.config_loading import load_config
from studios_gateway.management.endpoints import ManagementRoot
from studios_gateway.metrics import Metrics
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.service import GatewayService
from tests.support.stores import FlakyStore


class FailingEndpoint:
    def listen(self, factory: Any) -> defer.Deferred[Any]:
        err = OSError(98, "Address already in use")
        return defer.fail(err)


def make(reactor: MemoryReactorClock, **env: str) -> tuple[GatewayService, FlakyStore]:
    cfg = load_config(environ={"CONNECT_MANAGEMENT_PORT": "9000", **env})
    store = FlakyStore(MemoryStore(reactor), reason="connection refused")
    return GatewayService(cfg, reactor, store, Metrics()), store  # type: ignore[arg-type]


def result_of(d: defer.Deferred[Any]) -> Any:
    """What an already-fired Deferred gave (trial's successResultOf, for pytest tests)."""
    return unittest.TestCase().successResultOf(d)


def test_bind_all_and_ready() -> None:
    reactor = MemoryReactorClock()
    gw, store = make(reactor)
    gw.add_listener("management", "CONNECT_MANAGEMENT_PORT", endpoint_for(reactor, "127.0.0.1",
                    9000), object(), "the management endpoints")
    ready, checks = result_of(gw.check_ready())
    assert not ready and checks["listener:management"] == "not bound"
    gw.bind_all()
    assert reactor.tcpServers[0][0] == 9000 and reactor.tcpServers[0][3] == "127.0.0.1"
    ready, checks = result_of(gw.check_ready())
    assert ready, checks
    store.up = False
    # The shared store goes away for every node at once: a node that has reached it
    # stays ready (a load balancer would take the whole cluster out), and says why.
    ready, checks = result_of(gw.check_ready())
    assert ready and checks["store"] == ("unavailable: connection refused; still ready: "
                                         "serving the studios it knows meanwhile")


def test_a_node_that_never_reached_its_store_is_not_ready() -> None:
    reactor = MemoryReactorClock()
    gw, store = make(reactor)
    gw.add_listener("management", "CONNECT_MANAGEMENT_PORT", endpoint_for(reactor, "127.0.0.1",
                    9000), object(), "the management endpoints")
    gw.bind_all()
    store.up = False
    ready, checks = result_of(gw.check_ready())
    assert not ready and checks["store"] == "unavailable: connection refused"
    store.up = True
    assert result_of(gw.check_ready())[0]


def test_a_ready_note_is_shown_but_never_makes_the_node_not_ready() -> None:
    """A part's note (the peer links a node cannot make) is in /ready's body; a check
    that is not ok still makes it 503."""
    from studios_gateway.component import Part

    reactor = MemoryReactorClock()
    gw, _ = make(reactor)
    part = Part()
    part.ready_notes.append(lambda: "peers=no link to 1 other node(s): node gw-2: refused")
    gw.add_part(part)
    ready, checks = result_of(gw.check_ready())
    assert ready and checks["peers"] == "no link to 1 other node(s): node gw-2: refused"
    gw.add_ready_check(lambda: "login=starting")
    assert not result_of(gw.check_ready())[0]


def test_a_failing_listener_fails_the_start_and_unbinds_the_rest() -> None:
    reactor = MemoryReactorClock()
    gw, _ = make(reactor)
    ok = gw.add_listener("a", "CONNECT_HTTP_PORT", endpoint_for(reactor, "127.0.0.1", 1), object(),
                         "the HTTP proxy")
    gw.add_listener("b", "CONNECT_TUNNEL_PORT", FailingEndpoint(), object(), "the tunnel listener")
    with pytest.raises(StartError, match=r"cannot listen for the tunnel listener "
                                         r"\(CONNECT_TUNNEL_PORT\): .*Address already in use"):
        gw.bind_all()
    assert ok.port is None


@pytest.mark.parametrize("interface, where", [
    ("127.0.0.1", "127.0.0.1:7070"), ("", "0.0.0.0:7070"), ("::", "[::]:7070")])
def test_a_port_in_use_is_named_with_its_address(interface: str, where: str) -> None:
    # Which port another process holds, for `ss -ltnp`: it said only "Address already
    # in use".
    class Taken:
        def listen(self, factory: Any) -> defer.Deferred[Any]:
            return defer.fail(CannotListenError(interface, 7070,
                                                OSError(98, "Address already in use")))

    gw, _ = make(MemoryReactorClock())
    gw.add_listener("tunnel", "CONNECT_TUNNEL_PORT", Taken(), object(), "the tunnel listener")
    with pytest.raises(StartError) as raised:
        gw.bind_all()
    assert str(raised.value) == (f"cannot listen for the tunnel listener (CONNECT_TUNNEL_PORT) "
                                 f"on {where}: [Errno 98] Address already in use")


def test_shutdown_drains_then_stops_the_reactor() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    gw, _ = make(reactor, CONNECT_SHUTDOWN_GRACE="10s")
    drained: defer.Deferred[None] = defer.Deferred()
    gw.add_component(Component("tunnels", drain=lambda: drained))
    gw.add_listener("http", "CONNECT_HTTP_PORT", endpoint_for(reactor, "127.0.0.1", 1), object(),
                    "the HTTP proxy")
    gw.bind_all()
    gw.shutdown()
    assert gw.draining and gw.listeners[0].port is None
    ready, checks = result_of(gw.check_ready())
    assert not ready and checks["draining"] == "shutting down"
    assert not reactor.hasStopped
    drained.callback(None)
    assert reactor.hasStopped


def test_shutdown_is_bounded_by_the_grace() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    gw, _ = make(reactor, CONNECT_SHUTDOWN_GRACE="10s")
    gw.add_component(Component("SSH proxy", drain=lambda: defer.Deferred()))
    gw.add_component(Component("tunnels", drain=lambda: defer.Deferred(),
                               in_use=lambda: "1 tunnel with 2 open streams"))
    gw.add_component(Component("HTTP proxy", drain=lambda: None))
    gw.shutdown()
    reactor.advance(9.9)
    assert not reactor.hasStopped
    with capturedLogs() as events:
        reactor.advance(0.2)
    assert reactor.hasStopped
    # which part still had connections when the grace ran out
    assert [formatEvent(e) for e in events if "did not finish" in e["log_format"]] == [
        "drain did not finish within 10.0s (still in use: SSH proxy; tunnels: 1 tunnel "
        "with 2 open streams); stopping"]
    # and not 'drained; stopping' right after it, which read as the opposite
    assert [formatEvent(e) for e in events if "stopping" in e["log_format"]][-1] == "stopping"


def test_a_second_sigterm_is_not_called_drained() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    gw, _ = make(reactor, CONNECT_SHUTDOWN_GRACE="10s")
    gw.add_component(Component("SSH proxy", drain=lambda: defer.Deferred()))
    gw.terminate()
    with capturedLogs() as events:
        gw.terminate()
    assert reactor.hasStopped
    assert [formatEvent(e) for e in events] == [
        "second SIGTERM: stopping without waiting for the drain", "stopping"]


class ReadyHealth:
    def __init__(self, ready: bool) -> None:
        self.ready = ready

    def check_ready(self) -> defer.Deferred[tuple[bool, dict[str, str]]]:
        return defer.succeed((self.ready, {"store": "ok" if self.ready else "down"}))


def render(root: ManagementRoot, path: bytes, method: bytes = b"GET",
           auth: bytes | None = None) -> DummyRequest:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.method = method
    if auth is not None:
        request.requestHeaders.addRawHeader(b"authorization", auth)
    resource = root
    for segment in list(request.postpath):
        request.prepath.append(request.postpath.pop(0))
        resource = resource.getChildWithDefault(segment, request)
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


def test_management_auth() -> None:
    shutdowns: list[int] = []
    root = ManagementRoot(auth_key="k3y", health=ReadyHealth(True), metrics=Metrics(),
                          shutdown=lambda: shutdowns.append(1))
    assert render(root, b"/live").responseCode in (None, 200)
    for auth in (None, b"Bearer nope", b"Basic k3y", b"k3y"):
        assert render(root, b"/ready", auth=auth).responseCode == 401, auth
        assert render(root, b"/metrics", auth=auth).responseCode == 401, auth
    req = render(root, b"/ready", auth=b"Bearer k3y")
    assert req.responseCode == 200 and b'"ready"' in b"".join(req.written)
    req = render(root, b"/metrics", auth=b"bearer k3y")
    assert b"studios_gateway_reactor_tick_seconds" in b"".join(req.written)


def test_the_ready_gauge_is_this_scrape_s_answer_without_a_call_to_ready() -> None:
    # Prometheus scrapes /metrics, not /ready: the gauge was 0 on a ready gateway (and
    # 1 on a draining one) until something asked /ready.
    health = ReadyHealth(True)
    root = ManagementRoot(auth_key=None, health=health, metrics=Metrics(),
                          shutdown=lambda: None)
    for ready in (True, False, True):
        health.ready = ready
        req = render(root, b"/metrics")
        assert req.finished and req.responseHeaders.getRawHeaders(b"content-type")
        line = f"studios_gateway_ready {1.0 if ready else 0.0}".encode()
        assert line in b"".join(req.written).splitlines(), ready


def test_ready_503_when_not_ready() -> None:
    root = ManagementRoot(auth_key=None, health=ReadyHealth(False), metrics=Metrics(),
                          shutdown=lambda: None)
    req = render(root, b"/ready")
    assert req.responseCode == 503 and b"down" in b"".join(req.written)


def test_each_redis_connection_is_a_gauge_read_at_the_scrape(tmp_path: Any) -> None:
    """Operators had only studios_gateway_ready to tell that Redis was away."""
    from prometheus_client import generate_latest

    from studios_gateway.service import make_service

    config = load_config(environ={
        "CONNECT_STORAGE_ROOT": str(tmp_path), "CONNECT_REDIS_ADDRESS": "127.0.0.1:1",
        "CONNECT_PEER_SECRET": "a-long-enough-peer-secret", "CONNECT_MANAGEMENT_PORT": "9000"})
    gateway = make_service(config, reactor=MemoryReactorClock())
    text = generate_latest(gateway.metrics.registry).decode()
    for link in ("command", "subscriber"):  # nothing listens there: both down
        assert f'studios_gateway_redis_connected{{link="{link}"}} 0.0' in text, text[-2000:]
    single = make_service(load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path / "one"),
                                               "CONNECT_MANAGEMENT_PORT": "9000"}),
                          reactor=MemoryReactorClock())
    assert "studios_gateway_redis_connected" not in generate_latest(
        single.metrics.registry).decode()  # a single node's own store: no Redis


@pytest.mark.parametrize("name, variable, description", [
    ("peer", "CONNECT_LISTENER_PORT", "the peer listener"),
    ("management", "CONNECT_MANAGEMENT_PORT", "the management endpoints")])
def test_a_port_a_draining_process_keeps_says_so(name: str, variable: str,
                                                 description: str) -> None:
    """A node started again while its previous process drains (an ssh session holds it
    up to CONNECT_SHUTDOWN_GRACE): that process keeps the peer and management ports until
    it exits, and the start said only `Address already in use`."""
    class Taken:
        def listen(self, factory: Any) -> defer.Deferred[Any]:
            return defer.fail(CannotListenError("127.0.0.1", 7777,
                                                OSError(98, "Address already in use")))

    gw, _ = make(MemoryReactorClock())
    gw.add_listener(name, variable, Taken(), object(), description)
    with pytest.raises(StartError) as raised:
        gw.bind_all()
    assert str(raised.value) == (
        f"cannot listen for {description} ({variable}) on 127.0.0.1:7777: [Errno 98] Address "
        "already in use; if a previous process of this node is still draining, it keeps "
        "this port until it exits (at most CONNECT_SHUTDOWN_GRACE): wait for it to exit, as "
        "systemctl restart does, then start again; else another process holds it "
        "(ss -ltnp 'sport = :7777')")
