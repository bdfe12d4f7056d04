"""Start a real `twistd -n studios-gateway` process for integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.ports import IN_USE, START_ATTEMPTS, free_ports
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def twistd() -> str:
    return str(BIN / "twistd")


#: The port variables base_env picks, each with the form of its value.
PORT_VARIABLES = {"CONNECT_HTTP_PORT": "{}", "CONNECT_TUNNEL_PORT": "{}",
                  "CONNECT_LISTENER_PORT": "{}", "CONNECT_MANAGEMENT_PORT": "{}",
                  "CONNECT_SSH_ADDR": "127.0.0.1:{}"}


class GatewayEnv(dict[str, str]):
    """base_env's environment; `picked` is which of its ports base_env chose (variable:
    port), so that a start whose port was taken in the meantime can choose again. Once a
    gateway has come up on them they are the test's (a restart keeps them) and
    `picked` is empty."""

    picked: dict[str, int]


def base_env(tmp_path: Path, **overrides: str) -> GatewayEnv:
    """An environment with every listener on its own free 127.0.0.1 port.

    Read the ports from the environment (or GatewayProcess.env) after the gateway is
    ready, not before: if another process took one before the gateway bound it,
    GatewayProcess.wait_ready picks a new one and rewrites the environment in place."""
    env = GatewayEnv((k, v) for k, v in os.environ.items()
                     if not k.startswith(("CONNECT_", "TOWER_", "PLATFORM_", "LOCAL_CACHE")))
    storage = tmp_path / "storage"
    storage.mkdir(exist_ok=True)
    ports = dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES)), strict=True))
    env.update({variable: PORT_VARIABLES[variable].format(port)
                for variable, port in ports.items()})
    env.update({
        "CONNECT_BIND_ADDRESS": "127.0.0.1",
        "CONNECT_STORAGE_ROOT": str(storage),
        "CONNECT_LOG_LEVEL": "debug",
        # A small install's retry period (docs/operators.md): a restarted gateway's studios
        # are back within ~1 s, not 8. The default's is test_reconnect_storm's (bench.storm
        # sets none) and the unit tests'.
        "CONNECT_TUNNEL_RETRY_PERIOD": "1s",
        "PYTHONUNBUFFERED": "1",
        # Run the source tree under test, whatever copy is installed in the venv.
        "PYTHONPATH": str(REPO),
    })
    env.update(overrides)
    env.picked = {variable: port for variable, port in ports.items()
                  if env[variable] == PORT_VARIABLES[variable].format(port)}
    return env


def routing_env(tmp_path: Path, mode: str, **overrides: str) -> GatewayEnv:
    """base_env for a gateway in routing mode `mode` ("subdomain" or "path"), its proxy
    URL http://localhost:<its HTTP port> (studios at <id>.localhost in subdomain mode)."""
    env = base_env(tmp_path, TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(mode == "path").lower(),
                   **overrides)
    env["CONNECT_PROXY_URL"] = f"http://localhost:{env['CONNECT_HTTP_PORT']}"
    return env


#: The variable the gateway names when its port is in use: "cannot listen for the HTTP
#: proxy (CONNECT_HTTP_PORT) on 127.0.0.1:<port>: [Errno 98] Address already in use".
FAILED_VARIABLE = re.compile(r"cannot listen for [^\n(]*\((\w+)\)")


def move_port(env: dict[str, str], old: int, new: int) -> None:
    """Rewrite `old` to `new` in place wherever a value is that port or has it after a
    colon (127.0.0.1:<port>, http://localhost:<port>/...)."""
    pattern = re.compile(rf"(?<![^:]){old}(?!\d)")
    for key, value in env.items():
        env[key] = pattern.sub(str(new), value)


