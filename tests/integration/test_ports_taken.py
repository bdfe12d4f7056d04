"""The starters when a port they picked is taken before their server binds it (by a
parallel test's server, say): GatewayProcess, Tool, RedisServer and IdPProcess start
again on a new port, a bounded number of times; a port the test chose itself is never
picked again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tests.support.gateway as gateway_support
import tests.support.login as login_support
import tests.support.redis_server as redis_support
import tests.support.studio as studio_support
from tests.support.gateway import REPO, GatewayProcess, base_env, routing_env
from tests.support.login import IdPProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Tool

pytestmark = pytest.mark.slow

KEY = "ports-test-key"


@pytest.fixture
def other_server() -> Iterator[socket.socket]:
    """Another process's server: it listens (a connect to it succeeds) but is no gateway.
    Bound to a port by the test (`occupy`)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        yield s
    finally:
        s.close()


def occupy(s: socket.socket, port: int) -> int:
    s.bind(("127.0.0.1", port))
    s.listen()
    return port


def test_a_taken_management_port_is_picked_again(tmp_path: Path,
                                                 other_server: socket.socket) -> None:
    env = base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    taken = occupy(other_server, int(env["CONNECT_MANAGEMENT_PORT"]))
    gw = GatewayProcess(tmp_path, env)
    try:
        gw.wait_healthy()
        assert gw.management_port != taken
        assert env["CONNECT_MANAGEMENT_PORT"] == str(gw.management_port)
        assert gw.request("/ready")[0] == 200
        assert len(gw.retries) == 1, gw.retries
        assert (f"cannot listen for the management endpoints (CONNECT_MANAGEMENT_PORT) on "
                f"127.0.0.1:{taken}: [Errno 98] Address already in use") in gw.retries[0]
        assert f"CONNECT_MANAGEMENT_PORT {taken} -> {gw.management_port}" in gw.retries[0]
        assert "Address already in use" in (tmp_path / "gateway.log").read_text()
        assert gw.log_path == tmp_path / "gateway-attempt2.log"
        # Up: the ports are the test's now, and a restart with this env keeps them.
        assert env.picked == {}
    finally:
        gw.stop()
    assert gw.proc.returncode == 0


def test_a_taken_http_port_moves_the_urls_made_from_it(tmp_path: Path,
                                                       other_server: socket.socket) -> None:
    env = routing_env(tmp_path, "path", CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    taken = occupy(other_server, int(env["CONNECT_HTTP_PORT"]))
    gw = GatewayProcess(tmp_path, env)
    try:
        gw.wait_healthy()
        http = int(env["CONNECT_HTTP_PORT"])
        assert http != taken and "CONNECT_HTTP_PORT" in gw.retries[0]
        assert env["CONNECT_PROXY_URL"] == f"http://localhost:{http}"
        with socket.create_connection(("127.0.0.1", http), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            assert s.recv(5) == b"HTTP/"
    finally:
        gw.stop()


def test_after_the_last_attempt_every_start_is_reported(tmp_path: Path,
                                                        other_server: socket.socket,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = base_env(tmp_path)
    taken = occupy(other_server, int(env["CONNECT_MANAGEMENT_PORT"]))
    # The picker keeps handing out the taken port (as if it were taken again each time).
    monkeypatch.setattr(gateway_support, "free_ports", lambda n: [taken] * n)
    gw = GatewayProcess(tmp_path, env)
    try:
        with pytest.raises(RuntimeError) as raised:
            gw.wait_ready()
    finally:
        gw.stop()
    message = str(raised.value)
    assert "(start 3 of 3)" in message and "ports were taken at every start" in message
    for start in (1, 2, 3):
        assert f"start {start}: studios-gateway: cannot listen for the management" in message
    assert [p.name for p in sorted(tmp_path.glob("gateway*.log"))] == [
        "gateway-attempt2.log", "gateway-attempt3.log", "gateway.log"]


def test_a_port_the_test_chose_is_not_picked_again(tmp_path: Path,
                                                   other_server: socket.socket) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    occupy(other_server, port)
    env = base_env(tmp_path, CONNECT_HTTP_PORT=str(port))
    gw = GatewayProcess(tmp_path, env)
    try:
        with pytest.raises(RuntimeError, match=r"\(start 1 of 3\): .*CONNECT_HTTP_PORT.*\n"
                                               r"\(not a port base_env picked"):
            gw.wait_ready()
    finally:
        gw.stop()
    assert gw.retries == [] and env["CONNECT_HTTP_PORT"] == str(port)


def taken_once(taken: int) -> Callable[[], int]:
    """A free_port that hands out `taken` first, then free ports."""
    ports = iter([taken])
    return lambda: next(ports, None) or free_port()


def test_the_demo_tool_exits_1_when_its_port_is_taken(other_server: socket.socket) -> None:
    taken = occupy(other_server, free_port())
    run = subprocess.run([sys.executable, "-m", "studios_gateway.demo.tool", "--port",
                          str(taken)], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=15)
    assert run.returncode == 1, run.stderr
    assert run.stderr == (f"demo tool: cannot listen on 127.0.0.1:{taken}: "
                          "[Errno 98] Address already in use\n")


@pytest.mark.parametrize(("module", "start", "path"), [
    (studio_support, Tool, "/"),
    (login_support, IdPProcess, "/.well-known/openid-configuration")], ids=["tool", "idp"])
def test_a_server_whose_port_was_taken_starts_on_another(
        tmp_path: Path, other_server: socket.socket, monkeypatch: pytest.MonkeyPatch,
        module: object, start: Callable[[Path], Tool | IdPProcess], path: str) -> None:
    taken = occupy(other_server, free_port())
    monkeypatch.setattr(module, "free_port", taken_once(taken))
    server = start(tmp_path)
    try:
        assert server.port != taken
        assert server.retries == [f"start 1 on port {taken}: the port was in use"]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as page:
            assert page.status == 200
    finally:
        server.stop()


@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_redis_whose_port_was_taken_starts_on_another_and_keeps_it(
        tmp_path: Path, other_server: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = occupy(other_server, free_port())
    monkeypatch.setattr(redis_support, "free_port", taken_once(taken))
    redis = RedisServer(tmp_path / "redis")
    try:
        redis.start()
        assert redis.port != taken and redis.address == f"127.0.0.1:{redis.port}"
        assert redis.retries == [f"start 1 on port {taken}: the port was in use"]
        assert redis.cli("PING") == "PONG"
        port = redis.port
        redis.kill()
        redis.start()  # a restart is on the same port
        assert redis.port == port and redis.cli("PING") == "PONG"
    finally:
        redis.stop()


def test_an_idp_port_the_test_gives_is_not_picked_again(tmp_path: Path,
                                                       other_server: socket.socket) -> None:
    taken = occupy(other_server, free_port())
    with pytest.raises(RuntimeError, match=r"(?s)\(start 1 of 3\):\n.*Address already in use"):
        IdPProcess(tmp_path, port=taken)
