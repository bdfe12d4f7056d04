"""bench.baselines.start_stunnel: the stunnel pair bench/run measures the gateway against
carries a connection's bytes both ways, intact, over TLS 1.3 with the far side pinned."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import baselines
from bench.common import Processes
from tests.support.echo import bench_processes, echo_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

needs_stunnel = pytest.mark.skipif(
    shutil.which(baselines.STUNNEL_EXE) is None and os.environ.get("CI") != "true",
    reason="stunnel4 is not installed (scripts/setup --test installs it)")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with bench_processes(tmp_path) as p:
        yield p


@needs_stunnel
def test_the_pair_carries_bytes_both_ways_intact(procs: Processes, tmp_path: Path) -> None:
    server = echo_server()
    fronts = baselines.start_stunnel(procs, tmp_path, {"echo": server.getsockname()[1]})
    assert fronts is not None and set(fronts) == {"echo"}
    payload = os.urandom(3 << 20)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", fronts["echo"]), timeout=30) as c:
        # All of it back, counted: not to an EOF after a half-close of ours, which stunnel
        # may turn into the end of both directions (its close_notify) while the echo's
        # last bytes are still on their way (seen once: the answer cut short).
        writer = threading.Thread(target=c.sendall, args=(payload,))
        writer.start()
        while len(got) < len(payload) and (data := c.recv(65536)):
            got += data
        writer.join()
    server.close()
    assert bytes(got) == payload
    # What went between the two stunnels was TLS 1.3, the near side checking the far
    # side's certificate against the one it was given
    d = tmp_path / "stunnel"
    for side in ("near", "far"):
        wait_until(lambda side=side: "TLSv1.3 ciphersuite" in (d / f"{side}.log").read_text(),
                   f"the {side} side's log of its TLS session")
    assert "Certificate accepted at depth=0: CN=127.0.0.1" in (d / "near.log").read_text()
    assert (tmp_path / "stunnel" / "key.pem").stat().st_mode & 0o077 == 0


@needs_stunnel
def test_the_version_row_names_stunnel() -> None:
    version = baselines.stunnel_version()
    assert version is not None and version.startswith("stunnel ")


def test_without_stunnel_the_pair_is_skipped(procs: Processes, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    assert baselines.start_stunnel(procs, tmp_path, {"tool": 1}) is None
    assert baselines.stunnel_version() is None
