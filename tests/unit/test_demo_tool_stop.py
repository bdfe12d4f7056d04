"""The demo tool's signal handling: one stop, however many signals."""

from __future__ import annotations

from twisted.internet.error import ReactorNotRunning

from studios_gateway.demo.tool import stop_once


class Loop:
    """As Twisted's reactor: running until its shutdown ends; stop() twice raises."""

    def __init__(self) -> None:
        self.running, self.stops = True, 0

    def stop(self) -> None:
        if self.stops:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stops += 1  # `running` stays True until the shutdown's "during" phase


def test_a_second_signal_during_the_shutdown_does_not_stop_it_again() -> None:
    loop = Loop()
    stop = stop_once(loop)
    stop()
    stop()  # raised ReactorNotRunning with Twisted's own handler (a traceback on the way out)
    assert loop.stops == 1
    loop.running = False
    stop()
    assert loop.stops == 1
