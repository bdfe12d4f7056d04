"""Transfer quotas across two real gateways on one real redis-server.

Two `twistd` nodes share Redis, CONNECT_PEER_SECRET and the storage root; a session
may move 4 MiB a minute (CONNECT_QUOTA_SESSION_BYTES). A download through node B and
one through node A (whose tunnel it is) use the quota up: the next request, through
either node, gets 429 with Retry-After. The admin API shows the use and resets it; then
an SSH copy (OpenSSH, through node B) is stopped with the quota's message.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.login import Gateway, redis_nodes
from tests.support.redis_server import redis_available
from tests.support.waiting import wait_until
from tests.support.web import Browser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not redis_available(), reason="redis-server is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]

MiB = 1 << 20


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    with redis_nodes(tmp_path, "a", "b", CONNECT_PEER_SECRET="quota-test-peer-secret",
                     CONNECT_SSH_ENABLED="true", CONNECT_QUOTA_SESSION_BYTES="4MiB",
                     CONNECT_QUOTA_WINDOW="1m") as (a, b):
        yield a, b


def until_429(browser: Browser, url: str, timeout: float = 10) -> tuple[int, dict[str, str]]:
    """Small requests until one is refused (the nodes add their counts once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = browser.get(url)
        if reply.status == 429 or time.monotonic() > deadline:
            return reply.status, dict(reply.headers)
        time.sleep(0.2)


def test_a_session_quota_holds_across_nodes_for_http_and_ssh(
        nodes: tuple[Gateway, Gateway], tmp_path: Path) -> None:
    a, b = nodes
    created = a.studio(ssh_enabled=True)  # its tunnel is held by node A
    sid = created["id"]
    key = tmp_path / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    status, _ = a.api("/api/users/alice/keys", "PUT",
                      {"keys": [key.with_suffix(".pub").read_text()]})
    assert status == 200
    alice = Browser()
    assert alice.use_login_link(created["login_link"]).status == 200

    got = alice.get(b.url(sid, f"/download?size={3 * MiB}"))
    assert got.status == 200 and len(got.body) == 3 * MiB
    # node B's count reaches Redis (node A's usage reads it there; A counted nothing yet)
    wait_until(lambda: a.api(f"/api/quota/sessions/{sid}")[1]["used_bytes"] >= 3 * MiB,
               "node B's count in Redis")
    got = alice.get(a.url(sid, f"/download?size={2 * MiB}"))
    assert got.status == 200, got.status
    status, headers = until_429(alice, b.url(sid, "/api/info"))
    assert status == 429, "node B let the session go past its quota"
    assert 0 < int(headers["Retry-After"]) <= 60
    assert alice.get(a.url(sid, "/api/info")).status == 429
    page = alice.get(a.url(sid, "/"))
    assert "Transfer quota reached" in page.text and "This studio has moved" in page.text
    assert sid in page.text

    status, usage = b.api(f"/api/quota/sessions/{sid}")
    assert status == 200 and usage["over"] and usage["used_bytes"] >= 5 * MiB
    assert usage["limit_bytes"] == 4 * MiB
    status, shown = a.api(f"/api/sessions/{sid}")
    assert shown["usage"]["quota"]["over"] is True
    assert shown["usage"]["node"] == "node-a" and shown["usage"]["requests"] >= 1

    status, reset = a.api(f"/api/quota/sessions/{sid}", "DELETE")
    assert status == 200 and reset == {"session": sid, "reset": True}
    deadline = time.monotonic() + 5
    while alice.get(b.url(sid, "/api/info")).status != 200:
        assert time.monotonic() < deadline, "the reset did not reach node B"
        time.sleep(0.2)

    # About 2 MB/s for 5 s through node B: stopped once 4 MiB have passed.
    ssh_port = int(b.env["CONNECT_SSH_ADDR"].rsplit(":", 1)[1])
    start = time.monotonic()
    r = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
         "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-i", str(key), "-p", str(ssh_port), f"alice@{sid}@127.0.0.1",
         "for i in $(seq 100); do head -c 100000 /dev/zero; sleep 0.05; done"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    took = time.monotonic() - start
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 255, (r.returncode, len(r.stdout), err)
    assert "transfer quota reached: session " + sid in err, err
    assert 4 * MiB <= len(r.stdout) < 10_000_000
    status, text, _ = b.gw.request("/metrics")
    metrics = text.decode()
    assert 'studios_gateway_quota_refusals_total{kind="http",scope="session"}' in metrics
    assert 'studios_gateway_quota_refusals_total{kind="ssh",scope="session"} 1.0' in metrics
    print(f"SSH copy stopped after {len(r.stdout) / MiB:.1f} MiB in {took:.1f}s: {err.strip()}")
