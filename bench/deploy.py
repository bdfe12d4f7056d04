"""The full path under test: a real gateway process, sessions made through its admin API,
a studio (`studios-connect` in front of a tool) and a logged-in user's cookie.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.baselines import NginxTool, start_nginx_tool
from bench.common import Processes, free_port, port_open, wait_until, work_dir
from bench.ssh import BIN, REPO
from tests.support.ports import free_ports

AUTH_KEY = "bench-management-key"
#: Extra twistd options for the gateways the harness starts (the cProfile fallback).
TWISTD_ARGS: list[str] = []
#: Extra environment for every gateway the harness starts (bench/run --gateway-env).
GATEWAY_ENV: dict[str, str] = {}


@dataclass
class Gateway:
    proc: Any
    http_port: int
    management_port: int
    tunnel_port: int

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def api(self, path: str, method: str = "GET", body: object = None,
            conn: http.client.HTTPConnection | None = None) -> Any:
        own = conn is None
        c = conn or http.client.HTTPConnection("127.0.0.1", self.management_port, timeout=30)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Authorization": f"Bearer {AUTH_KEY}",
                               "Content-Type": "application/json"})
            resp = c.getresponse()
            data = resp.read()
        finally:
            if own:
                c.close()
        if resp.status >= 300:
            raise RuntimeError(f"admin API {method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data) if data else None

    def ready(self) -> bool:
        """The gateway answers /ready with 200 (its registry reachable: with Redis, once
        connected); False while it does not, or cannot be reached yet."""
        try:
            self.api("/ready")
            return True
        except (RuntimeError, OSError, http.client.HTTPException, ValueError):
            return False

    def create_session(self, conn: http.client.HTTPConnection | None = None) -> dict[str, Any]:
        return self.api("/api/sessions", "POST", {"owner": "bench"}, conn=conn)

    def wait_connected(self, sid: str, timeout: float = 60.0) -> None:
        wait_until(lambda: self.api(f"/api/sessions/{sid}").get("connected") is True,
                   f"studio {sid} connected", timeout=timeout, proc=self.proc)

    def host(self, sid: str) -> str:
        return f"{sid}.localhost:{self.http_port}"


def start_redis(procs: Processes, work: Path) -> str:
    """A throwaway redis-server (no persistence) in ``work``; returns its address."""
    port = free_port()
    redis = procs.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                  "--save", "", "--appendonly", "no", "--dir", str(work)])
    wait_until(lambda: port_open(port), "redis-server", proc=redis)
    return f"127.0.0.1:{port}"


def gateway_env(work: Path, name: str = "gateway",
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a gateway on free ports, quiet logs, memory registry (unless
    `extra` says otherwise), its storage under ``work``."""
    storage = work / f"{name}-storage"
    storage.mkdir()
    names = ("http", "tunnel", "listener", "mgmt")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONNECT_", "TOWER_", "PLATFORM_", "LOCAL_CACHE"))}
    env.update(PYTHONPATH=str(REPO), CONNECT_BIND_ADDRESS="127.0.0.1",
               CONNECT_HTTP_PORT=str(ports["http"]), CONNECT_TUNNEL_PORT=str(ports["tunnel"]),
               CONNECT_LISTENER_PORT=str(ports["listener"]),
               CONNECT_MANAGEMENT_PORT=str(ports["mgmt"]),
               CONNECT_MANAGEMENT_AUTH_KEY=AUTH_KEY, CONNECT_STORAGE_ROOT=str(storage),
               CONNECT_PROXY_URL=f"http://localhost:{ports['http']}",
               CONNECT_LOG_LEVEL="warn",
               CONNECT_HTTP_MAX_CONNECTIONS="20000")
    env.update(GATEWAY_ENV)
    env.update(extra or {})
    return env


def _script(name: str, python: str | None) -> list[str]:
    """The venv's console script `name`, run by `python` (another interpreter with the
    same packages: bench.ab --python) or by its own."""
    return [python, str(BIN / name)] if python else [str(BIN / name)]


def launch_gateway(procs: Processes, work: Path, env: dict[str, str],
                   name: str = "gateway", python: str | None = None) -> Gateway:
    """`twistd -n studios-gateway` with ``env`` (again, for a restart on the same ports),
    once it answers /ready: its management port answers before its Redis connection is
    up, and a session created then is refused with 503."""
    proc = procs.start(name, [*_script("twistd", python), "-n", "--pidfile=", *TWISTD_ARGS,
                              "studios-gateway"],
                       env=env, cwd=work)
    gw = Gateway(proc, int(env["CONNECT_HTTP_PORT"]), int(env["CONNECT_MANAGEMENT_PORT"]),
                 int(env["CONNECT_TUNNEL_PORT"]))
    wait_until(gw.ready, f"{name} ready", proc=proc)
    return gw


def start_gateway(procs: Processes, work: Path, name: str = "gateway",
                  extra: dict[str, str] | None = None, python: str | None = None) -> Gateway:
    """`twistd -n studios-gateway` on free ports, quiet logs, memory registry."""
    return launch_gateway(procs, work, gateway_env(work, name, extra), name, python)


