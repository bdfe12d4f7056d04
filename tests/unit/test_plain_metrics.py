"""Counters and histograms in plain numbers scrape exactly as prometheus_client's own."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from studios_gateway.plain_metrics import PlainCounter, PlainHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def scrape(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines, creation times left out (they differ by construction)."""
    text = generate_latest(registry).decode()
    return sorted(re.sub(r"(_created(\{[^}]*\})?) \S+$", r"\1 T", line)
                  for line in text.splitlines())


def test_the_same_updates_scrape_the_same() -> None:
    theirs, ours = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    counter = Counter("t_requests", "Requests.", ["code", "tool"], registry=theirs)
    histogram = Histogram("t_seconds", "Time.", ["tool"], buckets=BUCKETS, registry=theirs)
    plain_counter = PlainCounter("t_requests", "Requests.", ["code", "tool"], registry=ours)
    plain_histogram = PlainHistogram("t_seconds", "Time.", BUCKETS, ["tool"], registry=ours)
    for code, tool, seconds in [("2xx", "jupyterlab", 0.002), ("5xx", "jupyterlab", 0.5),
                                ("2xx", "rstudio", 3.0), ("2xx", "jupyterlab", 0.001)]:
        counter.labels(code, tool).inc()
        plain_counter.add((code, tool))
        histogram.labels(tool).observe(seconds)
        plain_histogram.observe((tool,), seconds)
    counter.labels("4xx", "other").inc(0)
    plain_counter.add(("4xx", "other"), 0)
    assert scrape(ours) == scrape(theirs)
    assert any(line.startswith('t_seconds_bucket{le="0.001",tool="jupyterlab"} 1')
               for line in scrape(ours))
    assert plain_counter.value(("2xx", "jupyterlab")) == 2
    assert plain_histogram.count(("jupyterlab",)) == 3


def test_label_values_must_match_the_names() -> None:
    counter = PlainCounter("t_bytes", "Bytes.", ["kind", "direction"])
    with pytest.raises(ValueError, match="labels"):
        counter.add(("http",), 1)
