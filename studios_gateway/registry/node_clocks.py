"""Whether another node's clock agrees with this one's, from its cluster settings record.

Login cookies carry the time they were issued, and every node refuses one issued more
than a minute in its future (auth.cookies.SKEW); OpenID tokens are checked against the
node's clock too. A node whose clock is off by more than that sets cookies the other
nodes ignore: the user is sent to log in again, or not, depending on which node
answers, and nothing said why. Each node writes its wall-clock time into its record
when it announces itself (:data:`CLOCK`), in the script that publishes ``node:<id>``;
a node that hears that event reads the record within moments, so the difference
between the two clocks is the record's time against its own, give or take the event's
way through Redis (milliseconds). Nothing else is needed: no Redis command beyond the
ones the nodes use already.
"""

from __future__ import annotations

__all__ = ["APART", "CLOCK", "apart", "clocks_apart_line"]

#: The record's field with the writer's wall-clock time (seconds, as text).
CLOCK = "time"

#: Clocks this far apart (seconds) are said: half of the minute cookies allow, so the
#: warning comes before the first login is refused.
APART = 30.0


def apart(now: float, record: dict[str, str]) -> float | None:
    """How far `record`'s writer's clock is behind this node's (negative: ahead), read
    just after it was written; None when the record says no time (an earlier release)."""
    try:
        return now - float(record[CLOCK])
    except (KeyError, ValueError):
        return None


def clocks_apart_line(node: str, other: str, behind: float) -> str:
    """The warning for another node whose clock is `behind` seconds behind this one's."""
    how = f"{abs(behind):.0f}s {'behind' if behind > 0 else 'ahead of'}"
    return (f"the clock of node {other} is {how} this node's ({node}): login cookies set "
            "through the node whose clock is ahead are refused by the others for that "
            "long past a minute (issued in the future), so users are asked to log in again "
            "depending on which node answers, and OpenID logins can fail ('issued in the "
            "future', 'expired'). Keep every node's clock synchronised (chrony, "
            "systemd-timesyncd: timedatectl says 'System clock synchronized: yes')")
