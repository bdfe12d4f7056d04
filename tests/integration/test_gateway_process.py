"""A real `twistd -n studios-gateway` process: management endpoints, auth, shutdown, errors."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.support.gateway import BIN, GatewayProcess, base_env, run_twistd
from tests.support.sources import copy_sources

pytestmark = pytest.mark.slow

KEY = "test-management-key-7f3a"


@pytest.fixture
def gateway(tmp_path):
    gw = GatewayProcess(tmp_path, base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY))
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def test_live_ready_metrics_and_auth(gateway: GatewayProcess) -> None:
    status, body, _ = gateway.request("/live", auth=False)
    assert status == 200 and b"live" in body

    for path in ("/ready", "/metrics", "/"):
        status, _, headers = gateway.request(path, auth=False)
        assert status == 401, path
        assert "Bearer" in headers.get("WWW-Authenticate", "")
        assert gateway.request(path, auth="wrong-key")[0] == 401

    status, body, _ = gateway.request("/ready")
    assert status == 200, body
    assert b'"store": "ok"' in body and b'"listener:management": "ok"' in body

    status, body, headers = gateway.request("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "studios_gateway_reactor_tick_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text
    assert 'studios_gateway_listeners{listener="management"} 1.0' in text
    out = gateway.output()
    assert KEY not in out
    # each listener said once, in the gateway's words (not also Twisted's "ProxyFactory
    # starting on 8080" and "Starting factory <...ProxyFactory object at 0x...>")
    assert "the HTTP proxy listening on 127.0.0.1:" in out, out[-3000:]
    assert " starting on " not in out and "Starting factory" not in out, out[-3000:]


def test_shutdown_drains_and_exits_zero(gateway: GatewayProcess) -> None:
    assert gateway.request("/shutdown", method="POST", auth=False)[0] == 401
    status, body, _ = gateway.request("/shutdown", method="POST")
    assert status == 202 and b"draining" in body
    assert gateway.wait(timeout=30) == 0
    out = gateway.output()
    assert "drained; stopping" in out
    # each listener's stop said once, in the gateway's words (not also Twisted's "(TCP
    # Port 8080 Closed)")
    for description in ("the HTTP proxy", "the tunnel listener", "the management endpoints"):
        assert out.count(f"{description} stopped listening on 127.0.0.1:") == 1, out[-3000:]
    assert "Port" not in out.partition("draining:")[2], out[-3000:]


def _raw(gateway: GatewayProcess, method: str, path: str, body: bytes = b"",
         key: str | None = KEY) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.management_port, timeout=15)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


def _logged(gateway: GatewayProcess, text: str) -> str:
    """The gateway's log once `text` is in it (the line is written as the event happens;
    this waits for it, bounded)."""
    deadline = time.monotonic() + 10
    while text not in (out := gateway.output()):
        assert time.monotonic() < deadline, f"never logged: {text!r}\n{out[-2000:]}"
        time.sleep(0.05)  # polling the log file for the line, not a race fix
    return out


def test_wrong_methods_unknown_paths_and_bad_bodies_get_json_errors(
        gateway: GatewayProcess) -> None:
    """What an operator's script can get wrong is answered in JSON with a reason, never an
    HTML page or a 500."""
    status, headers, body = _raw(gateway, "HEAD", "/shutdown")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, body = _raw(gateway, "GET", "/shutdown")
    assert status == 405 and headers["Allow"] == "POST"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"].startswith("method GET not allowed here; use POST")
    for path in ("/nothing", "/api", "/api/nothing", "/api/nothing/deeper"):
        status, headers, body = _raw(gateway, "GET", path)
        assert status == 404, path
        assert "no such endpoint" in json.loads(body)["error"], path
    status, _, body = _raw(gateway, "POST", "/api/sessions", b"[" * 30000 + b"]" * 30000)
    assert status == 400
    assert json.loads(body) == {"error": "the body is not valid JSON: nested too deeply"}
    # the gateway goes on: a session is made, and the change is in the log (no token)
    status, _, body = _raw(gateway, "POST", "/api/sessions", b'{"owner": "alice"}')
    assert status == 201, body
    made = json.loads(body)
    out = _logged(gateway, f"admin API: session {made['id']} created for alice")
    assert made["token"] not in out
    assert "Traceback" not in out


def test_refused_management_requests_are_logged_without_the_key(
        gateway: GatewayProcess) -> None:
    assert _raw(gateway, "GET", "/metrics", key="guess-123")[0] == 401
    out = _logged(gateway, "management request refused (missing or wrong bearer token): "
                           "GET /metrics from 127.0.0.1")
    assert "guess-123" not in out and KEY not in out


def test_invalid_value_stops_the_start(tmp_path) -> None:
    env = base_env(tmp_path, CONNECT_SSH_MAX_CONNECTIONS="many")
    result = run_twistd(tmp_path, env)
    assert result.returncode == 78  # EX_CONFIG (RestartPreventExitStatus= in the units)
    lines = [line for line in result.stderr.splitlines() if "CONNECT_SSH_MAX_CONNECTIONS" in line]
    assert lines == ["studios-gateway: CONNECT_SSH_MAX_CONNECTIONS='many': expected a whole "
                     "number from 1 to 1000000"], result.stderr


def test_option_overrides_environment(tmp_path) -> None:
    env = base_env(tmp_path)
    result = run_twistd(tmp_path, env, ["--ssh-max-connections", "zero"])
    assert result.returncode != 0
    assert "--ssh-max-connections (CONNECT_SSH_MAX_CONNECTIONS)='zero'" in result.stderr


def test_a_port_in_use_fails_the_start(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = base_env(tmp_path, CONNECT_MANAGEMENT_PORT=str(port))
        result = run_twistd(tmp_path, env)
    assert result.returncode == 1
    assert "cannot listen for the management endpoints (CONNECT_MANAGEMENT_PORT)" in result.stderr


def test_check_config_command(tmp_path) -> None:
    env = base_env(tmp_path, CONNECT_REDIS_PASSWORD="hunter2-secret")
    cmd = [str(BIN / "studios-gateway"), "check-config"]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "CONNECT_SSH_MAX_CONNECTIONS" in ok.stdout and "2000" in ok.stdout
    assert "hunter2-secret" not in ok.stdout + ok.stderr
    env["CONNECT_LOG_LEVEL"] = "chatty"
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "CONNECT_LOG_LEVEL='chatty'" in bad.stderr


def test_check_config_says_every_malformed_env_file_line(tmp_path) -> None:
    env = base_env(tmp_path)
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_REDIS_PASSWORD: hunter2-secret\nCONNECT_HTTP_PORT=8080\n"
                        "JUSTANAME\nCONNECT_SSH_MAX_CONNECTIONS=many\n")
    env.pop("CONNECT_SSH_MAX_CONNECTIONS", None)
    bad = subprocess.run([str(BIN / "studios-gateway"), "check-config", "--env-file",
                          str(env_file)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    said = [line for line in bad.stderr.splitlines() if line.startswith("studios-gateway: ")]
    assert [line.split("=", 1)[0] for line in said] == [
        f"studios-gateway: {env_file}:1", f"studios-gateway: {env_file}:3",
        "studios-gateway: CONNECT_SSH_MAX_CONNECTIONS"], bad.stderr
    assert "hunter2-secret" not in bad.stdout + bad.stderr


def test_installed_wheel_registers_the_plugin(tmp_path) -> None:
    """Build a wheel, install it (not editable) on its own, and ask twistd --help. (Built
    from a copy of the sources: the other runner may build one at the same time.)"""
    repo = copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(repo)], check=True, timeout=300)
    (wheel,) = dist.glob("studios_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/studios_gateway_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    env = {"PATH": str(BIN), "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    out = subprocess.run([str(BIN / "twistd"), "--help"], env=env, capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "studios-gateway" in out.stdout
    help_out = subprocess.run([str(BIN / "twistd"), "studios-gateway", "--help"], env=env,
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "--ssh-max-connections" in help_out.stdout


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_body_without_the_key_is_refused_before_it_is_read(gateway: GatewayProcess) -> None:
    """A 64 MiB POST without the key: 401 as soon as the head ends; the body is never read."""
    size = 64 << 20
    before = _rss_kib(gateway.proc.pid)
    with socket.create_connection(("127.0.0.1", gateway.management_port), timeout=10) as sock:
        sock.sendall(b"POST /api/sessions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)  # times out (fails) if the gateway waits for the body
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        assert b"Bearer" in answer
        sent = 0
        chunk = b"x" * (1 << 20)
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the gateway closed the connection: what is wanted
    assert sent < size, "the gateway kept reading the body"
    assert _rss_kib(gateway.proc.pid) - before < 16 * 1024
    assert gateway.request("/ready", auth=False)[0] == 401
    assert gateway.request("/live", method="POST", auth=False)[0] in (200, 405)


def test_under_systemd_each_line_has_its_priority_and_no_time_of_its_own(
        tmp_path: Path) -> None:
    """JOURNAL_STREAM names standard output (journald's stream, here the log file: the same
    device and inode): each line begins with its priority (<4> for a warning), which
    journald takes off and files the line under (`journalctl -p warning`), and carries no
    time stamp beside the journal's own. systemd-run --user cannot run here (no systemd
    as PID 1): the stream is what the gateway sees of journald."""
    log = tmp_path / "gateway.log"
    log.write_bytes(b"")
    st = log.stat()  # GatewayProcess opens this very file ("wb": the same inode)
    env = base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY,
                   JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    gw = GatewayProcess(tmp_path, env, attempts=1)
    try:
        gw.wait_ready()
        assert gw.request("/ready", auth=False)[0] == 401  # a warning
    finally:
        gw.stop()
    assert gw.log_path == log
    lines = gw.output().splitlines()
    ours = [line for line in lines if "studios_gateway." in line]
    assert ours and all(line.startswith(("<6>[", "<4>[", "<7>[")) for line in ours), ours
    assert any(line.startswith("<4>[studios_gateway.management.endpoints.RefusalLog#warn] "
                               "management request refused") for line in ours), ours
    assert "<6>[studios_gateway.service.GatewayService#info] the HTTP proxy listening on " \
        "127.0.0.1:" in "\n".join(ours)
