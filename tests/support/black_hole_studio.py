"""Run inside the gateway's namespace of bench.netpath (``ip netns exec <prefix>-gw``): a
gateway there, a studio (the demo tool and studios-connect) in ``<prefix>-st``, and how
long the studio took to bind (and, for the tunnel port, to bind again after the gateway's
restart). Prints one JSON line: ``bound``, ``rebound`` (seconds, or null) and the
client's log. With ``wss`` the studio reaches the gateway by a WebSocket on its HTTPS
port (a self-signed certificate for 10.77.0.1). tests/integration/test_path_mtu.py runs
it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from studios_gateway.studio.client import GOAWAY_SPREAD
from studios_gateway.wire.tls import fingerprint_pem, make_self_signed
from tests.support.gateway import BIN, REPO, GatewayProcess, base_env
from tests.support.waiting import wait_until

KEY = "black-hole-test-key"
TOOL_PORT = 8888


def main(prefix: str, tmp: Path, within: float, carrier: str = "tls") -> int:
    https: dict[str, str] = {}
    pin = ""
    if carrier == "wss":
        cert_pem, key_pem = make_self_signed(["10.77.0.1"])
        cert, key = tmp / "https-cert.pem", tmp / "https-key.pem"
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        pin = fingerprint_pem(cert_pem)
        https = {"CONNECT_TLS_CERT_FILE": str(cert), "CONNECT_TLS_KEY_FILE": str(key),
                 "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING": "true"}
    env = base_env(tmp, CONNECT_MANAGEMENT_AUTH_KEY=KEY, CONNECT_BIND_ADDRESS="0.0.0.0",
                   CONNECT_TLS_HANDSHAKE_TIMEOUT="2s", CONNECT_LOG_LEVEL="info", **https)
    env["CONNECT_TUNNEL_URL"] = f"10.77.0.1:{env['CONNECT_TUNNEL_PORT']}"
    gateway_url = {}
    if pin:
        env["CONNECT_PROXY_URL"] = f"https://10.77.0.1:{env['CONNECT_HTTP_PORT']}"
        gateway_url["CONNECT_GATEWAY_URL"] = (f"wss://10.77.0.1:{env['CONNECT_HTTP_PORT']}"
                                              f"/_connect/tunnel?pin={pin}")
    gw = GatewayProcess(tmp, env)
    studio: list[subprocess.Popen[bytes]] = []
    log = tmp / "connect.log"
    rebound = None
    try:
        gw.wait_healthy()
        status, body, _ = gw.request("/api/sessions", method="POST", body={"owner": "alice"})
        created = json.loads(body)
        in_studio = ["ip", "netns", "exec", f"{prefix}-st"]
        plain = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
        plain.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        with open(tmp / "tool.log", "wb") as tool_log, open(log, "wb") as client_log:
            studio.append(subprocess.Popen(
                [*in_studio, sys.executable, "-m", "studios_gateway.demo.tool", "--port",
                 str(TOOL_PORT)], env=plain, stdout=tool_log, stderr=subprocess.STDOUT))
            studio.append(subprocess.Popen(
                [*in_studio, str(BIN / "studios-connect")],
                env={**plain, "CONNECT_STRING": created["connect_string"], **gateway_url,
                     "CONNECT_TOOL_PORT": str(TOOL_PORT), "CONNECT_CLIENT_LOG_LEVEL": "info"},
                stdout=client_log, stderr=subprocess.STDOUT))
        bound = connected_within(gw, created["id"], within)
        # (the gateway counts the studio connected before the studio has its answer and
        # logs the bind: wait for that line before anything is stopped)
        bind_line = f"session {created['id']} bound to gateway"  # (the studio's info line)
        said_within(log, bind_line, within)
        if bound is not None and carrier == "tls":
            # Restarted: the studio tries the path's own size again (one stall proves
            # little), stalls again, and keeps small segments from then on.
            gw.stop()
            gw = GatewayProcess(tmp, env, name="gateway-again")
            gw.wait_healthy()
            rebound = connected_within(gw, created["id"], within + 2 * GOAWAY_SPREAD)
            said_within(log, bind_line, within, times=2)
    finally:
        for proc in reversed(studio):
            proc.terminate()
            proc.wait(timeout=15)
        gw.stop()
    print(json.dumps({"bound": bound, "rebound": rebound,
                      "client_log": log.read_text(errors="replace")}))
    return 0


def said_within(log: Path, words: str, within: float, times: int = 1) -> float | None:
    """Seconds until ``words`` are in the file ``log`` (``times`` times); None if not
    within ``within``."""
    return _within(lambda: log.read_text(errors="replace").count(words) >= times, words,
                   within)


def connected_within(gw: GatewayProcess, session: str, within: float) -> float | None:
    """Seconds until the gateway says the session's studio is connected; None if not
    within ``within``."""
    return _within(lambda: json.loads(gw.request(f"/api/sessions/{session}")[1]).get(
        "connected"), f"session {session} connected", within)


def _within(condition: Callable[[], object], what: str, within: float) -> float | None:
    """waiting.wait_until, with None for "not within" (the scenario reports it, and the
    test asserts on it with the studio's log)."""
    try:
        return wait_until(condition, what, within)
    except AssertionError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:5]))