def start_connect(procs: Processes, work: Path, connect_string: str, tool_port: int,
                  name: str = "connect", tree: str | Path = REPO,
                  python: str | None = None) -> Any:
    """A ``studios-connect`` for `tool_port`, its code taken from `tree`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update(PYTHONPATH=str(tree), CONNECT_STRING=connect_string,
               CONNECT_TOOL_PORT=str(tool_port), CONNECT_CLIENT_LOG_LEVEL="warn")
    home = work / name
    home.mkdir(exist_ok=True)
    return procs.start(name, _script("studios-connect", python), env=env, cwd=home)


def start_demo_tool(procs: Processes, name: str = "demo-tool") -> tuple[int, Any]:
    """The repository's demo tool (Twisted web, WebSocket echo at /ws)."""
    port = free_port()
    proc = procs.start(name, [sys.executable, "-m", "studios_gateway.demo.tool", "--port",
                              str(port)], env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_until(lambda: port_open(port), name, proc=proc)
    return port, proc


def login_cookie(gateway: Gateway, link: str) -> str:
    """Use the one-time login link as a person would (page, then its POST button) and
    return the studio cookie(s) as a Cookie header value."""
    parts = urlsplit(link)
    target = f"{parts.path}?{parts.query}"
    jars: dict[str, dict[str, str]] = {}
    method, host = "GET", parts.netloc
    for _ in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=30)
        headers = {"Host": host}
        jar = jars.setdefault(host, {})
        if jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        for raw in resp.headers.get_all("Set-Cookie") or []:
            name, _, value = raw.split(";")[0].strip().partition("=")
            if value:
                jar[name] = value
        location = resp.headers.get("Location")
        if method == "GET" and target.startswith("/_connect/link"):
            method = "POST"  # the page's "Open studio" button
            continue
        if resp.status in (301, 302, 303, 307, 308) and location:
            loc = urlsplit(location)
            host = loc.netloc or host
            target = (loc.path or "/") + (f"?{loc.query}" if loc.query else "")
            method = "GET"
            continue
        if resp.status != 200:
            raise RuntimeError(f"login link ended at {resp.status} for {host}{target}")
        return "; ".join(f"{k}={v}" for k, v in jar.items())
    raise RuntimeError("login link: too many redirects")


@dataclass
class Studio:
    gateway: Gateway
    sid: str
    cookie: str
    connect: Any

    @property
    def headers(self) -> dict[str, str]:
        return {"Host": self.gateway.host(self.sid), "Cookie": self.cookie}

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}{path}"


def start_studio(procs: Processes, work: Path, gateway: Gateway, tool_port: int,
                 name: str = "connect", tree: str | Path = REPO,
                 python: str | None = None) -> Studio:
    """One session for `tool_port`, its connect client (run from `tree`) bound, a login
    cookie, and a first request answered 200."""
    created = gateway.create_session()
    client = start_connect(procs, work, created["connect_string"], tool_port, name=name,
                           tree=tree, python=python)
    gateway.wait_connected(created["id"])
    cookie = login_cookie(gateway, created["login_link"])
    studio = Studio(gateway, created["id"], cookie, client)
    _check_through(studio)
    return studio


@contextmanager
def small_path(tree: str | Path) -> Iterator[tuple[Path, NginxTool, Studio]]:
    """The nginx tool, and a gateway and a studios-connect both run from the source tree
    `tree` with a session for the tool bound, a login cookie and a first request answered
    200 (bench.timeline, bench.cpu_split): (work directory, tool, studio). Every process
    is stopped and the work directory removed on the way out."""
    work = work_dir()
    procs = Processes(work)
    try:
        tool = start_nginx_tool(procs, work, 1 << 20)
        gw = start_gateway(procs, work, extra={"PYTHONPATH": str(tree)})
        yield work, tool, start_studio(procs, work, gw, tool.port, tree=tree)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)  # (on /dev/shm: memory)


@contextmanager
def echo_path(tree: str | Path) -> Iterator[tuple[Path, int, Studio]]:
    """The demo tool (WebSocket echo at /ws), and a gateway and a studios-connect both run
    from `tree`, bound, logged in and answering (bench.timeline's WebSocket scenario):
    (work directory, the tool's port, studio). Stopped and removed on the way out."""
    work = work_dir()
    procs = Processes(work)
    try:
        port, _ = start_demo_tool(procs)
        gw = start_gateway(procs, work, extra={"PYTHONPATH": str(tree)})
        yield work, port, start_studio(procs, work, gw, port, tree=tree)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def _check_through(studio: Studio) -> None:
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", studio.gateway.http_port, timeout=10)
        conn.request("GET", "/", headers=studio.headers)
        status = conn.getresponse().status
        conn.close()
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"studio {studio.sid}: GET / through the gateway gave {status}")
        time.sleep(0.1)
