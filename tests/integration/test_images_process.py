"""Sessions made from a studio image, in a real gateway: `studios-gateway sessions create
--image`, a studio binding with its tool version, and what `sessions list/show` say
(memory store, and Redis when redis-server is installed)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from studios_gateway.wire.bind import BindRequest, parse_reply
from tests.support.gateway import BIN, GatewayProcess, base_env
from tests.support.redis_server import RedisServer, redis_available

pytestmark = pytest.mark.slow

KEY = "images-test-key"
IMAGE = "registry.example/platform/data-studio-rstudio:2025.04.1-u2-0.11.3"


@pytest.fixture(params=["memory", "redis"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    extra = {}
    redis = None
    if request.param == "redis":
        if not redis_available():
            pytest.skip("redis-server is not installed")
        redis = RedisServer(tmp_path / "redis")
        redis.start()
        extra["CONNECT_REDIS_ADDRESS"] = redis.address
    gw = GatewayProcess(tmp_path, base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY, **extra))
    try:
        gw.wait_healthy()
        yield gw
    finally:
        gw.stop()
        if redis is not None:
            redis.stop()


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(gw.env, CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    return subprocess.run([str(BIN / "studios-gateway"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def bind(gw: GatewayProcess, sid: str, token: str, tool_version: str) -> ssl.SSLSocket:
    """A studio's bind, as the connect client sends it, over the real tunnel listener."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test trusts its own gateway
    raw = socket.create_connection(("127.0.0.1", int(gw.env["CONNECT_TUNNEL_PORT"])), 10)
    sock = context.wrap_socket(raw)
    sock.sendall(BindRequest(sid, token, "0.12.1", "ride", 8787, tool_version).encode())
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "the gateway closed the tunnel before answering the bind"
        line += chunk
    reply = parse_reply(line.split(b"\n")[0])
    assert reply.ok, reply
    return sock


def test_a_session_from_an_image_shows_its_versions(gateway: GatewayProcess) -> None:
    made = cli(gateway, "sessions", "create", "--owner", "alice", "--image", IMAGE, "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert (created["tool"], created["image"], created["tool_version"],
            created["update_version"], created["connect_version"]) == \
        ("ride", IMAGE, "2025.04.1", "u2", "0.11.3")
    sid = created["id"]

    listed = cli(gateway, "sessions", "list")
    assert f"image={IMAGE} (tool 2025.04.1, connect 0.11.3)" in listed.stdout, listed

    sock = bind(gateway, sid, created["token"], "2025.04.2")
    try:
        # the gateway answers a bind after its claim is stored: no wait needed
        shown = json.loads(cli(gateway, "sessions", "show", sid).stdout)
        assert shown["connected"]
        assert (shown["image"], shown["tool_version"], shown["connect_version"]) == \
            (IMAGE, "2025.04.2", "0.12.1")
        assert shown["tunnel"]["tool_version"] == "2025.04.2"
        listed = cli(gateway, "sessions", "list")
        assert "connected" in listed.stdout and "(tool 2025.04.2, connect 0.12.1)" in \
            listed.stdout, listed
    finally:
        sock.close()


def test_images_the_gateway_cannot_serve_are_refused(gateway: GatewayProcess) -> None:
    old = cli(gateway, "sessions", "create", "--owner", "alice", "--image",
              "registry.example/data-studio-jupyter:4.2.5-0.9")
    assert old.returncode == 1 and old.stdout == ""
    assert "400" in old.stderr and "Connect 0.9 " in old.stderr and \
        "(Connect 0.12.0)" in old.stderr and "0.10, 0.11 and 0.12" in old.stderr, old.stderr
    bad = cli(gateway, "sessions", "create", "--owner", "alice", "--image",
              "registry.example/data-studio-jupyter@sha256:" + "0" * 64)
    assert bad.returncode == 1 and "has no tag" in bad.stderr, bad.stderr
    assert "no sessions" in cli(gateway, "sessions", "list").stdout
