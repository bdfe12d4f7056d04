"""A hostile studio against a real gateway process: a tunnel bound with the session's own
connect string, then frames and answers made by hand (tests/support/hostile_studio.py).
What one studio sends must not cost the gateway unbounded memory, nor reach another
studio or another user's requests."""

from __future__ import annotations

import pytest

from studios_gateway.wire import frames
from tests.integration.test_tunnel_process import (
    Deployment,
    MiB,
    deployment,
    rss_kib,
    wait_connected,
)
from tests.support.hostile_studio import HostileStudio

pytestmark = pytest.mark.slow

__all__ = ["deployment"]  # the fixture


def hostile(d: Deployment, created: dict, **kw: int) -> HostileStudio:
    studio = HostileStudio(created["connect_string"], **kw)
    d.stoppers.append(studio.close)
    wait_connected(d.gw, created["id"])
    return studio


@pytest.mark.parametrize("flood", ["ping", "syn"])
def test_frames_whose_answers_are_never_read_do_not_fill_the_gateway(
        deployment: Deployment, flood: str) -> None:
    """A studio sending Pings (or opening streams, which the gateway refuses) while never
    reading the answers: the gateway buffered every answer (69 MiB of Pings grew it by
    85 MiB); now the tunnel ends with a protocol error once the answers back up, and
    another studio keeps working."""
    d = deployment
    good = d.create()
    d.studio(good)
    wait_connected(d.gw, good["id"])
    d.login(good)
    bad = hostile(d, d.create(), rcvbuf=4096)
    base = rss_kib(d.gw.proc.pid)
    sent = 0
    try:
        for n in range(64):
            base_id = n * 100_000
            batch = b"".join(frames.encode_ping(i) if flood == "ping" else
                             frames.encode_window_update(2 * (base_id + i) + 1, 0, frames.SYN)
                             for i in range(100_000))
            bad.sock.settimeout(10)
            bad.send(batch)
            sent += len(batch)
    except OSError:
        pass  # the gateway ended the tunnel (or stopped reading it): what we want
    growth = (rss_kib(d.gw.proc.pid) - base) / 1024
    assert growth < 32, f"gateway grew {growth:.0f} MiB after {sent / MiB:.0f} MiB of {flood}"
    assert "read nothing of this end's writes" in d.gw.output()
    assert d.browser.get(d.url(good, "/api/info")).status == 200
