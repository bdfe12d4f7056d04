"""Write packaging/grafana/studios-gateway.json, the Grafana dashboard over the gateway's
metrics (installed by the .deb in /usr/share/studios-gateway/grafana/).

    python packaging/grafana/make_dashboard.py           rewrite the JSON
    python packaging/grafana/make_dashboard.py --check   exit 1 when it is out of date

Every panel sums over the instances chosen in the `instance` variable; per-studio
figures are not metrics (see GET /api/sessions/{id}), so no panel has one series per
studio.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent / "studios-gateway.json"
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr,
            "legendFormat": legend, "refId": ref}


def panel(title: str, exprs: list[tuple[str, str]], x: int, y: int, *, w: int = 12,
          h: int = 8, unit: str = "short", kind: str = "timeseries",
          description: str = "", stack: bool = False) -> dict[str, Any]:
    custom: dict[str, Any] = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    p: dict[str, Any] = {
        "type": kind, "title": title, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in
                    enumerate(exprs)],
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = custom
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value",
                        "graphMode": "area"}
    return p


def dashboard() -> dict[str, Any]:
    stats = [
        ("Gateways ready", f"sum(studios_gateway_ready{{{SEL}}})", "none"),
        ("Tunnels", f"sum(studios_gateway_tunnels{{{SEL}}})", "none"),
        ("Active studios", f"sum(studios_gateway_studios_active{{{SEL}}})", "none"),
        ("Open WebSockets", f"sum(studios_gateway_websockets_open{{{SEL}}})", "none"),
        ("SSH sessions", f"sum(studios_gateway_ssh_sessions_open{{{SEL}}})", "none"),
        ("Requests/s", f"sum(rate(studios_gateway_http_requests_total{{{SEL}}}[{RATE}]))",
         "reqps"),
    ]
    panels = [panel(title, [(expr, title)], 4 * i, 0, w=4, h=4, unit=unit, kind="stat")
              for i, (title, expr, unit) in enumerate(stats)]
    y = 4
    rows: list[tuple[str, list[tuple[str, str]], str, str, bool]] = [
        ("HTTP requests by status class",
         [(f"sum by (code) (rate(studios_gateway_http_requests_total{{{SEL}}}[{RATE}]))",
           "{{code}}")], "reqps", "Answered requests per second (WebSockets not included).",
         True),
        ("HTTP requests by tool",
         [(f"sum by (tool) (rate(studios_gateway_http_requests_total{{{SEL}}}[{RATE}]))",
           "{{tool}}")], "reqps", "", True),
        ("HTTP request latency",
         [(f"histogram_quantile({q}, sum by (le) (rate("
           f"studios_gateway_http_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
           f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)], "s",
         "From a request's head to the end of its response.", False),
        ("Transfer by kind",
         [(f"sum by (kind, direction) (rate(studios_gateway_transfer_bytes_total{{{SEL}}}"
           f"[{RATE}]))", "{{kind}} {{direction}}")], "Bps",
         "Bytes per second from clients (in) and to clients (out).", False),
        ("Open connections",
         [(f"sum(studios_gateway_websockets_open{{{SEL}}})", "WebSockets"),
          (f"sum(studios_gateway_ssh_sessions_open{{{SEL}}})", "SSH sessions"),
          (f"sum(studios_gateway_ssh_channels_open{{{SEL}}})", "SSH channels"),
          (f"sum(studios_gateway_studios_active{{{SEL}}})", "active studios")], "none", "",
         False),
        ("Tunnels",
         [(f"sum(studios_gateway_tunnels{{{SEL}}})", "live"),
          (f"sum by (outcome) (increase(studios_gateway_tunnel_binds_total{{{SEL}}}[{RATE}]))",
           "bind {{outcome}}"),
          (f"sum by (reason) (increase(studios_gateway_tunnel_losses_total{{{SEL}}}[{RATE}]))",
           "ended {{reason}}")], "none",
         "Live tunnels; binds by outcome (refusals by reason) and tunnels ended.", False),
        ("Peer-link forwards",
         [(f"sum by (direction, outcome) (rate(studios_gateway_peer_streams_total{{{SEL}}}"
           f"[{RATE}]))", "{{direction}} {{outcome}}")], "ops",
         "Streams carried to and from other gateway nodes.", False),
        ("Logins",
         [(f"sum by (kind, outcome) (increase(studios_gateway_logins_total{{{SEL}}}"
           f"[{RATE}]))", "{{kind}} {{outcome}}")], "none", "", False),
        ("Quota refusals",
         [(f"sum by (kind, scope) (increase(studios_gateway_quota_refusals_total{{{SEL}}}"
           f"[{RATE}]))", "{{kind}} {{scope}}")], "none",
         "Requests refused (429) and connections stopped by a transfer quota.", False),
        ("Reactor tick (p99) and CPU",
         [(f"histogram_quantile(0.99, sum by (le, instance) (rate("
           f"studios_gateway_reactor_tick_seconds_bucket{{{SEL}}}[{RATE}])))",
           "tick p99 {{instance}}"),
          (f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "CPU {{instance}}")], "s",
         "Ticks over 100 ms mean the process is saturated.", False),
        ("TLS handshakes",
         [(f"sum by (listener, outcome) (increase(studios_gateway_tls_handshakes_total"
           f"{{{SEL}}}[{RATE}]))", "{{listener}} {{outcome}}")], "none",
         "timeout and full climbing fast: sockets that never speak TLS "
         "(CONNECT_TLS_HANDSHAKE_TIMEOUT, CONNECT_TLS_MAX_HANDSHAKES). http plain_http: "
         "plain-HTTP requests sent to the HTTPS port (answered with a redirect to https:// "
         "or 400).", False),
        ("Platform calls",
         [(f"sum by (call, outcome) (increase(studios_gateway_platform_calls_total"
           f"{{{SEL}}}[{RATE}]))", "{{call}} {{outcome}}")], "none",
         "Access and SSH-key calls to PLATFORM_URL; failed ones are denied for now (503).",
         False),
    ]
    for i, (title, exprs, unit, description, stack) in enumerate(rows):
        panels.append(panel(title, exprs, 12 * (i % 2), y + 8 * (i // 2), unit=unit,
                            description=description, stack=stack))
    for i, p in enumerate(panels, 1):
        p["id"] = i
    return {
        "title": "studios-gateway",
        "uid": "studios-gateway",
        "description": "Traffic, connections, tunnels and logins of studios-gateway nodes.",
        "tags": ["studios-gateway"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "instance", "label": "Node", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(studios_gateway_ready, instance)",
                       "refId": "instance"},
             "definition": "label_values(studios_gateway_ready, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}, "hide": 0},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python packaging/grafana/make_dashboard.py")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
