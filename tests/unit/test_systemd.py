"""systemd integration: sd_notify over a real datagram socket, watchdog, LISTEN_FDS, wire()."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from studios_gateway import systemd
from studios_gateway.component import endpoint_for
from studios_gateway.config_loading import load_config
from studios_gateway.metrics import Metrics
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.service import GatewayService
from studios_gateway.systemd import (
    Notifier,
    activated_endpoint,
    listen_fds,
    notify_address,
    watchdog_interval,
    wire,
)
from tests.support.stores import FlakyStore

# --- a datagram socket the test owns, standing in for systemd's ------------------


class NotifySocket:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0)

    def messages(self) -> list[dict[str, str]]:
        """Every datagram waiting now, each parsed into its KEY=VALUE fields."""
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify")
    s = NotifySocket(path)
    yield path, s
    s.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, NotifySocket]]:
    name = f"studios-gateway-test-{uuid.uuid4().hex}"
    s = NotifySocket("\0" + name)
    yield "@" + name, s
    s.close()


# --- Notifier ------------------------------------------------------------------------


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract") == "\0abstract"
    assert notify_address("") is None and notify_address(None) is None
    assert notify_address("@") is None
    assert notify_address("vsock:2:1234") is None
    assert notify_address("relative/path") is None


def test_notifier_sends_to_a_path(path_socket: tuple[str, NotifySocket]) -> None:
    path, sock = path_socket
    n = Notifier({"NOTIFY_SOCKET": path}, Clock())
    assert n.enabled
    assert n.ready(status="ready: http 0.0.0.0:80")
    assert n.status("line one\nline two")
    assert n.watchdog() and n.stopping()
    assert sock.messages() == [
        {"READY": "1", "STATUS": "ready: http 0.0.0.0:80"},
        {"STATUS": "line one line two"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1"},
    ]
    n.close()


def test_notifier_sends_to_an_abstract_name(abstract_socket: tuple[str, NotifySocket]) -> None:
    name, sock = abstract_socket
    n = Notifier({"NOTIFY_SOCKET": name}, Clock(), monotonic=lambda: 123456789)
    assert n.reloading()
    assert n.ready()
    assert sock.messages() == [{"RELOADING": "1", "MONOTONIC_USEC": "123456789"}, {"READY": "1"}]
    n.close()


def test_reloading_carries_the_real_monotonic_clock(
        abstract_socket: tuple[str, NotifySocket]) -> None:
    name, sock = abstract_socket
    n = Notifier({"NOTIFY_SOCKET": name}, Clock())
    before = systemd.monotonic_usec()
    n.reloading()
    after = systemd.monotonic_usec()
    (message,) = sock.messages()
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    n.close()


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    clock = Clock()
    n = Notifier({"WATCHDOG_USEC": "2000000"}, clock)
    assert not n.enabled
    assert not n.ready() and not n.watchdog()
    assert n.start_watchdog() is None
    assert clock.getDelayedCalls() == []


def test_a_missing_receiver_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")}, Clock())
    assert n.ready() is False
    assert n.ready() is False


# --- watchdog ---------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "2000000"}, 1.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_watchdog_pings_at_half_the_interval(abstract_socket: tuple[str, NotifySocket]) -> None:
    name, sock = abstract_socket
    clock = Clock()
    n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"}, clock)
    n.start_watchdog()
    assert sock.messages() == [{"WATCHDOG": "1"}]  # at once
    clock.advance(0.99)
    assert sock.messages() == []
    clock.advance(0.01)
    assert sock.messages() == [{"WATCHDOG": "1"}]
    clock.pump([1.0, 1.0])
    assert len(sock.messages()) == 2
    # A reactor that does not turn (the clock does not advance) sends nothing.
    assert sock.messages() == []
    n.close()
    clock.advance(5)
    assert sock.messages() == []


def test_no_watchdog_when_it_is_meant_for_another_pid(
        abstract_socket: tuple[str, NotifySocket]) -> None:
    name, sock = abstract_socket
    clock = Clock()
    n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000",
                  "WATCHDOG_PID": str(os.getpid() + 1)}, clock)
    assert n.start_watchdog() is None
    clock.advance(10)
    assert sock.messages() == []


# --- LISTEN_FDS -------------------------------------------------------------------------


def test_listen_fds_parsing() -> None:
    env = {"LISTEN_PID": "77", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "http:tunnel:management"}
    got = listen_fds(env, pid=77)
    assert got.fds == (3, 4, 5)
    assert got.named("tunnel") == [4] and got.named("ssh") == []
    assert env["LISTEN_FDS"] == "3"  # the environment is left alone


@pytest.mark.parametrize("environ", [
    {"LISTEN_PID": "78", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"},  # another process
    {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"},  # no LISTEN_PID
    {"LISTEN_PID": "77", "LISTEN_FDS": "x", "LISTEN_FDNAMES": "http"},
    {"LISTEN_PID": "77", "LISTEN_FDS": "0"},
    {},
])
def test_listen_fds_ignores_what_is_not_ours(environ: dict[str, str]) -> None:
    assert listen_fds(environ, pid=77).fds == ()


def test_listen_fds_without_matching_names_are_unknown() -> None:
    got = listen_fds({"LISTEN_PID": "77", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"}, pid=77)
    assert got.names == ("unknown", "unknown")
    got = listen_fds({"LISTEN_PID": "77", "LISTEN_FDS": "2"}, pid=77, start=10)
    assert got.fds == (10, 11) and got.named("unknown") == [10, 11]


def test_no_activated_endpoint_when_nothing_was_passed() -> None:
    reactor = MemoryReactorClock()
    assert activated_endpoint(reactor, "http", {}) is None
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "tunnel"}
    assert activated_endpoint(reactor, "http", env) is None


def _inherited(fd: int, name: str) -> dict[str, str]:
    return {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": name}


def test_activated_endpoint_adopts_a_listening_socket_of_its_family() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind((host, 0))
        s.listen()
        fd = os.dup(s.fileno())
        s.close()
        reactor = MemoryReactorClock()
        ep = activated_endpoint(reactor, "http", _inherited(fd, "http"), start=fd)
        assert isinstance(ep, AdoptedStreamServerEndpoint)
        assert ep.fileno == fd and ep.addressFamily == family
        os.close(fd)


@pytest.mark.parametrize("kind", ["not listening", "datagram", "pipe"])
def test_an_unusable_inherited_descriptor_fails_the_listen(kind: str) -> None:
    if kind == "pipe":
        fd, other = os.pipe()
        os.close(other)
    else:
        typ = socket.SOCK_DGRAM if kind == "datagram" else socket.SOCK_STREAM
        s = socket.socket(socket.AF_INET, typ)
        s.bind(("127.0.0.1", 0))
        fd = os.dup(s.fileno())
        s.close()
    ep = activated_endpoint(MemoryReactorClock(), "tunnel", _inherited(fd, "tunnel"), start=fd)
    assert ep is not None
    failures: list[Any] = []
    ep.listen(Factory()).addErrback(failures.append)
    assert "socket-activated 'tunnel'" in failures[0].getErrorMessage()
    os.close(fd)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.buf.endswith(b"\n"):
            self.done.callback(self.buf)


class AdoptedSocketServes(unittest.TestCase):
    """The real reactor serves on a descriptor handed over as LISTEN_FDS."""

    @defer.inlineCallbacks
    def test_serves_on_the_inherited_socket(self) -> Any:
        from twisted.internet import reactor

        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port_number = s.getsockname()[1]
        fd = os.dup(s.fileno())
        s.close()
        ep = activated_endpoint(reactor, "management", _inherited(fd, "management"), start=fd)
        port = yield ep.listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        assert port.getHost().port == port_number
        client = Collect()
        proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port_number).connect(
            Factory.forProtocol(lambda: client))
        proto.transport.write(b"hello\n")
        got = yield client.done
        proto.transport.loseConnection()
        assert got == b"hello\n"


# --- wire(): ordering with a fake clock --------------------------------------------------


class RecordingNotifier(Notifier):
    def __init__(self, environ: dict[str, str], clock: Any) -> None:
        super().__init__(environ, clock, monotonic=lambda: 42)
        self.sent: list[str] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.extend(assignments)
        return True

    def kinds(self) -> list[str]:
        return [a.partition("=")[0] if not a.startswith("STATUS=") else a for a in self.sent]


def make_gateway(reactor: MemoryReactorClock) -> tuple[GatewayService, FlakyStore]:
    cfg = load_config(environ={"CONNECT_MANAGEMENT_PORT": "9000"})
    store = FlakyStore(MemoryStore(reactor), reason="connection refused")
    store.up = False
    gw = GatewayService(cfg, reactor, store, Metrics())  # type: ignore[arg-type]
    gw.add_listener("management", "CONNECT_MANAGEMENT_PORT",
                    endpoint_for(reactor, "127.0.0.1", 9000), Factory(), "the management endpoints")
    return gw, store


def test_ready_only_after_bind_and_a_ready_check() -> None:
    reactor = MemoryReactorClock()
    gw, store = make_gateway(reactor)
    n = RecordingNotifier({"WATCHDOG_USEC": "20000000"}, reactor)
    w = wire(gw, {}, reactor, notifier=n, handle_sighup=False)
    reactor.advance(0)  # the first reactor iteration
    assert "READY=1" not in n.sent
    assert any("listener:management: not bound" in s for s in n.sent)
    gw.bind_all()
    reactor.advance(10)
    assert "READY=1" not in n.sent  # the store does not answer yet
    assert any("store: unavailable" in s for s in n.sent)
    store.up = True
    reactor.advance(2)
    assert "READY=1" in n.sent and w.ready
    assert n.sent[-1].startswith("STATUS=ready: management ")
    polls = len(reactor.getDelayedCalls())
    reactor.advance(100)
    assert n.sent.count("READY=1") == 1 and len(reactor.getDelayedCalls()) == polls


def test_polling_is_bounded() -> None:
    reactor = MemoryReactorClock()
    gw, _ = make_gateway(reactor)
    n = RecordingNotifier({}, reactor)
    wire(gw, {}, reactor, notifier=n, handle_sighup=False, ready_timeout=30)
    reactor.advance(0)
    reactor.pump([1.0] * 40)
    assert "READY=1" not in n.sent
    assert n.sent[-1].startswith("STATUS=not ready after 3")
    assert reactor.getDelayedCalls() == []


def test_watchdog_starts_with_the_reactor(abstract_socket: tuple[str, NotifySocket]) -> None:
    name, sock = abstract_socket
    reactor = MemoryReactorClock()
    gw, _ = make_gateway(reactor)
    wire(gw, {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"}, reactor, handle_sighup=False)
    assert sock.messages() == []
    reactor.advance(0)
    assert {"WATCHDOG": "1"} in sock.messages()
    reactor.advance(2)
    assert {"WATCHDOG": "1"} in sock.messages()


def test_stopping_on_drain_and_on_reactor_shutdown_is_sent_once() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    gw, store = make_gateway(reactor)
    store.up = True
    gw.on_drain = []  # type: ignore[attr-defined]  # the hook the service offers
    n = RecordingNotifier({}, reactor)
    wire(gw, {}, reactor, notifier=n, handle_sighup=False)
    gw.bind_all()
    reactor.advance(0)
    assert "READY=1" in n.sent
    for hook in gw.on_drain:  # type: ignore[attr-defined]
        hook()
    (before_shutdown,) = reactor.triggers["before"]["shutdown"]
    before_shutdown[0]()
    assert n.sent.count("STOPPING=1") == 1
    assert n.sent.index("STOPPING=1") > n.sent.index("READY=1")


def test_stopping_asks_systemd_for_the_grace_and_a_margin() -> None:
    # A CONNECT_SHUTDOWN_GRACE longer than the unit's TimeoutStopSec=45s got the drain
    # killed (SIGKILL) before it ended: STOPPING=1 now extends the stop timeout.
    reactor = MemoryReactorClock()
    cfg = load_config(environ={"CONNECT_MANAGEMENT_PORT": "9000",
                               "CONNECT_SHUTDOWN_GRACE": "2m"})
    gw = GatewayService(cfg, reactor, MemoryStore(reactor), Metrics())  # type: ignore[arg-type]
    n = RecordingNotifier({}, reactor)
    w = wire(gw, {}, reactor, notifier=n, handle_sighup=False)
    w.on_stopping()
    stop = n.sent.index("STOPPING=1")
    assert n.sent[stop + 1] == "EXTEND_TIMEOUT_USEC=135000000"  # 120 s + 15 s


def test_stopping_before_ready_stops_the_polling() -> None:
    reactor = MemoryReactorClock()
    gw, _ = make_gateway(reactor)
    n = RecordingNotifier({}, reactor)
    w = wire(gw, {}, reactor, notifier=n, handle_sighup=False)
    reactor.advance(0)
    w.on_stopping()
    assert reactor.getDelayedCalls() == []
    gw.bind_all()
    reactor.advance(10)
    assert "READY=1" not in n.sent and "STOPPING=1" in n.sent


def test_reload_is_bracketed_by_reloading_and_ready() -> None:
    reactor = MemoryReactorClock()
    gw, store = make_gateway(reactor)
    store.up = True
    gw.bind_all()
    n = RecordingNotifier({}, reactor)
    done: defer.Deferred[None] = defer.Deferred()
    calls: list[str] = []

    def reload() -> defer.Deferred[None]:
        calls.append("reload")
        return done

    w = wire(gw, {}, reactor, notifier=n, handle_sighup=False, reload=reload)
    reactor.advance(0)
    n.sent.clear()
    w.on_reload()
    assert n.sent[:2] == ["RELOADING=1", "MONOTONIC_USEC=42"] and calls == ["reload"]
    w.on_reload()  # a second SIGHUP while reloading is folded into the first
    assert calls == ["reload"]
    assert "READY=1" not in n.sent
    done.callback(None)
    assert n.sent[-2] == "READY=1"
    assert n.sent[-1].startswith("STATUS=ready (reloaded): management ")


def test_a_failed_reload_still_reports_ready() -> None:
    reactor = MemoryReactorClock()
    gw, store = make_gateway(reactor)
    n = RecordingNotifier({}, reactor)

    def reload() -> None:
        raise ValueError("CONNECT_LOG_LEVEL='loud': expected a level")

    w = wire(gw, {}, reactor, notifier=n, handle_sighup=False, reload=reload)
    w.on_reload()
    assert n.sent[-2] == "READY=1"
    assert n.sent[-1].startswith("STATUS=reload failed (CONNECT_LOG_LEVEL='loud'")


def test_wire_installs_sighup_when_the_reactor_runs() -> None:
    reactor = MemoryReactorClock()
    gw, _ = make_gateway(reactor)
    wire(gw, {}, reactor, notifier=RecordingNotifier({}, reactor))
    assert [h[0] for h in reactor.whenRunningHooks] == [systemd.install_sighup]


def test_unused_sockets_are_named() -> None:
    reactor = MemoryReactorClock()
    gw, _ = make_gateway(reactor)
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "management:ssh"}
    assert systemd.unused_sockets(gw, env) == ["ssh"]
    # After Twisted consumed LISTEN_FDS/LISTEN_PID, the names are still there.
    assert systemd.unused_sockets(gw, {"LISTEN_FDNAMES": "management:ssh"}) == ["ssh"]


def test_wire_routes_sigterm_to_terminate_when_given() -> None:
    reactor = MemoryReactorClock()
    gw, _ = make_gateway(reactor)
    wire(gw, {}, reactor, notifier=RecordingNotifier({}, reactor), handle_sighup=False,
         terminate=gw.terminate)
    assert [(h[0], h[1][1]) for h in reactor.whenRunningHooks] == [
        (systemd.install_sigterm, gw.terminate)]


def test_every_listener_name_is_a_socket_name(tmp_path: Path) -> None:
    """FileDescriptorName= in the .socket units must match the names listeners look for."""
    from studios_gateway.service import make_service

    cfg = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path), "CONNECT_SSH_ENABLED":
                               "true", "CONNECT_MANAGEMENT_PORT": "9000"})
    gw = make_service(cfg, MemoryReactorClock(), environ={})
    names = {listener.name for listener in gw.listeners}
    assert {"http", "tunnel", "ssh", "management"} <= names <= set(systemd.SOCKET_NAMES)
    units = Path(__file__).resolve().parents[2] / "systemd"
    for unit in units.glob("*.socket"):
        (line,) = [x for x in unit.read_text().splitlines() if x.startswith("FileDescriptorName=")]
        assert line.partition("=")[2] in names, unit.name
