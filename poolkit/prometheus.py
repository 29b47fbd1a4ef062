"""Prometheus metrics of every live poolkit object, as a ``prometheus_client`` collector.

Register :class:`PoolkitCollector` once, and every pool, channel, limiter, token bucket,
``Limits`` and ``PerKey`` alive at scrape time is reported, whether it was made before or after::

    from prometheus_client import REGISTRY, start_http_server
    from poolkit.prometheus import PoolkitCollector

    REGISTRY.register(PoolkitCollector())
    start_http_server(9100)  # http://localhost:9100/metrics

Objects are reported while they are alive and vanish from the next scrape once they are garbage
collected; registering holds no reference to any of them.  The series (``poolkit_pool_queued``,
``poolkit_channel_buffered``, ``poolkit_limiter_borrowed_tokens``...) and their labels are
listed in the README.  An object is labelled with its name, or ``<kind>-<seq>`` when it has none,
so give long-lived objects a ``name=`` to keep their series stable across restarts.

This module needs the ``prometheus`` extra: ``pip install 'poolkit[prometheus]'``.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - prometheus_client is in the "test" extra
    raise ImportError(
        "poolkit.prometheus needs prometheus_client: pip install 'poolkit[prometheus]'"
    ) from exc

from ._observe import _metrics

__all__ = ["PoolkitCollector"]


def _convert(family: _metrics.Family) -> Metric:
    metric: GaugeMetricFamily | CounterMetricFamily
    if family.type == _metrics.COUNTER:
        metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
    names = family.labels
    for labels, value in family.samples:
        metric.add_metric([labels[name] for name in names], value)
    return metric


class PoolkitCollector(Collector):
    """A ``prometheus_client`` collector for every live poolkit object.

    ``REGISTRY.register(PoolkitCollector())`` adds poolkit's metrics to the default registry;
    any ``CollectorRegistry`` works the same.  Each scrape calls :meth:`collect`, which reads
    every live object's ``statistics()`` once.  It may run in any thread (as
    ``prometheus_client``'s HTTP server does); see :mod:`poolkit._observe._metrics` for how
    consistent a reading taken off the event loop is.

    :meth:`describe` returns the metric families without samples: the names are fixed, so a
    registry learns them (and refuses a second ``PoolkitCollector``, whose series would
    duplicate the first's) without reading any object at registration.
    """

    def collect(self) -> Iterator[Metric]:
        """One family per metric, with a sample for each live object it applies to."""
        for family in _metrics.collect():
            yield _convert(family)

    def describe(self) -> Iterator[Metric]:
        """The families :meth:`collect` yields, without samples."""
        for family in _metrics.describe():
            yield _convert(family)

    def __repr__(self) -> str:
        return "<PoolkitCollector>"
