"""Live things (connections) kept by a handle of their own until they end: for the parts
that close them when access is taken back (the authorizer, the SSH key watch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["Tracked"]

T = TypeVar("T")


class Tracked(dict[int, T]):
    """Each thing added under a new handle; :meth:`add` returns what forgets it."""

    _last = 0

    def add(self, thing: T) -> Callable[[], None]:
        """Keep `thing`; returns the function to call when it ends (once or more)."""
        self._last += 1
        handle = self._last
        self[handle] = thing

        def forget() -> None:
            self.pop(handle, None)

        return forget
