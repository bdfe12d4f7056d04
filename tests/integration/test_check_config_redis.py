"""`studios-gateway check-config --connect` against a real redis-server: one clear line
for each way a node could not use its Redis, nothing secret printed, 0 when it can."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_registry_redis import documented_acl_rules
from tests.support import redis_server as rs
from tests.support.gateway import REPO, base_env
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

NO_REDIS = not rs.redis_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NO_REDIS, reason="no redis-server")]

PASSWORD = "check-config-pw-1234"


def check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = base_env(tmp_path, CONNECT_PEER_SECRET="0123456789abcdef" * 4, **env)
    return subprocess.run([sys.executable, "-m", "studios_gateway.cli", "check-config", "-q",
                           "--connect"], env=full, cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def acl_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", user="gateway", password=PASSWORD,
                         acl_rules=documented_acl_rules())
    server.start()
    yield server
    server.stop()


def test_the_documented_acl_user_passes_and_wrong_settings_are_one_line(
        tmp_path: Path, acl_redis: RedisServer) -> None:
    ok = check(tmp_path, CONNECT_REDIS_ADDRESS=acl_redis.address, CONNECT_REDIS_USER="gateway",
               CONNECT_REDIS_PASSWORD=PASSWORD)
    assert ok.returncode == 0, ok.stderr
    assert f"Redis at {acl_redis.address}: connected" in ok.stdout

    wrong = check(tmp_path, CONNECT_REDIS_ADDRESS=acl_redis.address,
                  CONNECT_REDIS_USER="gateway", CONNECT_REDIS_PASSWORD="not-the-password-9")
    assert wrong.returncode == 2
    assert "WRONGPASS" in wrong.stderr and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "not-the-password-9" not in wrong.stdout + wrong.stderr

    # A prefix the user has no channel right for: its subscription would be refused.
    prefix = check(tmp_path, CONNECT_REDIS_ADDRESS=acl_redis.address,
                   CONNECT_REDIS_USER="gateway", CONNECT_REDIS_PASSWORD=PASSWORD,
                   CONNECT_REDIS_PREFIX="other")
    assert prefix.returncode == 2
    assert "NOPERM" in prefix.stderr and "other:events" in prefix.stderr, prefix.stderr

    # No password where Redis asks for one: said as such (it read "could not set dbid=0:
    # NOAUTH Authentication required.", naming the SELECT that failed, not the cause).
    none = check(tmp_path, CONNECT_REDIS_ADDRESS=acl_redis.address)
    assert none.returncode == 2 and none.stderr.count("\n") == 1, none.stderr
    assert "NOAUTH" in none.stderr and "set CONNECT_REDIS_PASSWORD" in none.stderr, none.stderr

    down = check(tmp_path, CONNECT_REDIS_ADDRESS=f"127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "cannot connect" in down.stderr, down.stderr


def test_evicting_redis_is_a_warning(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        server.cli("CONFIG", "SET", "maxmemory", "100mb")
        server.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        out = check(tmp_path, CONNECT_REDIS_ADDRESS=server.address)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    assert "warning: Redis at" in out.stdout and "maxmemory-policy allkeys-lru" in out.stdout
    assert "persists nothing" in out.stdout  # the suite's Redis saves nothing


@pytest.mark.skipif(rs.redis_tls_support() is not None, reason=str(rs.redis_tls_support()))
def test_tls_verified_and_an_unknown_ca_refused(tmp_path: Path) -> None:
    files = rs.make_tls_files(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", tls=files)
    server.start()
    try:
        tls = {"CONNECT_REDIS_ADDRESS": server.address, "CONNECT_REDIS_TLS_ENABLE": "true"}
        ok = check(tmp_path, CONNECT_REDIS_TLS_CA_FILE=str(files.ca_cert), **tls)
        unknown = check(tmp_path, CONNECT_REDIS_TLS_CA_FILE=str(files.other_ca_cert), **tls)
    finally:
        server.stop()
    assert ok.returncode == 0, ok.stderr
    assert unknown.returncode == 2 and "certificate verify failed" in unknown.stderr, \
        unknown.stderr
