"""A rolling restart of two real gateway nodes behind a real load balancer (docs/cluster.md,
"A rolling restart behind a load balancer"), done as the recipe says, once behind nginx
(passive checks) and once behind HAProxy (an active check of each node's /ready).

Two twistd nodes share one redis-server; the load balancer (its own config file, free
ports on 127.0.0.1, a child process stopped by its pid) spreads requests over their
HTTP ports with the recipe's settings and passes WebSocket upgrades. A studio (demo
tool, path mode) lists both tunnel ports. While a thread sends requests through the
load balancer (GET and POST in turn) and a WebSocket echo through it is opened again
whenever it closes, node A is restarted (SIGTERM, wait for its exit, start, `/ready`,
the recipe's wait), then node B. No request may be answered with a 5xx; the WebSocket
is closed with 1012 and opened again; the studio moves to the node that stays and back,
and both nodes' admin API say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.test_tunnel_process import KEY
from tests.support.gateway import GatewayProcess, base_env
from tests.support.ports import free_port, wait_for_port
from tests.support.redis_server import RedisServer, redis_available
from tests.support.studio import Connect, Tool
from tests.support.waiting import wait_until
from tests.support.web import Browser
from tests.support.websocket import WebSocket

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")]

SECRET = "rolling-restart-peer-secret"
#: The recipe's nginx `fail_timeout`.
FAIL_TIMEOUT = 2.0
#: The recipe's HAProxy check of /ready: every INTER seconds; RISE answers of 200 in a
#: row mark a node up, FALL failed checks mark it down.
INTER, RISE, FALL = 1.0, 2, 2


def nginx_conf(tmp: Path, port: int, upstreams: list[str]) -> Path:
    servers = "".join(f"    server 127.0.0.1:{p} fail_timeout={FAIL_TIMEOUT:g}s;\n"
                      for p in upstreams)
    temp = " ".join(f"{k}_temp_path {tmp}/nx-{k};"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {tmp}/nginx-access.log;
  {temp}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream studios_gateway {{
{servers}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://studios_gateway;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 1h;
      proxy_next_upstream error timeout non_idempotent;
    }}
  }}
}}
""")
    return conf


def haproxy_conf(tmp: Path, port: int, nodes: list[tuple[str, str]], key: str = KEY) -> Path:
    """The recipe's HAProxy for the nodes' (HTTP port, management port), its check with
    the bearer `key`; its log (each request, and each node marked up or down) on its
    standard output."""
    servers = "".join(f"    server {chr(ord('a') + i)} 127.0.0.1:{http} check port {management}\n"
                      for i, (http, management) in enumerate(nodes))
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
    log stdout format raw local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    retries 3
    option redispatch
    retry-on conn-failure empty-response
    option http-buffer-request
frontend public
    bind 127.0.0.1:{port}
    default_backend studios_gateway
