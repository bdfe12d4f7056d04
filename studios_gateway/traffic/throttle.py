"""The per-session bandwidth cap (CONNECT_QUOTA_SESSION_BANDWIDTH): a token bucket per
session on this node, shared by its HTTP requests, WebSockets and SSH channels.

The data paths ask :meth:`Throttles.delay` after each read; a positive answer is how long
to stop reading from that side (flow control then slows the sender: the browser, the
studio through the tunnel, the SSH client) so that the session averages the rate.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Throttles"]


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class Throttles:
    def __init__(self, rate: int, clock: Any, burst_seconds: float = 0.25):
        self.rate = float(rate)
        self.burst = self.rate * burst_seconds
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def delay(self, session_id: str, n: int) -> float:
        """Count `n` bytes of the session; seconds to wait before reading more."""
        now = self.clock.seconds()
        b = self._buckets.get(session_id)
        if b is None:
            b = self._buckets[session_id] = _Bucket(self.burst, now)
            if len(self._buckets) > 10_000:
                self._forget_idle(now)
        b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate) - n
        b.stamp = now
        return 0.0 if b.tokens >= 0 else -b.tokens / self.rate

    def _forget_idle(self, now: float) -> None:
        """Buckets that are full again hold nothing worth keeping."""
        for sid in [s for s, b in self._buckets.items()
                    if b.tokens + (now - b.stamp) * self.rate >= self.burst]:
            del self._buckets[sid]
