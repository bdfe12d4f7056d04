"""``build_traffic``: the access log, traffic metrics and per-session usage, built from the
config before the proxies that report to them."""

from __future__ import annotations

from typing import Any

from studios_gateway import logs
from studios_gateway.component import Component, Part
from studios_gateway.config import Config
from studios_gateway.metrics import Metrics
from studios_gateway.registry.base import TransferCounts
from studios_gateway.traffic.access_log import NAMESPACE, AccessLog
from studios_gateway.traffic.metrics import TrafficMetrics
from studios_gateway.traffic.observer import Traffic
from studios_gateway.traffic.quota import Quota, QuotaSettings
from studios_gateway.traffic.throttle import Throttles

__all__ = ["build_traffic"]


def build_traffic(config: Config, reactor: Any, metrics: Metrics, store: TransferCounts
                  ) -> tuple[Traffic, Part]:
    """The traffic observer (with the transfer quotas when any is set) and its Part (the
    once-a-second tick)."""
    if config.access_log != "off":
        logs.always(NAMESPACE)
    settings = QuotaSettings(window=config.quota_window, user_bytes=config.quota_user_bytes,
                             session_bytes=config.quota_session_bytes)
    quota = Quota(settings, store, reactor) if settings.enabled else None
    traffic = Traffic(metrics=TrafficMetrics(metrics.registry),
                      access_log=AccessLog(config.access_log, config.effective_node_id),
                      clock=reactor, quota=quota,
                      throttles=(Throttles(config.quota_session_bandwidth, reactor)
                                 if config.quota_session_bandwidth else None))
    part = Part()
    part.components.append(Component("traffic", start=traffic.start, stop=traffic.stop))
    return traffic, part
