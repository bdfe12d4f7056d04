"""Spent single-use ids and ended logins, in memory, until they would have expired anyway.

One node's view: :class:`~studios_gateway.registry.memory.MemoryStore` keeps its
login state in two of these (backed by journal files when one node runs alone),
and the authorizer mirrors the logouts it knows in one for its per-request check.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IReactorTime


class SpentSet:
    """Remembers spent single-use ids until `until` (seconds on `clock`).

    With a `journal` (anything with ``load(now) -> {key: until}``, ``append(key, until)``
    and ``close()``, e.g. :class:`~studios_gateway.auth.files.Journal`) what was spent
    survives a restart: a used login link stays used, a logout stays a logout."""

    def __init__(self, clock: IReactorTime, max_entries: int = 100_000, journal: Any = None):
        self._clock = clock
        self._max = max_entries
        self._items: OrderedDict[str, float] = OrderedDict()
        self._journal = journal
        if journal is not None:
            for key, until in sorted(journal.load(clock.seconds()).items(),
                                     key=lambda kv: kv[1]):
                self._items[key] = until

    def spend(self, key: str, until: float, saved: bool = True) -> bool:
        """Mark `key` spent until `until`; False if it was spent already. When its journal
        cannot take it, nothing is marked and the journal's error is raised (StorageError);
        with `saved` False the journal is not asked (it failed: kept until the process
        stops)."""
        now = self._clock.seconds()
        while self._items:  # oldest first; entries of one kind share a lifetime
            k, t = next(iter(self._items.items()))
            if t > now:
                break
            del self._items[k]
        if key in self._items and self._items[key] > now:
            return False
        self._items[key] = until
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        if self._journal is not None and saved:
            try:
                self._journal.append(key, until)
            except Exception:
                self._items.pop(key, None)
                raise
        return True

    def live(self) -> dict[str, float]:
        """Every id still spent, with the seconds it stays so."""
        now = self._clock.seconds()
        return {k: t - now for k, t in self._items.items() if t > now}

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def __contains__(self, key: object) -> bool:
        t = self._items.get(key)  # type: ignore[call-overload]
        return t is not None and t > self._clock.seconds()
