"""How many hypothesis examples a property test runs: all of them in CI, fewer locally.

CI (``CI`` set, as ``.ci/run`` does) runs each property test with the count its
``@settings`` names. A developer's ``pytest -m "not slow"`` runs a fifth of a large
count (at least 100, never more than named), so the fast layer stays under a minute
on a slow 2-core machine; the twin tests' thousands of examples are CI's job.
"""

import os

FULL = bool(os.environ.get("CI"))


def examples(n: int) -> int:
    """``n`` in CI; locally a fifth of it, at least 100 (or ``n`` if that is fewer)."""
    if FULL:
        return n
    return min(n, max(n // 5, 100))
