"""The event monitor: fires due timers into the region through the enqueue procedure.

It LISTENs on the cross-region channel, sleeps until the earliest timer of its region
is due (or a timer is set or cancelled), claims the due timers with FOR UPDATE SKIP
LOCKED, and queues a request for each. Any number of monitors can run: each timer
fires once. With the timers in the region database, the claim, the enqueue and the
removal of the timer are one transaction. With the timers on another server the
enqueue commits first, carrying the firing's id as the request's idempotency key,
so a crash between the two commits neither loses nor doubles the request.

All its time arithmetic is on the clock of the database holding the timers
(``dispatcher_xr.clock()``): which timers are due, how long to sleep, a cron's next
slot (always strictly after the slot just fired), the lag. Its own clock is never
read for a time of day (only ``time.monotonic`` for intervals). It also forgets
firings older than the retention (7 days), a bounded batch every 10 minutes.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import psycopg

from . import cron
from .database import Backoff, connect_with_retry
from .errors import DatabaseUnavailable, DispatcherError
from .gateway import DueTimer, Gateway, ops
from .logs import get_logger

__all__ = ["Monitor", "firing_id"]

CRASH_HOOK = "DISPATCHER_MONITOR_CRASH_BETWEEN_COMMITS"
FIRING_RETENTION_S = 7 * 86400.0  # dispatcher_xr.firing keeps a firing this long
PURGE_EVERY_S = 600.0  # how often a monitor purges older firings
PURGE_BATCH = 10000  # at most this many rows per purge statement


def firing_id(timer_id: int, due_at: dt.datetime) -> str:
    """The id of one firing of one timer: the request's idempotency key."""
    return f"timer:{timer_id}:{due_at.astimezone(dt.UTC).isoformat()}"


