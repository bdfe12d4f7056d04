"""A studio behind an MTU black hole (a path that drops packets over 1280 bytes without
an ICMP answer), on an emulated path between two network namespaces (bench.netpath;
needs root, as the namespaces do).

The TCP connection opens and the TLS handshake stalls at the gateway's certificate:
before, every attempt ended before its bind was answered and the studio never bound.
Now the attempt after such a one announces 1200-byte segments and binds; after the
gateway's restart the studio tries the path's own size once more (a busy gateway stalls
attempts too), stalls, binds with small segments again and keeps them.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.netpath import remove
from tests.support.gateway import REPO

pytestmark = pytest.mark.slow

#: The gateway resets a stalled handshake after 2 s (CONNECT_TLS_HANDSHAKE_TIMEOUT); the
#: client's next attempt follows within its first back-off (0-0.5 s).
BIND_WITHIN = 12.0


def behind_a_black_hole(tmp_path: Path, name: str, *scenario: str) -> dict[str, Any]:
    """tests.support.black_hole_studio's result (``scenario``: its arguments after the
    directory) on a path of 1280 bytes that drops larger packets without a word."""
    if os.geteuid() != 0:
        pytest.fail("this test makes two network namespaces: run it as root "
                    "(sudo, or a container with CAP_NET_ADMIN)")
    prefix = f"sgmtu{os.getpid()}{name}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    path = subprocess.Popen([sys.executable, "-m", "bench.netpath", "run", "--prefix", prefix,
                             "--delay-ms", "5", "--mtu", "1280"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert path.stdout is not None
        # its first line: the path is up (bounded: a set-up that hangs must not hold CI)
        up, _, _ = select.select([path.stdout], [], [], 30)
        assert up, "bench.netpath said nothing within 30 s"
        said = path.stdout.readline().decode()
        assert "<->" in said, said + path.stdout.read().decode()
        run = subprocess.run(
            ["ip", "netns", "exec", f"{prefix}-gw", sys.executable, "-m",
             "tests.support.black_hole_studio", prefix, str(tmp_path), *scenario],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, run.stdout + run.stderr
        result: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    finally:
        path.terminate()
        try:
            path.wait(timeout=10)
        except subprocess.TimeoutExpired:
            path.kill()
            path.wait()
        remove(prefix)
    # (by name: another run's prefix can begin with this one's, sgmtu12 and sgmtu123-gw)
    assert not {f"{prefix}-gw", f"{prefix}-st"} & set(subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    return result


def test_a_studio_behind_an_mtu_black_hole_binds_with_small_segments(tmp_path: Path) -> None:
    result = behind_a_black_hole(tmp_path, "t", str(BIND_WITHIN))
    log = result["client_log"]
    assert result["bound"] is not None, log
    assert "the connection ended before the bind was answered" in log, log
    assert log.count("1200-byte TCP segments") == 2, log
    assert "MTU black hole" in log
    # One stall proves little (a busy gateway stalls attempts too): after the gateway's
    # restart the studio tried the path's own size again, stalled again, bound with
    # small segments again, and keeps them from then on.
    assert result["rebound"] is not None, log
    assert "the next one tries full-size ones again" in log, log
    assert "2 times in a row" in log, log
    assert "keeps small segments toward it for the next hour" in log, log


def test_a_wss_studio_behind_an_mtu_black_hole_binds_with_small_segments(
        tmp_path: Path) -> None:
    """The tunnel in a WebSocket to the gateway's HTTPS port: the HTTPS handshake stalls
    at the gateway's certificate, and the gateway resets it. That attempt counted as no
    stall, and the studio never bound (measured: none in 40 s); now the next one has
    small segments and binds."""
    result = behind_a_black_hole(tmp_path, "w", str(BIND_WITHIN), "wss")
    log = result["client_log"]
    assert result["bound"] is not None, log
    assert "cannot reach gateway wss://" in log, log
    assert log.count("1200-byte TCP segments") == 1, log
    assert "bound to gateway wss://" in log, log
