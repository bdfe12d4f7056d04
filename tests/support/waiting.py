"""Waiting for something another process does: the one helper integration tests use.

It polls `condition` (a socket answering, a log line, a counter moving) until it
holds, and fails with what was awaited once `timeout` seconds have passed. It
waits for the event; it never stands in for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL = 0.05


def wait_until(condition: Callable[[], object], what: str, timeout: float = 15.0) -> float:
    """Seconds until `condition()` is true; AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        time.sleep(POLL)
    return time.monotonic() - start
