"""Reactor tick counting: what the scrape shows after some iterations."""

from __future__ import annotations

from studios_gateway.metrics import Metrics


def sample(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def test_ticks_become_a_histogram_and_a_counter_when_read() -> None:
    m = Metrics()
    for seconds in (0.0001, 0.0005, 0.002, 7.0):
        m.reactor_ticks.observe(seconds)
    text = m.render().decode()
    assert sample(text, 'studios_gateway_reactor_tick_seconds_bucket{le="0.0005"}') == 2
    assert sample(text, 'studios_gateway_reactor_tick_seconds_bucket{le="0.0025"}') == 3
    assert sample(text, 'studios_gateway_reactor_tick_seconds_bucket{le="5.0"}') == 3
    assert sample(text, 'studios_gateway_reactor_tick_seconds_bucket{le="+Inf"}') == 4
    assert sample(text, "studios_gateway_reactor_tick_seconds_count") == 4
    assert abs(sample(text, "studios_gateway_reactor_tick_seconds_sum") - 7.0026) < 1e-9
    assert sample(text, "studios_gateway_reactor_ticks_total") == 4


def test_an_instrumented_reactor_counts_its_iterations() -> None:
    class Reactor:
        def runUntilCurrent(self) -> None:
            pass

        def doIteration(self, delay: float | None) -> None:
            pass

    r, m = Reactor(), Metrics()
    m.instrument_reactor(r)
    for _ in range(3):
        r.runUntilCurrent()
        r.doIteration(0)
    assert sample(m.render().decode(), "studios_gateway_reactor_ticks_total") == 3