class GatewayProcess:
    """One gateway process; stopped by its pid when the test ends.

    A port base_env picked can be taken by another process before the gateway binds it;
    wait_ready then starts the gateway again on a newly picked port (up to `attempts`
    starts in all), rewriting `env` in place, and `retries` says what happened."""

    def __init__(self, tmp_path: Path, env: dict[str, str], args: list[str] | None = None,
                 name: str = "gateway", attempts: int = START_ATTEMPTS):
        self.env = env
        self.tmp_path = tmp_path
        self.name = name
        self.args = args or []
        self.attempts = attempts
        #: One line for each start that found a port taken: what it said, what was picked.
        self.retries: list[str] = []
        self._start()

    def _start(self) -> None:
        attempt = len(self.retries) + 1
        suffix = f"-attempt{attempt}" if attempt > 1 else ""
        self.log_path = self.tmp_path / f"{self.name}{suffix}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [twistd(), "-n", "--pidfile=", "studios-gateway", *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.tmp_path)
        self.management_port = int(self.env["CONNECT_MANAGEMENT_PORT"])
        self.auth_key = self.env.get("CONNECT_MANAGEMENT_AUTH_KEY")

    def _answering(self) -> bool:
        """This process bound its management port (its log says so: a connect alone
        could reach another process that holds the port) and answers HTTP there, which
        its reactor does only once every listener is bound."""
        if not re.search(rf"listening on \S+:{self.management_port}\b", self.output()):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.management_port), timeout=5) as s:
                s.sendall(b"GET /live HTTP/1.0\r\n\r\n")
                return s.recv(16).startswith(b"HTTP/")
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the management port answers (the process is up; parts may be starting).

        A start that fails because a port base_env picked is taken is retried on a new
        one; from here on the ports are the test's (a restart with this env keeps them)."""
        while True:
            try:
                wait_until(lambda: self.proc.poll() is not None or self._answering(),
                           f"the gateway answering on 127.0.0.1:{self.management_port} "
                           f"(log: {self.log_path})", timeout)
            except AssertionError:  # (a caller whose set-up fails here never stops it)
                self.stop()
                raise
            if self.proc.poll() is None:
                if isinstance(self.env, GatewayEnv):
                    self.env.picked = {}
                return
            self._start_on_new_ports()

    def _start_on_new_ports(self) -> None:
        """The process exited before it answered: if a port base_env picked was in use,
        start again on a new one; otherwise (or after the last attempt) say why."""
        out = self.output()
        self._log.close()
        attempt = len(self.retries) + 1
        exited = (f"the gateway exited with {self.proc.returncode} before it answered on "
                  f"127.0.0.1:{self.management_port} (start {attempt} of {self.attempts})")
        said = next((line for line in out.splitlines() if IN_USE.search(line)), None)
        if said is None:
            raise RuntimeError(f"{exited}:\n{out[-2000:]}")
        picked = self.env.picked if isinstance(self.env, GatewayEnv) else {}
        named = FAILED_VARIABLE.search(said)
        # (one the test set again after base_env is its own, as one given to base_env is)
        variables = [v for v in ([named.group(1)] if named else picked)
                     if v in picked and self.env.get(v) == PORT_VARIABLES[v].format(picked[v])]
        earlier = "".join(f"\n  {line}" for line in self.retries)
        if not variables:
            raise RuntimeError(f"{exited}: {said}\n(not a port base_env picked: the test's "
                               f"own, so not picked again){earlier}\n{out[-2000:]}")
        if attempt >= self.attempts:
            raise RuntimeError(f"{exited}: {said}\nports were taken at every start:"
                               f"{earlier}\n  start {attempt}: {said}\n{out[-2000:]}")
        moved = []
        for variable, port in zip(variables, free_ports(len(variables)), strict=True):
            move_port(self.env, picked[variable], port)
            moved.append(f"{variable} {picked[variable]} -> {port}")
            picked[variable] = port
        self.retries.append(f"start {attempt}: {said.strip()}; picked again: {', '.join(moved)}")
        self._start()

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
        if not self._log.closed:
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
