"""Prometheus metrics agree with what the test ran."""

from __future__ import annotations

import urllib.request

from dispatcher.metrics import serve_metrics
from dispatcher.region import Region

from .listeners import free_port


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} in:\n{text}")


def test_metrics_report_requests_queue_and_seps(region: Region, db_url: str) -> None:
    """Counts by transaction/outcome, queue depth by band, SEPs by state, histogram."""
    region.define_transaction("ECHO", "app:echo", priority=10)
    region.define_transaction("HOT", "app:hot", priority=200)
    sep_id = int(region.register_sep("h", 1)["id"])
    for i in range(3):
        e = region.enqueue("ECHO", i)
        task = region.claim_next(sep_id) if e.sep_id is None else region.begin(sep_id, e.request_id)
        assert task is not None
        region.complete(sep_id, task, ok=i != 2, error=None if i != 2 else {"type": "E"})
    region.control_sep(sep_id, "pause")
    region.enqueue("HOT", None)
    region.enqueue("ECHO", None)
    port = free_port()
    serve_metrics(port, db_url, "test")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert _sample(text, 'dispatcher_requests_finished_total{outcome="done",transid="ECHO"}') == 2
    assert _sample(text, 'dispatcher_requests_finished_total{outcome="failed",transid="ECHO"}') == 1
    assert _sample(text, 'dispatcher_queue_depth{band="0-63"}') == 1
    assert _sample(text, 'dispatcher_queue_depth{band="192-255"}') == 1
    assert _sample(text, 'dispatcher_seps{state="unavailable"}') == 1
    assert _sample(text, 'dispatcher_response_seconds_count{transid="ECHO"}') == 3
    assert _sample(text, 'dispatcher_response_seconds_bucket{le="+Inf",transid="ECHO"}') == 3
    assert _sample(text, "dispatcher_database_up") == 1
    assert _sample(text, "dispatcher_timers_pending") == 0
