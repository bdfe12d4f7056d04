"""Prometheus metrics of the traffic: requests, latency, bytes, open connections, logins,
quota refusals. Labels come from small fixed sets (status class, tool, kind, outcome):
per-studio figures are in the admin API (:mod:`studios_gateway.traffic.usage`), never
in labels."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from studios_gateway.plain_metrics import PlainCounter, PlainHistogram
from studios_gateway.wire.tools import TOOLS

__all__ = ["TrafficMetrics", "status_class", "tool_label"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


def status_class(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return "none"
    return _CLASSES[status // 100]


_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def tool_label(tool: str) -> str:
    """The tool as a label value: a known tool's name, "none" before it is known."""
    if not tool:
        return "none"
    return tool if tool in TOOLS else "other"


class TrafficMetrics:
    """Every traffic metric, registered in the gateway's registry."""

    def __init__(self, registry: Any):
        r = registry
        # Counted on every request: in plain numbers (studios_gateway.plain_metrics).
        self.requests = PlainCounter(
            "studios_gateway_http_requests", "HTTP requests answered, by status class and tool.",
            ["code", "tool"], registry=r)
        self.latency = PlainHistogram(
            "studios_gateway_http_request_duration_seconds",
            "Time from a request's head to the end of its response, by tool.",
            _LATENCY_BUCKETS, ["tool"], registry=r)
        self.bytes = PlainCounter(
            "studios_gateway_transfer_bytes",
            "Bytes from clients (in) and to clients (out), by kind (http, websocket, ssh).",
            ["kind", "direction"], registry=r)
        self.websockets_open = Gauge("studios_gateway_websockets_open",
                                     "WebSockets open through the HTTP proxy.", registry=r)
        self.websockets = Counter("studios_gateway_websockets", "WebSockets opened.",
                                  registry=r)
        self.ssh_open = Gauge("studios_gateway_ssh_sessions_open",
                              "SSH connections logged in to a studio.", registry=r)
        self.ssh_sessions = Counter(
            "studios_gateway_ssh_sessions", "SSH connections ended, by outcome (ok: it had "
            "logged in; refused).", ["outcome"], registry=r)
        self.ssh_channels_open = Gauge("studios_gateway_ssh_channels_open",
                                       "SSH channels open through the SSH proxy.", registry=r)
        self.ssh_channels = Counter("studios_gateway_ssh_channels",
                                    "SSH channels opened through the SSH proxy.", registry=r)
        self.logins = Counter(
            "studios_gateway_logins", "Logins by kind (oidc, link, handoff, ssh) and outcome "
            "(success, failure).", ["kind", "outcome"], registry=r)
        self.platform_calls = Counter(
            "studios_gateway_platform_calls", "Calls to the Platform by call (access, "
            "ssh_keys) and outcome (answered; failed: an error, no answer in time, or an "
            "answer that is not one).", ["call", "outcome"], registry=r)
        self.quota_refusals = Counter(
            "studios_gateway_quota_refusals",
            "Requests refused and connections stopped by a transfer quota, by kind and scope "
            "(user, session).", ["kind", "scope"], registry=r)
        self.studios_active = Gauge(
            "studios_gateway_studios_active",
            "Studios with at least one WebSocket or SSH connection open on this node.",
            registry=r)
        for kind in ("http", "websocket", "ssh"):  # the series exist from the start
            for direction in ("in", "out"):
                self.bytes.add((kind, direction), 0)
        for outcome in ("ok", "refused"):
            self.ssh_sessions.labels(outcome)
        for call in ("access", "ssh_keys"):
            for ok in (True, False):
                self.platform_calls.labels(call, "answered" if ok else "failed")

    def platform_call(self, call: str, ok: bool) -> None:
        self.platform_calls.labels(call, "answered" if ok else "failed").inc()

    def login(self, kind: str, ok: bool) -> None:
        self.logins.labels(kind, "success" if ok else "failure").inc()