class Monitor:
    def __init__(
        self,
        region_url: str,
        region: str,
        xr_url: str | None = None,
        batch: int = 200,
        max_sleep: float = 5.0,
        firing_retention_s: float = FIRING_RETENTION_S,
        purge_every_s: float = PURGE_EVERY_S,
    ) -> None:
        self.region_url = region_url
        self.xr_url = xr_url or region_url
        self.same_db = xr_url is None or xr_url == region_url
        self.region = region
        self.batch = batch
        self.max_sleep = max_sleep
        self.firing_retention_s = firing_retention_s
        self.purge_every_s = purge_every_s
        self._next_purge = 0.0  # time.monotonic() of the next purge: the first loop
        self.stopping = False
        self.fired = 0
        self.log = get_logger("monitor", region=region, pid=os.getpid())

    def stop(self) -> None:
        self.stopping = True

    def _connect(self, url: str, autocommit: bool) -> psycopg.Connection[Any]:
        conn = connect_with_retry(
            url,
            autocommit=autocommit,
            application_name="dispatcher-monitor",
            should_stop=lambda: self.stopping,
        )
        if conn is None:
            raise _Stopped
        return conn

    def run(self) -> None:
        """Fire timers until stop(); rides out database restarts."""
        backoff = Backoff()
        self.log.info("monitor_started", same_database=self.same_db)
        while not self.stopping:
            try:
                self._serve()
            except _Stopped:
                break
            except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                delay = backoff.next_delay()
                self.log.warning("database_unavailable", error=str(exc).strip(), retry_in_s=delay)
                time.sleep(delay)
        self.log.info("monitor_stopped", fired=self.fired)

    def _serve(self) -> None:
        with self._connect(self.xr_url, True) as listen, self._connect(self.xr_url, False) as xr:
            region_conn = None if self.same_db else self._connect(self.region_url, True)
            try:
                listen.execute("LISTEN dispatcher_timers")
                while not self.stopping:
                    if time.monotonic() >= self._next_purge:
                        self.purge_firings(xr)
                    n = self.fire_due(xr, region_conn)
                    if n >= self.batch:
                        continue
                    wait = self._next_due(xr)
                    for _ in listen.notifies(timeout=wait, stop_after=1):
                        pass
            finally:
                if region_conn is not None:
                    region_conn.close()

    def _next_due(self, xr: psycopg.Connection[Any]) -> float:
        in_s = Gateway(xr).run(ops.timer.next_due(self.region))
        xr.commit()
        if in_s is None:
            return self.max_sleep
        return max(0.0, min(self.max_sleep, in_s))

    def purge_firings(self, xr: psycopg.Connection[Any]) -> int:
        """Forget the region's firings older than the retention (database clock), at most
        PURGE_BATCH of them; the next purge is due at once if there may be more."""
        with xr.transaction():
            n = Gateway(xr).run(
                ops.timer.purge_firings(self.region, self.firing_retention_s, PURGE_BATCH)
            )
        more = n >= PURGE_BATCH
        self._next_purge = time.monotonic() + (0.0 if more else self.purge_every_s)
        if n:
            self.log.info("firings_purged", count=n, more=more)
        return n

    def fire_due(
        self, xr: psycopg.Connection[Any], region_conn: psycopg.Connection[Any] | None = None
    ) -> int:
        """Fire the due timers of the region (one batch); returns how many fired."""
        db = Gateway(xr)
        with xr.transaction():
            timers = db.run(ops.timer.claim_due_timers(self.region, self.batch))
            if not timers:
                return 0
            claimed = time.monotonic()
            fids = [firing_id(t.id, t.due_at) for t in timers]
            # same database: the whole batch in one enqueue call, in this transaction
            request_ids = self._enqueue_batch(xr, timers) if region_conn is None else None
            if request_ids is None:
                request_ids = []
                for t, fid in zip(timers, fids, strict=True):
                    request_ids.append(self._enqueue(region_conn or xr, t, fid))
                    if region_conn is not None and os.environ.get(CRASH_HOOK):
                        os._exit(9)  # tests: die between the region commit and ours
            db.run(
                ops.timer.record_firings(
                    self.region,
                    fids,
                    [t.reqid for t in timers],
                    [t.due_at for t in timers],
                    request_ids,
                )
            )
            db.run(ops.timer.timers_fired_once([t.id for t in timers if not t.cron]))
            for t in timers:
                if t.cron:
                    # the first slot after now on the database clock, and always after
                    # the slot that fired, so that a slot fires once
                    nxt = cron.next_after(t.cron, max(t.now, t.due_at), t.tz)
                    db.run(ops.timer.timer_fired_schedule(t.id, nxt))
        queued_ms = (time.monotonic() - claimed) * 1000
        lags = sorted(t.lag_ms + queued_ms for t in timers)
        self.log.info(
            "timers_fired",
            count=len(timers),
            lag_ms_p50=round(lags[len(lags) // 2], 1),
            lag_ms_max=round(lags[-1], 1),
        )
        self.fired += len(timers)
        return len(timers)

    def _enqueue_batch(
        self, xr: psycopg.Connection[Any], timers: list[DueTimer]
    ) -> list[int | None] | None:
        """One enqueue_many call for the batch (in a savepoint); None if a bad timer
        spoiled it, so that the caller fires them one by one."""
        try:
            with xr.transaction():
                out = Gateway(xr).run(
                    ops.request.enqueue_many(
                        self.region,
                        [(t.transid, t.payload) for t in timers],
                        user_priorities=[t.priority for t in timers],
                        origin="timer",
                    )
                )
        except DispatcherError:
            return None
        for t, e in zip(timers, out, strict=True):
            self.log.debug("timer_fired", reqid=t.reqid, transid=t.transid, request_id=e.request_id)
        return [e.request_id for e in out]

    def _enqueue(self, conn: psycopg.Connection[Any], t: DueTimer, fid: str) -> int | None:
        lag_ms = t.lag_ms  # at the claim, on the database clock
        op = ops.request.enqueue(
            self.region,
            t.transid,
            t.payload,
            user_priority=t.priority,
            idempotency_key=fid,
            origin="timer",
        )
        try:
            if conn.autocommit:
                e = Gateway(conn).run(op)
            else:
                with conn.transaction():  # a savepoint: a bad timer spoils only itself
                    e = Gateway(conn).run(op)
        except DispatcherError as exc:
            self.log.error("timer_failed", reqid=t.reqid, transid=t.transid, error=str(exc))
            return None
        self.log.info(
            "timer_fired",
            reqid=t.reqid,
            transid=t.transid,
            request_id=e.request_id,
            lag_ms=round(lag_ms, 1),
            duplicate=e.duplicate,
        )
        return e.request_id


class _Stopped(Exception):
    pass
