"""Prometheus counters and histograms kept in plain numbers, turned into metrics when read.

For what the data path counts on every request or reactor turn: a prometheus_client
``Counter`` or ``Histogram`` takes a lock per update and a ``labels()`` lookup (a
lock, a dict, a child object) per call. These keep a dict from label values to plain
numbers, updated with one dict operation, and make the metric families only when the
registry is collected (a scrape). They run in the reactor's thread only, as the
scrape does (the management port renders in the reactor).

The exposition is the same as prometheus_client's own counter and histogram:
``_total`` and ``_created`` for a counter; ``_bucket``, ``_count``, ``_sum`` and
``_created`` for a histogram.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["PlainCounter", "PlainHistogram"]

Labels = tuple[str, ...]


class _Family:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: Any):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._created: dict[Labels, float] = {}
        if registry is not None:
            registry.register(self)

    def _new(self, labels: Labels) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {labels} for {self.labelnames}")
        self._created[labels] = time.time()

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> Any:
        raise NotImplementedError


class PlainCounter(_Family):
    """A counter with labels: ``add(("2xx", "jupyterlab"), 1)``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: Any = None):
        super().__init__(name, documentation, labelnames, registry)
        self.values: dict[Labels, float] = {}

    def add(self, labels: Labels, amount: float = 1) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        else:
            self._new(labels)
            values[labels] = amount

    def value(self, labels: Labels = ()) -> float:
        return self.values.get(labels, 0)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, value in self.values.items():
            family.add_metric(labels, value, created=self._created[labels])
        yield family


class PlainHistogram(_Family):
    """A histogram with labels: ``observe(("jupyterlab",), 0.004)``."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 labelnames: Sequence[str] = (), registry: Any = None):
        super().__init__(name, documentation, labelnames, registry)
        self.bounds = tuple(sorted(buckets))
        #: Per label values: a count per bucket (the last: above every bound), and the sum.
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.series(labels)
        counts[bisect_left(self.bounds, value)] += 1
        self.sums[labels] += value

    def series(self, labels: Labels) -> list[int]:
        """The bucket counts of `labels`, made (all zero: shown from now on) if new."""
        counts = self.counts.get(labels)
        if counts is None:
            self._new(labels)
            counts = self.counts[labels] = [0] * (len(self.bounds) + 1)
            self.sums[labels] = 0.0
        return counts

    def count(self, labels: Labels = ()) -> int:
        return sum(self.counts.get(labels, ()))

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        les = [floatToGoString(b) for b in (*self.bounds, float("inf"))]
        for labels, counts in self.counts.items():
            family.add_metric(labels, list(zip(les, accumulate(counts), strict=True)),
                              sum_value=self.sums[labels])
            family.samples.append(Sample(f"{self.name}_created",
                                         dict(zip(self.labelnames, labels, strict=True)),
                                         self._created[labels]))
        yield family
