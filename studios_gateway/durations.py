"""Durations as operators write them: ``90s``, ``2m``, ``1h30m``, ``250ms``.

The syntax is Go's ``time.ParseDuration`` without signs or fractions of the
larger units (the seed's defaults come from a Go product: ``2m``, ``1m``), plus
a bare whole number meaning seconds.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")

#: The longest duration any setting takes: a year. Longer ones are typing mistakes (and
#: far beyond what a timer, a cookie's expiry or a date can hold: 10**400 seconds is not
#: a number at all).
MAX_SECONDS = 365 * 86400.0

#: What every error message says is expected.
EXPECTED = "a duration such as 90s, 2m, 1h or 1h30m (units ms, s, m, h, d; at most 365d)"


def parse_duration(text: str) -> float:
    """Return the duration in seconds, or raise ValueError saying what is expected."""
    s = text.strip().lower()
    if re.fullmatch(r"[0-9]+", s):
        s += "s"
    if not s or not _WHOLE.fullmatch(s):
        raise ValueError(EXPECTED)
    total = 0.0
    seen: set[str] = set()
    for number, unit in _PART.findall(s):
        if unit in seen or len(number) > 30:
            raise ValueError(EXPECTED)
        seen.add(unit)
        total += float(number) * _UNITS[unit]
    if not total <= MAX_SECONDS:
        raise ValueError(EXPECTED)
    return total


def format_duration(seconds: float) -> str:
    """The shortest canonical text for a duration: 90 -> '1m30s', 0.25 -> '250ms'."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def format_setting(seconds: float) -> str:
    """A duration as the settings table writes it: in one unit, the largest that is exact
    (75 -> '75s', 86400 -> '24h', 5400 -> '90m', 0.25 -> '250ms')."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
