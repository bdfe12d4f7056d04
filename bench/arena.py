"""Everything the HTTP-level scenarios share, started once per invocation: the tools,
the gateway with two logged-in studios, and the baseline proxies in front of the
same tools.

* nginx as the tool (small responses, 1 GiB download, PUT upload): fast enough
  that the proxy in front of it is what gets measured;
* the repository's demo tool for WebSocket echo;
* the gateway: studio "tool" (nginx tool) and studio "ws" (demo tool), each with
  its own ``studios-connect`` process and a login cookie from its one-time link;
* nginx proxy_pass and configurable-http-proxy in front of the same two tools;
* (bulk only) an ``ssh -R`` reverse tunnel to the nginx tool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import baselines, deploy
from bench.common import Processes, Run


@dataclass
class Target:
    """One way to reach a tool: a base URL and the headers every request needs."""

    name: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}{path}"


@dataclass
class Arena:
    procs: Processes
    work: Path
    gateway: deploy.Gateway
    tool: baselines.NginxTool
    http: dict[str, Target]       # small responses and bulk, by path name
    ws: dict[str, Target]         # WebSocket echo, by path name
    notes: list[str]
    ssh_port: int | None = None
    #: The processes of a path besides the client, in path order, by path name.
    pids: dict[str, list[int]] = field(default_factory=dict)

    def ssh_reverse(self) -> Target:
        if self.ssh_port is None:
            self.ssh_port = baselines.start_ssh_reverse(self.procs, self.work, self.tool.port)
        return Target("ssh -R tunnel", self.ssh_port)


GATEWAY = "gateway (full path)"
DIRECT = "direct to the tool"
NGINX = "nginx proxy_pass"
CHP = "configurable-http-proxy"
#: The gateway's architecture in C and nothing else (baselines.start_stunnel): a TLS hop
#: and one more process each way, the reference for what that shape costs here.
STUNNEL = "stunnel pair (TLS tunnel, C)"


def start(run: Run) -> Arena:
    work = run.work / "arena"
    work.mkdir()
    procs = Processes(run.work)
    try:
        tool = baselines.start_nginx_tool(procs, work, run.bulk_mib << 20)
        ws_port, ws_tool = deploy.start_demo_tool(procs)
        gw = deploy.start_gateway(procs, work)
        studio = deploy.start_studio(procs, work, gw, tool.port, name="connect-tool")
        ws_studio = deploy.start_studio(procs, work, gw, ws_port, name="connect-ws")
        nginx_port = baselines.start_nginx_proxy(procs, work, tool.port, ws_port)
        chp_port = baselines.start_chp(procs, tool.port, ws_port)
        stunnel = (baselines.start_stunnel(procs, work, {"tool": tool.port, "ws": ws_port})
                   if run.profile is None else None)
        if run.profile is not None:
            run.profile(gw.pid, "gateway", True)
            run.profile(studio.connect.pid, "studios-connect (nginx tool)", True)
            run.profile(ws_studio.connect.pid, "studios-connect (demo tool)", True)
            run.profile(ws_tool.pid, "demo tool (WebSocket echo)", True)
            for worker in psutil.Process(tool.proc.pid).children():
                run.profile(worker.pid, "nginx tool (worker)", False)
    except BaseException:
        procs.stop_all()
        raise
    http = {GATEWAY: Target(GATEWAY, gw.http_port, studio.headers),
            DIRECT: Target(DIRECT, tool.port), NGINX: Target(NGINX, nginx_port)}
    ws = {GATEWAY: Target(GATEWAY, gw.http_port, ws_studio.headers),
          DIRECT: Target(DIRECT, ws_port), NGINX: Target(NGINX, nginx_port)}
    notes = []
    pids = {GATEWAY: [gw.pid, studio.connect.pid, tool.proc.pid], DIRECT: [tool.proc.pid],
            NGINX: [procs.by_name["nginx-proxy"].pid, tool.proc.pid]}
    if run.profile is not None:
        notes.append("profile mode: only the gateway path is measured.")
        return Arena(procs, work, gw, tool, {GATEWAY: http[GATEWAY]}, {GATEWAY: ws[GATEWAY]},
                     notes)
    if chp_port is None:
        notes.append("configurable-http-proxy is not installed (bench/setup installs it "
                     "with npm): its rows are skipped.")
    else:
        http[CHP] = Target(CHP, chp_port)
        ws[CHP] = Target(CHP, chp_port)
        pids[CHP] = [procs.by_name["chp"].pid, tool.proc.pid]
    if stunnel is None:
        notes.append("stunnel is not installed (bench/setup installs it): the stunnel "
                     "pair's rows are skipped.")
    else:
        http[STUNNEL] = Target(STUNNEL, stunnel["tool"])
        ws[STUNNEL] = Target(STUNNEL, stunnel["ws"])
        pids[STUNNEL] = [procs.by_name["stunnel-near"].pid, procs.by_name["stunnel-far"].pid,
                         tool.proc.pid]
    return Arena(procs, work, gw, tool, http, ws, notes, pids=pids)
