"""Log namespaces that stay when a class moves to another module.

A ``Logger`` class attribute names a class's lines ``<module>.<Class>`` after the
module the class is in now, and that name is in every text log line
(``[studios_gateway.wire.mux.Stream#info]``) and in operators' filters. A class moved
to another module keeps its lines' old name with a :class:`KeptNamespace`.
"""

from __future__ import annotations

from twisted.logger import ILogObserver, Logger

__all__ = ["KeptNamespace"]


class KeptNamespace(Logger):
    """A class attribute like ``Logger()`` (its source is the instance, or the class)
    whose namespace is ``<formerly>.<Class>``: `formerly` is the module the class was in.
    `observer` as Logger's (another Logger's, to keep its filter)."""

    def __init__(self, formerly: str, observer: ILogObserver | None = None):
        super().__init__(namespace=formerly, observer=observer)

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        assert owner is not None
        return Logger(f"{self.namespace}.{owner.__name__}",
                      owner if instance is None else instance, observer=self.observer)
