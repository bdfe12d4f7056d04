"""Pausing one transport for several reasons at once.

A client connection's reads are paused while its request is dispatched, while
the tool's side is full, and while too many pipelined bytes wait; Twisted's
pause/resume are not counted, so a :class:`Gate` pauses the transport when the
first reason appears and resumes it when the last one goes. :class:`GateProducer`
is the IPushProducer registered on the *other* transport: that transport's
back-pressure becomes one reason on this gate.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["Gate", "GateProducer"]


class Gate:
    def __init__(self, transport: Any):
        self._transport = transport
        #: The reasons it is paused for (read it; pause and resume change it).
        self.held: set[str] = set()

    @property
    def paused(self) -> bool:
        return bool(self.held)

    def reasons(self) -> frozenset[str]:
        return frozenset(self.held)

    def pause(self, reason: str) -> None:
        if not self.held:
            self._transport.pauseProducing()
        self.held.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self.held:
            return
        self.held.discard(reason)
        if not self.held:
            self._transport.resumeProducing()


@implementer(IPushProducer)
class GateProducer:
    """Registered as the streaming producer of a consumer transport: when that
    consumer's buffer is full, `reason` pauses the gate."""

    def __init__(self, gate: Gate, reason: str):
        self._gate = gate
        self._reason = reason

    def pauseProducing(self) -> None:
        self._gate.pause(self._reason)

    def resumeProducing(self) -> None:
        self._gate.resume(self._reason)

    def stopProducing(self) -> None:
        # The consumer went away; whoever owns the gate learns that from its own
        # connectionLost. Do not leave the gate paused for this reason.
        self._gate.resume(self._reason)


class Pacer:
    """Holds a gate paused (reason "bandwidth") for a while: a bandwidth cap's delay.
    A longer delay asked while paused extends the pause; a shorter one changes nothing."""

    REASON = "bandwidth"

    def __init__(self, gate: Gate, clock: Any):
        self._gate = gate
        self._clock = clock
        self._call: Any = None

    def hold(self, delay: float) -> None:
        if delay <= 0:
            return
        call = self._call
        if call is not None and call.active():
            if call.getTime() - self._clock.seconds() < delay:
                call.reset(delay)
            return
        self._gate.pause(self.REASON)
        self._call = self._clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._call = None
        self._gate.resume(self.REASON)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
