"""A socket transport whose peer reads nothing, for unit tests with a fake reactor: what
is written stays buffered, so Twisted's loseConnection never completes, as with a real
peer that never reads; abortConnection ends it (and tells its protocol) at once."""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure


class StuckSocket(FileDescriptor):
    def __init__(self, reactor: Any = None, peer: str = "192.0.2.9"):
        # (its reactor only watches it: any timers are the test's clock's)
        super().__init__(reactor if reactor is not None else MemoryReactorClock())
        self.connected = 1
        self.protocol: Any = None
        self.aborted = False
        self._peer = IPv4Address("TCP", peer, 4321)

    def writeSomeData(self, data: bytes) -> int:
        return 0  # the peer's window is shut

    def abortConnection(self) -> None:
        if not self.disconnected:
            self.aborted = True
            self.connectionLost(Failure(ConnectionAborted()))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8080)

    def connect(self, protocol: Any) -> Any:
        """`protocol` made connected over this socket; returns it."""
        self.protocol = protocol
        protocol.makeConnection(self)
        return protocol

    def unsent(self) -> int:
        return len(self.dataBuffer) - self.offset + self._tempDataLen