backend studios_gateway
    option httpchk
    http-check send meth GET uri /ready hdr Authorization "Bearer {key}"
    http-check expect status 200
    default-server inter {INTER:g}s fall {FALL} rise {RISE}
{servers}""")
    return conf


def nginx_command(tmp: Path, port: int, nodes: list[tuple[str, str]]) -> list[str]:
    return [NGINX, "-c", str(nginx_conf(tmp, port, [http for http, _ in nodes])),
            "-p", str(tmp)]


def haproxy_command(tmp: Path, port: int, nodes: list[tuple[str, str]]) -> list[str]:
    return [HAPROXY, "-db", "-f", str(haproxy_conf(tmp, port, nodes))]  # -db: foreground


@dataclass(frozen=True)
class Balancer:
    """A load balancer the test runs: its command for the nodes' (HTTP, management)
    ports, and how long after a node is ready again it may take to send to it (the
    recipe's step 3)."""

    name: str
    command: Callable[[Path, int, list[tuple[str, str]]], list[str]]
    back_within: float
    #: The file a failure shows the end of.
    log: str


BALANCERS = [
    pytest.param(Balancer("nginx", nginx_command, FAIL_TIMEOUT + 5, "nginx-error.log"),
                 id="nginx", marks=pytest.mark.skipif(not os.access(NGINX, os.X_OK),
                                                      reason="nginx is not installed")),
    pytest.param(Balancer("haproxy", haproxy_command, RISE * INTER + 5, "haproxy.out"),
                 id="haproxy", marks=pytest.mark.skipif(not os.access(HAPROXY, os.X_OK),
                                                        reason="haproxy is not installed")),
]
#: A request the load balancer sent to a node, in the node's access log.
ANSWERED = re.compile(r'"(GET \S+/api/info|POST \S+/upload)" 200 ')


def holder(node: GatewayProcess, sid: str) -> str | None:
    status, body, _ = node.request(f"/api/sessions/{sid}")
    assert status == 200, body
    return (json.loads(body).get("tunnel") or {}).get("node")


@pytest.mark.parametrize("balancer", BALANCERS)
def test_a_rolling_restart_behind_a_load_balancer_answers_no_5xx(
        tmp_path: Path, balancer: Balancer) -> None:
    stoppers: list = []
    stop = threading.Event()
    try:
        redis = RedisServer(tmp_path / "redis")
        redis.start()
        stoppers.append(redis.stop)
        lb_port = free_port()
        envs = {}
        nodes: dict[str, GatewayProcess] = {}
        for name in ("a", "b"):  # one after the other: the first makes the signing key
            (tmp_path / name).mkdir()
            env = base_env(tmp_path / name, CONNECT_MANAGEMENT_AUTH_KEY=KEY,
                           CONNECT_REDIS_ADDRESS=redis.address,
                           CONNECT_STORAGE_ROOT=str(tmp_path / "storage"),
                           CONNECT_NODE_ID=f"node-{name}", CONNECT_PEER_SECRET=SECRET,
                           TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING="true",
                           CONNECT_SHUTDOWN_GRACE="9s")  # > a rebind's 0-8 s
            env["CONNECT_PROXY_URL"] = f"http://localhost:{lb_port}"
            node = GatewayProcess(tmp_path / name, env, name=f"gateway-{name}")
            stoppers.append(lambda n=name: nodes[n].stop())
            node.wait_ready()
            nodes[name] = node
            envs[name] = env
        for node in nodes.values():
            wait_until(lambda n=node: n.request("/ready")[0] == 200, "/ready")

        command = balancer.command(tmp_path, lb_port,
                                   [(envs[n]["CONNECT_HTTP_PORT"],
                                     envs[n]["CONNECT_MANAGEMENT_PORT"]) for n in ("a", "b")])
        lb_log = open(tmp_path / f"{balancer.name}.out", "wb")  # noqa: SIM115 - closed below
        lb = subprocess.Popen(command, stdout=lb_log, stderr=subprocess.STDOUT)

        def stop_lb() -> None:
            if lb.poll() is None:
                lb.send_signal(signal.SIGTERM)  # (nginx's master stops its worker)
                lb.wait(timeout=15)
            lb_log.close()
        stoppers.append(stop_lb)
        wait_for_port(lb_port, proc=lb)

        status, body, _ = nodes["a"].request("/api/sessions", method="POST",
                                             body={"owner": "alice"})
        assert status == 201, body
        created = json.loads(body)
        sid = created["id"]
        pin = parse_qs(urlsplit(created["connect_string"]).query)["pin"][0]
        gateways = ",".join(f"tls://127.0.0.1:{envs[n]['CONNECT_TUNNEL_PORT']}?pin={pin}"
                            for n in ("a", "b"))
        tool = Tool(tmp_path, f"/_studio/{sid}/")
        stoppers.append(tool.stop)
        client = Connect(tmp_path, created["connect_string"], tool.port,
                         extra_env={"CONNECT_GATEWAY_URL": gateways})
        stoppers.append(client.stop)
        wait_until(lambda: holder(nodes["a"], sid) == "node-a", "the studio bound to A")

        browser = Browser(timeout=10)
        assert browser.use_login_link(created["login_link"]).status == 200
        base = f"http://localhost:{lb_port}/_studio/{sid}/"
        cookie = browser._cookie_header("localhost", f"/_studio/{sid}/")

        answers: list[tuple[float, str, int | str]] = []

        def requests() -> None:
            posting = False
            while not stop.is_set():
                method = "POST" if posting else "GET"
                request = urllib.request.Request(
                    base + ("upload" if posting else "api/info"), method=method,
                    data=b"x" * 1024 if posting else None, headers={"Cookie": cookie})
                try:
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        reply.read()
                        answers.append((time.monotonic(), method, reply.status))
                except urllib.error.HTTPError as e:
                    answers.append((time.monotonic(), method, e.code))
                except OSError as e:
                    answers.append((time.monotonic(), method, repr(e)))
                posting = not posting
                stop.wait(0.02)

        closes: list[tuple[int, str] | None] = []
        opened: list[float] = []

        def websockets() -> None:
            while not stop.is_set():
                try:
                    ws = WebSocket(lb_port, f"localhost:{lb_port}", f"/_studio/{sid}/ws",
                                   headers={"Cookie": cookie}, timeout=10)
                except (OSError, AssertionError) as e:
                    closes.append((0, f"not opened: {e!r}"))
                    stop.wait(0.5)
                    continue
                opened.append(time.monotonic())
                try:
                    while not stop.is_set():
                        ws.send_text("ping")
                        assert ws.recv_text() == "ping"
                        stop.wait(0.1)
                except ConnectionError as e:  # "WebSocket closed: <code> <reason>"
                    said = str(e).removeprefix("WebSocket closed: ")
                    code, _, reason = said.partition(" ")
                    closes.append((int(code) if code.isdigit() else -1, reason or said))
                except OSError as e:
                    closes.append((-1, repr(e)))
                ws.close()

        threads = [threading.Thread(target=f, daemon=True) for f in (requests, websockets)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answers) > 10 and opened,
                   f"requests and a WebSocket through {balancer.name}")

        for name, other in (("a", "b"), ("b", "a")):
            # `systemctl restart`: SIGTERM, the old process exits, a new one starts
            nodes[name].proc.send_signal(signal.SIGTERM)
            wait_until(lambda n=name: nodes[n].request("/ready")[0] == 503,
                       f"{name}'s /ready draining", timeout=5)
            wait_until(lambda o=other: holder(nodes[o], sid) == f"node-{o}",
                       f"the studio bound to {other}", timeout=15)
            assert nodes[name].proc.wait(timeout=15) == 0
            # Its drain ended with its work: a WebSocket relayed into its old tunnel through
            # the other node was closed there once the studio moved, not at the grace's end.
            assert "drain did not finish" not in nodes[name].output(), nodes[name].output()[-3000:]
            nodes[name].stop()
            nodes[name] = GatewayProcess(tmp_path / name, envs[name], name=f"gateway-{name}-2")
            nodes[name].wait_ready()
            wait_until(lambda n=name: nodes[n].request("/ready")[0] == 200,
                       f"{name}'s /ready again")
            # The recipe's step 3: the load balancer sends to the node again
            wait_until(lambda n=name: ANSWERED.search(nodes[n].output()),
                       f"{balancer.name} sending requests to {name} again",
                       timeout=balancer.back_within)
            assert holder(nodes[name], sid) == f"node-{other}"  # both nodes say the truth
        # The studio came back to A when B restarted; the last WebSocket is open there.
        wait_until(lambda: len(opened) >= 3, "the WebSocket opened again", timeout=15)
        # (a restart takes moments now: go on until both kinds were sent often enough)
        wait_until(lambda: min(sum(m == k for _, m, _ in list(answers))
                               for k in ("GET", "POST")) > 50, "50 GETs and 50 POSTs")
        stop.set()
        for thread in threads:
            thread.join(timeout=15)

        failed = [(round(t - answers[0][0], 2), method, s) for t, method, s in answers
                  if s != 200]
        assert not failed, (failed[:20], (tmp_path / balancer.log).read_text()[-3000:])
        assert sum(method == "POST" for _, method, _ in answers) > 50
        assert sum(method == "GET" for _, method, _ in answers) > 50
        restarts = [c for c in closes if c and c[0] == 1012]
        assert len(restarts) >= 2, closes  # one at each node's SIGTERM, at least
        assert all(c and c[0] == 1012 for c in closes), closes
        assert holder(nodes["a"], sid) == holder(nodes["b"], sid) == "node-a"
    finally:
        stop.set()
        for stopper in reversed(stoppers):
            stopper()
