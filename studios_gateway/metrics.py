"""Prometheus metrics: one registry per gateway, process metrics, reactor tick time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from studios_gateway import reactor_loop
from studios_gateway.plain_metrics import PlainHistogram

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _ReactorTicks:
    """Reactor iterations and their times, counted in plain numbers (the reactor runs
    this thousands of times a second) and handed over as a histogram and a counter when
    the metrics are read."""

    def __init__(self, buckets: tuple[float, ...]):
        self.seconds = PlainHistogram(
            "studios_gateway_reactor_tick_seconds",
            "Time the reactor spent running callbacks in one loop iteration.", buckets)
        # The histogram's one series, counted in place (by the lean poll, or observe).
        self.counts = reactor_loop.TickCounts(self.seconds.bounds, self.seconds.series(()))
        self._created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts.observe(seconds)

    def _ticks(self) -> CounterMetricFamily:
        return CounterMetricFamily("studios_gateway_reactor_ticks", "Reactor loop iterations.")

    def describe(self) -> list[Metric]:
        return [*self.seconds.describe(), self._ticks()]

    def collect(self) -> Iterator[Metric]:
        self.seconds.sums[()] = self.counts.total
        yield from self.seconds.collect()
        ticks = self._ticks()
        ticks.add_metric([], self.seconds.count(()), created=self._created)
        yield ticks


class Metrics:
    """The gateway's metrics. Components add their own to `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.reactor_ticks = _ReactorTicks(_TICK_BUCKETS)
        self.registry.register(self.reactor_ticks)
        self.ready = Gauge("studios_gateway_ready", "1 when /ready answers 200.",
                           registry=self.registry)
        self.listeners = Gauge("studios_gateway_listeners", "Bound listeners.", ["listener"],
                               registry=self.registry)
        self.tls_handshakes = Counter(
            "studios_gateway_tls_handshakes", "TLS handshakes on the gateway's TLS ports by "
            "outcome: ok, timeout (reset at CONNECT_TLS_HANDSHAKE_TIMEOUT), full (closed at "
            "accept: CONNECT_TLS_MAX_HANDSHAKES in progress), failed, plain_http (a plain-HTTP "
            "request to the HTTPS port, answered with a redirect to https:// or 400).",
            ["listener", "outcome"], registry=self.registry)
        self.tls_accept_pauses = Counter(
            "studios_gateway_tls_accept_pauses", "Times a TLS port stopped accepting because "
            "CONNECT_TLS_MAX_HANDSHAKES handshakes were in progress (new connections wait in "
            "the listen queue meanwhile).", ["listener"], registry=self.registry)
        self._unwrap: Any = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def instrument_reactor(self, reactor: Any) -> None:
        """Time every reactor iteration's timed calls and callbacks.

        Socket events are handled inside doIteration; time from the end of
        the poll to the next poll is what we observe, so a wedged callback of
        either kind shows up as one long tick. The first tick runs from here.

        With the lean poll (reactor_loop.py) the poll times it itself (a hook, no
        wrapper); otherwise one wrapper, around doIteration (the reactor runs it twice
        per small request at one connection at a time).
        """
        if self._unwrap is not None or not hasattr(reactor, "doIteration"):
            return
        hooks = reactor_loop.hooks_of(reactor)
        if hooks is not None:
            hooks.started = time.perf_counter()
            hooks.ticks = self.reactor_ticks.counts

            def unhook() -> None:
                hooks.ticks = None

            self._unwrap = unhook
            return
        original_do = reactor.doIteration
        observe = self.reactor_ticks.observe
        clock = time.perf_counter
        started = [clock()]

        def do_iteration(delay: float | None) -> None:
            observe(clock() - started[0])
            original_do(delay)
            started[0] = clock()

        reactor.doIteration = do_iteration

        def unwrap() -> None:
            reactor.doIteration = original_do

        self._unwrap = unwrap

    def uninstrument_reactor(self) -> None:
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None
