"""Start a real `twistd -n studios-gateway` process for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.ports import free_ports, wait_for_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def twistd() -> str:
    return str(BIN / "twistd")


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """An environment with every listener on its own free 127.0.0.1 port."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONNECT_", "TOWER_", "PLATFORM_", "LOCAL_CACHE"))}
    storage = tmp_path / "storage"
    storage.mkdir(exist_ok=True)
    http, tunnel, listener, management, ssh = free_ports(5)
    env.update({
        "CONNECT_BIND_ADDRESS": "127.0.0.1",
        "CONNECT_HTTP_PORT": str(http),
        "CONNECT_TUNNEL_PORT": str(tunnel),
        "CONNECT_LISTENER_PORT": str(listener),
        "CONNECT_MANAGEMENT_PORT": str(management),
        "CONNECT_SSH_ADDR": f"127.0.0.1:{ssh}",
        "CONNECT_STORAGE_ROOT": str(storage),
        "CONNECT_LOG_LEVEL": "debug",
        "PYTHONUNBUFFERED": "1",
        # Run the source tree under test, whatever copy is installed in the venv.
        "PYTHONPATH": str(REPO),
    })
    env.update(overrides)
    return env


def routing_env(tmp_path: Path, mode: str, **overrides: str) -> dict[str, str]:
    """base_env for a gateway in routing mode `mode` ("subdomain" or "path"), its proxy
    URL http://localhost:<its HTTP port> (studios at <id>.localhost in subdomain mode)."""
    env = base_env(tmp_path, TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(mode == "path").lower(),
                   **overrides)
    env["CONNECT_PROXY_URL"] = f"http://localhost:{env['CONNECT_HTTP_PORT']}"
    return env


class GatewayProcess:
    """One gateway process; stopped by its pid when the test ends."""

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str] | None = None,
                 name: str = "gateway"):
        self.env = env
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [twistd(), "-n", "--pidfile=", "studios-gateway", *(args or [])]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=tmp_path)
        self.management_port = int(env["CONNECT_MANAGEMENT_PORT"])
        self.auth_key = env.get("CONNECT_MANAGEMENT_AUTH_KEY")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the management port accepts (the process is up; parts may be starting)."""
        wait_for_port(self.management_port, timeout=timeout, proc=self.proc)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until /ready says 200: listeners bound, store answering, login started."""
        self.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = self.request("/ready")
            if status == 200:
                return
            assert self.proc.poll() is None, f"the gateway exited:\n{self.output()[-2000:]}"
            assert time.monotonic() < deadline, (body, self.output()[-2000:])
            time.sleep(0.05)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.management_port}{path}"

    def request(self, path: str, method: str = "GET", auth: bool | str = True,
                body: Any = None) -> tuple[int, bytes, dict[str, str]]:
        headers = {}
        key = self.auth_key if auth is True else (auth or None)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url(path), method=method, headers=headers, data=data)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_twistd(tmp_path: Path, env: dict[str, str], args: list[str] | None = None,
               timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run twistd to completion (for starts that must fail)."""
    cmd = [twistd(), "-n", "--pidfile=", "studios-gateway", *(args or [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)
