"""Prometheus metrics of a region, served by the listener, the monitor and the SEP
supervisor with ``--metrics-port``.

Region-wide figures are read from the region database at each scrape, so every
process that serves metrics tells the same truth: queue depth by priority band,
running tasks, SEPs by state, oldest queued age, sessions, and requests finished by
transaction and outcome with a response-time histogram (over the history the region
keeps). A process may add a collector of its own (``extra``), e.g. the monitor's
timer lag.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .database import connect
from .eventloop import cannot_listen
from .gateway import Gateway, ops
from .logs import get_logger

__all__ = ["RESPONSE_BUCKETS", "RegionCollector", "serve_metrics"]

log = get_logger("dispatcher.metrics")

RESPONSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RegionCollector(Collector):
    """Reads a region's figures from its database at each scrape."""

    def __init__(self, url: str, region: str) -> None:
        self.url = url
        self.region = region
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _db(self) -> Gateway:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, application_name="dispatcher-metrics")
        return Gateway(self._conn)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                metrics = list(self._collect(self._db()))
            except Exception as exc:  # a scrape must not kill the process
                log.warning("metrics_unavailable", error=str(exc))
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                up = GaugeMetricFamily("dispatcher_database_up", "Region database reachable")
                up.add_metric([], 0)
                metrics = [up]
        yield from metrics

    def _collect(self, db: Gateway) -> Iterator[Metric]:
        g = db.run(ops.metrics.metrics_gauges(self.region))
        up = GaugeMetricFamily("dispatcher_database_up", "Region database reachable")
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "dispatcher_running_tasks", "Requests dispatched or running", value=g["running"]
        )
        yield GaugeMetricFamily(
            "dispatcher_max_seps", "The region's max SEPs", value=g["max_seps"] or 0
        )
        yield GaugeMetricFamily(
            "dispatcher_oldest_queued_seconds",
            "Age of the oldest queued request",
            value=float(g["oldest_queued_s"]),
        )
        yield GaugeMetricFamily("dispatcher_sessions", "Client sessions", value=g["sessions"])
        seps = GaugeMetricFamily("dispatcher_seps", "SEPs by state", labels=["state"])
        for state in ("idle", "busy", "unavailable", "draining", "dead"):
            seps.add_metric([state], g["seps"].get(state, 0))
        yield seps
        depth = GaugeMetricFamily(
            "dispatcher_queue_depth", "Queued requests by priority band", labels=["band"]
        )
        for band in ("0-63", "64-127", "128-191", "192-255"):
            depth.add_metric([band], g["queued_by_band"].get(band, 0))
        yield depth

        rows = db.run(ops.metrics.metrics_finished(self.region, RESPONSE_BUCKETS))
        finished = CounterMetricFamily(
            "dispatcher_requests_finished",
            "Requests finished, by transaction and outcome (over the history kept)",
            labels=["transid", "outcome"],
        )
        hist = HistogramMetricFamily(
            "dispatcher_response_seconds",
            "Queued to finished, by transaction (over the history kept)",
            labels=["transid"],
        )
        per_outcome: dict[tuple[str, str], int] = {}
        per_tx: dict[str, list[int]] = {}
        sums: dict[str, float] = {}
        for r in rows:
            key = (r["transid"], r["state"])
            per_outcome[key] = per_outcome.get(key, 0) + r["n"]
            counts = per_tx.setdefault(r["transid"], [0] * (len(RESPONSE_BUCKETS) + 1))
            counts[r["bucket"]] += r["n"]
            sums[r["transid"]] = sums.get(r["transid"], 0.0) + float(r["seconds"] or 0)
        for (transid, outcome), n in sorted(per_outcome.items()):
            finished.add_metric([transid, outcome], n)
        for transid, counts in sorted(per_tx.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(RESPONSE_BUCKETS, counts, strict=False):
                cumulative += n
                buckets.append((str(bound), float(cumulative)))
            buckets.append(("+Inf", float(sum(counts))))
            hist.add_metric([transid], buckets, sums[transid])
        yield finished
        yield hist
        yield from self._timers(db)

    def _timers(self, db: Gateway) -> Iterator[Metric]:
        """Timers pending and the last hour's fire lag (timers in the region database)."""
        try:
            with db.conn.transaction():
                row = db.run(ops.timer.timer_status(self.region))
        except psycopg.errors.UndefinedTable:
            return
        yield GaugeMetricFamily(
            "dispatcher_timers_pending", "Timers not fired yet", value=row["pending"]
        )
        lag = GaugeMetricFamily(
            "dispatcher_timer_lag_seconds", "Fire lag over the last hour", labels=["quantile"]
        )
        for q, v in zip(("0.5", "0.99"), row["lag_ms_p50_p99"] or [None, None], strict=True):
            lag.add_metric([q], 0.0 if v is None else float(v) / 1000)
        yield lag


def serve_metrics(
    port: int, url: str, region: str, extra: Collector | None = None, addr: str = "127.0.0.1"
) -> CollectorRegistry:
    """Serve the region's metrics (and ``extra``) on http://addr:port/metrics."""
    registry = CollectorRegistry()
    registry.register(RegionCollector(url, region))
    if extra is not None:
        registry.register(extra)
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise cannot_listen("the metrics", addr, port, exc) from None
    log.info("metrics_serving", address=f"http://{addr}:{port}/metrics")
    return registry
