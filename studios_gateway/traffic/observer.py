"""The gateway's traffic observer: the one object the proxies report to.

* HTTP: :meth:`Traffic.http_done` with the facts of each finished request.
* WebSocket and SSH sessions: :meth:`Traffic.open` returns a :class:`Meter` the data
  path adds byte counts to (two integer additions per read); :meth:`Traffic.close`
  with the session's facts when it ends.

Every second (:meth:`Traffic.tick`) the byte counts of open meters are carried into
the metrics, the per-session figures and the quota, which may stop a meter's
connection (its `stop` callback, with the message the user should read).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from studios_gateway.traffic.access_log import AccessLog
from studios_gateway.traffic.facts import HTTP, SSH, WEBSOCKET, Finished, field_values
from studios_gateway.traffic.metrics import TrafficMetrics, status_class, tool_label
from studios_gateway.traffic.quota import Over, Quota
from studios_gateway.traffic.throttle import Throttles
from studios_gateway.traffic.usage import SessionFigures, Usage

__all__ = ["Meter", "Traffic"]

TICK = 1.0
_HTTP_IN, _HTTP_OUT = (HTTP, "in"), (HTTP, "out")
_LABELS_MAX = 4096
#: The request counter's labels, the latency histogram's, and that histogram's bucket counts.
_Series = tuple[tuple[str, str], tuple[str], list[int]]


class Meter:
    """Live byte counts of one long-lived connection."""

    __slots__ = ("bytes_in", "bytes_out", "kind", "session_id", "stop", "stopped", "subject",
                 "_carried_in", "_carried_out")

    def __init__(self, kind: str, session_id: str, subject: str,
                 stop: Callable[[str], Any]):
        self.kind = kind
        self.session_id = session_id
        self.subject = subject
        self.stop = stop
        self.stopped = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self._carried_in = 0
        self._carried_out = 0

    def inbound(self, n: int) -> None:
        self.bytes_in += n

    def outbound(self, n: int) -> None:
        self.bytes_out += n

    def take(self) -> tuple[int, int]:
        """Bytes each way since the last take."""
        d_in, d_out = self.bytes_in - self._carried_in, self.bytes_out - self._carried_out
        self._carried_in, self._carried_out = self.bytes_in, self.bytes_out
        return d_in, d_out


class Traffic:
    _log = Logger()

    def __init__(self, *, metrics: TrafficMetrics, access_log: AccessLog, clock: Any,
                 quota: Quota | None = None, usage: Usage | None = None,
                 throttles: Throttles | None = None):
        self.metrics = metrics
        self.access_log = access_log
        self.clock = clock
        self.quota = quota
        #: The per-session bandwidth cap, when one is set: the data paths ask it.
        self.throttles = throttles
        self.usage = usage or Usage()
        self.meters: set[Meter] = set()
        #: (status, tool) -> what http counts them under (_http_series)
        self._series: dict[tuple[int | None, str], _Series] = {}
        # The plain metrics' dicts http updates (made once with the metrics, never replaced).
        self._requests = metrics.requests.values
        self._bounds = metrics.latency.bounds
        self._sums = metrics.latency.sums
        self._transfer = metrics.bytes.values
        self._loop: LoopingCall | None = None

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.access_log.start(self.clock)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(TICK, now=False).addErrback(
            lambda f: self._log.failure("traffic tick failed", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for meter in list(self.meters):
            self._carry(meter)
        self.access_log.stop()

    # HTTP -----------------------------------------------------------------------------------

    def http_done(self, f: Finished) -> None:
        self.http(*field_values(f))

    def http(self, kind: str, started: float, duration: float, session_id: str, tool: str,
             subject: str, client: str, method: str, path: str, status: int | None,
             bytes_in: int, bytes_out: int, reason: str) -> None:
        """:meth:`http_done` with the fields of its :class:`Finished` given in their order
        (the HTTP proxy's per-request path: no object made, no attribute read)."""
        series = self._series.get((status, tool))
        if series is None:
            series = self._http_series(status, tool)
        # The plain metrics' numbers updated in place (their series exist: _http_series
        # and TrafficMetrics made them), as PlainCounter.add and PlainHistogram.observe do.
        requests_key, latency_key, counts = series
        self._requests[requests_key] += 1
        counts[bisect_left(self._bounds, duration)] += 1
        self._sums[latency_key] += duration
        transfer = self._transfer
        transfer[_HTTP_IN] += bytes_in
        transfer[_HTTP_OUT] += bytes_out
        if session_id:
            # Only a request that found its session (its tool is known then) gives a studio
            # figures of its own; one refused before that adds to figures that are there.
            # Every request to a made-up <id>.<domain> made an entry, kept until the table
            # was full (100 000), and those pushed out the figures of real studios.
            figures = (self.usage.of(session_id, started + duration) if tool  # (its end)
                       else self.usage.get(session_id))
            if figures is not None:
                figures.requests += 1
                figures.bytes_in += bytes_in
                figures.bytes_out += bytes_out
            if self.quota is not None:
                self.quota.add(session_id, subject, bytes_in + bytes_out)
        self.access_log.fields(kind, started, duration, session_id, tool, subject, client,
                               method, path, status, bytes_in, bytes_out, reason)

    def _http_series(self, status: int | None, tool: str) -> _Series:
        """The request counter's and the latency histogram's labels for a status and a
        tool, and the histogram's bucket counts, made if new and remembered (bounded:
        statuses and tools are few)."""
        label = tool_label(tool)
        requests_key, latency_key = (status_class(status), label), (label,)
        self.metrics.requests.add(requests_key, 0)
        series = (requests_key, latency_key, self.metrics.latency.series(latency_key))
        if len(self._series) < _LABELS_MAX:
            self._series[(status, tool)] = series
        return series

    # WebSockets and SSH sessions ------------------------------------------------------------

    def open(self, kind: str, session_id: str, subject: str,
             stop: Callable[[str], Any]) -> Meter:
        meter = Meter(kind, session_id, subject, stop)
        self.meters.add(meter)
        figures = self.usage.of(session_id, self.clock.seconds())
        if kind == WEBSOCKET:
            self.metrics.websockets.inc()
            self.metrics.websockets_open.inc()
            figures.websockets += 1
            figures.open_websockets += 1
        else:
            self.metrics.ssh_open.inc()
            figures.ssh_sessions += 1
            figures.open_ssh += 1
        self.metrics.studios_active.set(self.usage.active_studios())
        return meter

    def close(self, meter: Meter, f: Finished) -> None:
        """The connection of `meter` ended; `f` are its facts (bytes from the meter)."""
        if meter in self.meters:
            self.meters.discard(meter)
            self._carry(meter)
            figures = self.usage.get(meter.session_id)
            if meter.kind == WEBSOCKET:
                self.metrics.websockets_open.dec()
                if figures is not None:
                    figures.open_websockets -= 1
            else:
                self.metrics.ssh_open.dec()
                self.metrics.ssh_sessions.labels("ok").inc()
                if figures is not None:
                    figures.open_ssh -= 1
            self.metrics.studios_active.set(self.usage.active_studios())
        if meter.stopped and not f.reason:
            f = replace(f, reason=meter.stopped)
        self.access_log(replace(f, bytes_in=meter.bytes_in, bytes_out=meter.bytes_out))

    def carried(self, f: Finished) -> None:
        """A studio's tunnel carried in a WebSocket through the HTTP port ended (its bytes
        are the tunnel's, counted by the tunnel's own metrics): its access line."""
        self.access_log(f)

    def ssh_refused(self, f: Finished) -> None:
        """An SSH connection that never reached a studio (refused, or a bad key)."""
        self.metrics.ssh_sessions.labels("refused").inc()
        self.metrics.bytes.add((SSH, "in"), f.bytes_in)
        self.metrics.bytes.add((SSH, "out"), f.bytes_out)
        self.access_log(f)

    def quota_refused(self, over: Over) -> None:
        """An HTTP request was refused by a quota (429)."""
        self.metrics.quota_refusals.labels(HTTP, over.scope).inc()

    def ssh_channels(self, delta: int) -> None:
        """A user's SSH channel opened (+1) or closed (-1)."""
        self.metrics.ssh_channels_open.inc(delta)
        if delta > 0:
            self.metrics.ssh_channels.inc(delta)

    def describe(self, session_id: str) -> Deferred[dict[str, Any]]:
        """The session's figures for the admin API: this node's counts (requests, bytes
        moved, connections open now) and, with a session quota, its use on every node."""
        figures = self.usage.get(session_id)
        out: dict[str, Any] = {"node": self.access_log.node}
        out.update((figures or SessionFigures()).as_dict())
        if self.quota is None or self.quota.settings.session_bytes is None:
            return defer.succeed(out)

        def with_quota(quota: dict[str, Any]) -> dict[str, Any]:
            return {**out, "quota": quota}

        def without(f: Any) -> dict[str, Any]:
            return {**out, "quota": {"error": f.getErrorMessage()}}

        return self.quota.usage("session", session_id).addCallbacks(with_quota, without)

    def session_ended(self, session_id: str) -> None:
        self.usage.forget(session_id)

    # The tick ---------------------------------------------------------------------------------

    def tick(self) -> None:
        for meter in list(self.meters):
            self._carry(meter)
        if self.quota is not None:
            self.quota.flush().addErrback(lambda f: self._log.failure("quota flush", f))
            for meter in list(self.meters):
                if meter.stopped:
                    continue
                over = self.quota.over(meter.session_id, meter.subject)
                if over is not None:
                    meter.stopped = over.message
                    self.metrics.quota_refusals.labels(meter.kind, over.scope).inc()
                    meter.stop(over.message)

    def _carry(self, meter: Meter) -> None:
        d_in, d_out = meter.take()
        if not (d_in or d_out):
            return
        self.metrics.bytes.add((meter.kind, "in"), d_in)
        self.metrics.bytes.add((meter.kind, "out"), d_out)
        figures = self.usage.get(meter.session_id)
        if figures is not None:
            figures.bytes_in += d_in
            figures.bytes_out += d_out
            figures.last_active = self.clock.seconds()
        if self.quota is not None:
            self.quota.add(meter.session_id, meter.subject, d_in + d_out)
