"""The tools a user would pick instead, each started by the bench on free 127.0.0.1 ports
with its own config, as the current user: Debian's nginx (as the tool and as a
proxy_pass reverse proxy), npm's configurable-http-proxy, and an OpenSSH
``ssh -R`` reverse tunnel through a private sshd.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Processes, free_port, port_open, wait_until
from bench.ssh import start_sshd
from tests.support.ports import free_ports

NGINX = "/usr/sbin/nginx"
REPO = Path(__file__).resolve().parents[1]
SMALL_BODY = b"x" * 512  # the small response: 512 bytes, like a small JSON answer


def _nginx_conf(d: Path, servers: str) -> str:
    user = "user root root;\n" if os.getuid() == 0 else ""  # workers must reach our files
    temps = "".join(f"{k}_temp_path {d / k};\n"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\ndaemon off;\npid {d / 'nginx.pid'};\n"
            f"error_log {d / 'error.log'} warn;\nevents {{ worker_connections 4096; }}\n"
            f"http {{\naccess_log off;\n{temps}sendfile on;\ntcp_nopush on;\n"
            f"keepalive_requests 1000000;\n{servers}}}\n")


def _start_nginx(procs: Processes, d: Path, name: str, servers: str) -> Any:
    if not os.path.exists(NGINX):
        raise SystemExit("bench: nginx not found (bench/setup installs it)")
    d.mkdir(parents=True, exist_ok=True)
    (d / "nginx.conf").write_text(_nginx_conf(d, servers))
    return procs.start(name, [NGINX, "-e", str(d / "error.log"), "-p", str(d), "-c",
                       str(d / "nginx.conf")])


@dataclass
class NginxTool:
    """nginx as the studio's tool: /small (512 bytes), /download (a sparse file of
    `size` bytes, sent with sendfile), /upload/<name> (WebDAV PUT, read to the end)."""

    port: int
    dir: Path
    proc: Any

    def clear_uploads(self) -> None:
        for f in (self.dir / "put").glob("*"):
            f.unlink()


def start_nginx_tool(procs: Processes, work: Path, size: int,
                     keepalive_requests: int | None = None) -> NginxTool:
    """``keepalive_requests``: nginx closes a connection after that many answers."""
    d = work / "nginx-tool"
    (d / "www").mkdir(parents=True)
    (d / "put").mkdir()
    (d / "www" / "small").write_bytes(SMALL_BODY)
    with open(d / "www" / "download", "wb") as fh:
        fh.truncate(size)
    port = free_port()
    keepalive = (f"  keepalive_requests {keepalive_requests};\n"
                 if keepalive_requests is not None else "")
    servers = (f"server {{ listen 127.0.0.1:{port}; root {d / 'www'};\n"
               f"  client_max_body_size 0;\n{keepalive}"
               f"  location /upload/ {{ alias {d / 'put'}/; dav_methods PUT; }}\n"
               "  location = / { return 200 'tool'; }\n}\n")
    proc = _start_nginx(procs, d, "nginx-tool", servers)
    wait_until(lambda: port_open(port), "nginx (tool)", proc=proc)
    return NginxTool(port, d, proc)


def start_nginx_proxy(procs: Processes, work: Path, tool_port: int, ws_port: int,
                      name: str = "nginx-proxy") -> int:
    """nginx proxy_pass in front of the tool (keep-alive upstream, no buffering) and of
    the WebSocket echo at /ws."""
    d = work / name
    port = free_port()
    servers = (
        f"upstream tool {{ server 127.0.0.1:{tool_port}; keepalive 64; }}\n"
        f"upstream ws {{ server 127.0.0.1:{ws_port}; }}\n"
        "map $http_upgrade $connection_upgrade { default upgrade; '' ''; }\n"
        f"server {{ listen 127.0.0.1:{port};\n"
        "  client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;\n"
        "  proxy_http_version 1.1; proxy_set_header Host $host;\n"
        "  location / { proxy_pass http://tool; proxy_set_header Connection ''; }\n"
        "  location /ws { proxy_pass http://ws; proxy_set_header Upgrade $http_upgrade;\n"
        "    proxy_set_header Connection $connection_upgrade; proxy_read_timeout 1h; }\n}\n")
    _start_nginx(procs, d, name, servers)
    wait_until(lambda: port_open(port), "nginx (proxy)")
    return port


def chp_binary() -> str | None:
    local = REPO / "bench" / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"
    if local.exists():
        return str(local)
    return shutil.which("configurable-http-proxy")


def chp_version() -> str | None:
    exe = chp_binary()
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or None


def start_chp(procs: Processes, tool_port: int, ws_port: int) -> int | None:
    """configurable-http-proxy to the tool, /ws to the WebSocket echo; None if absent."""
    exe = chp_binary()
    if exe is None:
        return None
    port, api = free_ports(2)
    token = "bench-chp-token"
    proc = procs.start("chp", [exe, "--ip", "127.0.0.1", "--port", str(port), "--api-ip",
                               "127.0.0.1", "--api-port", str(api), "--default-target",
                               f"http://127.0.0.1:{tool_port}", "--log-level", "warn"],
                       env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token})
    wait_until(lambda: port_open(port) and port_open(api), "configurable-http-proxy",
               proc=proc)
    req = urllib.request.Request(
        f"http://127.0.0.1:{api}/api/routes/ws", method="POST",
        data=json.dumps({"target": f"http://127.0.0.1:{ws_port}"}).encode(),
        headers={"Authorization": f"token {token}"})
    urllib.request.urlopen(req, timeout=10).close()
    return port


#: Debian's name for stunnel 5
STUNNEL_EXE = "stunnel4"


def stunnel_version() -> str | None:
    exe = shutil.which(STUNNEL_EXE)
    if exe is None:
        return None
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    first = (out.stderr or out.stdout).strip().splitlines()
    return next((line for line in first if line.startswith("stunnel ")), None)


def start_stunnel(procs: Processes, work: Path, ports: dict[str, int]) -> dict[str, int] | None:
    """The tunnel's architecture with nothing else in it, in C: a "near" stunnel takes
    plain TCP and carries it over TLS to a "far" stunnel, which passes it on to the tool
    (a TLS 1.3 hop and one more process each way beside a plain proxy's path; no HTTP,
    no login, no multiplexing). The near side pins the far side's self-signed P-256
    certificate, as the connect client pins the gateway's. One service per ``ports`` entry (label:
    the port to reach); returns the near side's port per label, or None when stunnel is
    not installed (bench/setup installs it)."""
    exe = shutil.which(STUNNEL_EXE)
    if exe is None:
        return None
    from studios_gateway.wire import tls

    d = work / "stunnel"
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    cert_pem, key_pem = tls.make_self_signed(["127.0.0.1"])
    cert.write_bytes(cert_pem)
    with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(key_pem)
    # (debug = info: each side logs the TLS version and suite it negotiated, once per
    # connection)
    common = ("foreground = yes\npid =\ndebug = info\nsocket = l:TCP_NODELAY=1\n"
              "socket = r:TCP_NODELAY=1\nsslVersionMin = TLSv1.3\n")
    near = common + f"output = {d / 'near.log'}\n"
    far = common + f"output = {d / 'far.log'}\n"
    # (all held until all are chosen: separate free_port() calls can give one port twice)
    chosen = iter(free_ports(2 * len(ports)))
    fronts, backs = {}, []
    for label, port in ports.items():
        fronts[label], back = next(chosen), next(chosen)
        backs.append(back)
        far += (f"[{label}]\naccept = 127.0.0.1:{back}\nconnect = 127.0.0.1:{port}\n"
                f"cert = {cert}\nkey = {key}\n")
        near += (f"[{label}]\nclient = yes\naccept = 127.0.0.1:{fronts[label]}\n"
                 f"connect = 127.0.0.1:{back}\nCAfile = {cert}\nverifyPeer = yes\n")
    (d / "far.conf").write_text(far)
    (d / "near.conf").write_text(near)
    procs.start("stunnel-far", [exe, str(d / "far.conf")])
    procs.start("stunnel-near", [exe, str(d / "near.conf")])
    wait_until(lambda: all(port_open(p) for p in [*fronts.values(), *backs]), "stunnel")
    return fronts


def start_ssh_reverse(procs: Processes, work: Path, tool_port: int) -> int:
    """sshd on a free port plus `ssh -N -R` from "inside the studio": users connect to
    the port sshd opens, the bytes travel the SSH connection to the tool. Returns it."""
    d = work / "ssh-reverse"
    d.mkdir()
    key = d / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshd_port = start_sshd(procs, d, key.with_suffix(".pub").read_text().strip())
    port = free_port()
    me = pwd.getpwuid(os.getuid()).pw_name
    proc = procs.start("ssh-R", [
        "ssh", "-N", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
        f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "IdentitiesOnly=yes", "-o",
        "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-i", str(key), "-p",
        str(sshd_port), "-R", f"127.0.0.1:{port}:127.0.0.1:{tool_port}", f"{me}@127.0.0.1"])
    wait_until(lambda: port_open(port), "ssh -R forward", proc=proc)
    return port
