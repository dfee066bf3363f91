"""The read-only status page of a region (docs/operations.md): ``dispatcher web``, and
one more child of ``dispatcher up``.

An aiohttp application on the same stack as the HTTP front (listener/http.py), with
two routes:

- ``GET /``: one self-contained HTML document (inline CSS and JavaScript, nothing
  fetched from elsewhere) that asks ``api/status`` every 2 s and draws the region: a
  chart of the queue depth by priority band (inline SVG), SEPs, recent failures and
  timers. Every text that comes from the database is put in the page as text
  (``textContent``, ``append(string)``), never as HTML; the Content-Security-Policy
  lets only the page's own script run.
- ``GET /api/status``: the region as JSON (the fields: docs/operations.md, "The status page"), with
  ``series``: the queue depth by band sampled by this server every 2 s, kept in
  memory for 15 minutes (``?since=T``: only the samples after T). A lost database is
  ``503`` ``{"error": "database_unavailable", ...}`` (with the series kept so far);
  the pool reconnects by itself, and the page keeps asking.

It only reads: every query is an operation of the gateway (``ops.region``,
``ops.sep``, ``ops.metrics``, ``ops.timer`` and ``ops.status_page``). It has no
authentication: bind it to 127.0.0.1, or put it behind a proxy that has.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import hashlib
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psycopg
from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .errors import DatabaseUnavailable, DispatcherError, UnknownRegion
from .eventloop import bound_port, cannot_listen
from .gateway import AsyncGateway, answered_within, checked_within, ops
from .logs import get_logger
from .values import row_json_default

__all__ = [
    "BANDS",
    "DEFAULT_WEB_PORT",
    "PAGE",
    "SAMPLE_EVERY",
    "WINDOW_S",
    "Series",
    "StatusPage",
    "dumps",
]

DEFAULT_WEB_PORT = 7390
BANDS = ("0-63", "64-127", "128-191", "192-255")  # priority bands, as the metrics say
SAMPLE_EVERY = 2.0  # seconds between two samples of the queue depth
WINDOW_S = 900.0  # the samples kept (15 minutes), and the window of "finished" counts
FAILURES = 20  # recent failures shown
FAILURES_WITHIN_S = 86400.0  # ... finished within the last day (a bounded index range)
NEXT_TIMERS = 10  # next timers shown
MAX_SEPS_LISTED = 200
# what a lost database looks like (PoolTimeout is an OperationalError)
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable, OSError)
QUERY_WAIT_S = 4.0  # no statement or lock of the page's connections waits longer
READ_DEADLINE_S = 6.0  # a whole reading (the page gives up its request at 8 s)
XR_RETRY_S = 10.0  # a timers' database found down is asked again after this


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=row_json_default, ensure_ascii=False).encode()


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


class Series:
    """The queue depth by band over time: a ring buffer of the last WINDOW_S seconds
    of samples taken every EVERY seconds (in memory: a restart starts it again)."""

    def __init__(self, every: float = SAMPLE_EVERY, window_s: float = WINDOW_S) -> None:
        self.every = every
        self.window_s = window_s
        self.points: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max(1, math.ceil(window_s / every) + 1)
        )

    def add(self, t: float, depth: Mapping[str, Any], running: int) -> None:
        """A sample at T (seconds since the epoch): queued requests by band, running."""
        self.points.append(
            {
                "t": round(t, 3),
                "depth": [int(depth.get(band) or 0) for band in BANDS],
                "running": int(running),
            }
        )

    def as_json(self, since: float | None = None, now: float | None = None) -> dict[str, Any]:
        """The samples of the window (after SINCE, when given), oldest first."""
        horizon = (time.time() if now is None else now) - self.window_s
        low = horizon if since is None else max(horizon, since)
        return {
            "interval_s": self.every,
            "window_s": self.window_s,
            "bands": list(BANDS),
            "points": [p for p in self.points if p["t"] > low],
        }


class Unavailable(Exception):
    """The region database cannot be reached (answered 503)."""


class StatusPage:
    """The status page of REGION on HOST:PORT (port 0: any free port, see ``port``):
    ``start()``, then ``close()`` (``stopping`` is set by close, or by whoever wants it
    to stop). XR_URL: the database holding the timers, when it is another one."""

    def __init__(
        self,
        url: str,
        region: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_WEB_PORT,
        *,
        xr_url: str | None = None,
        sample_every: float = SAMPLE_EVERY,
        window_s: float = WINDOW_S,
        db_timeout: float = 3.0,
    ) -> None:
        self.url = url
        self.region = region
        self.host = host
        self.port = port
        self.started = False
        self.sample_every = sample_every
        self.window_s = window_s
        self.log = get_logger("web", region=region, pid=os.getpid())
        self.stopping = asyncio.Event()
        kwargs = {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": "dispatcher-web",
        }
        check = checked_within(QUERY_WAIT_S)  # a connection the server lost: a new one

        async def bounded(conn: Any) -> None:
            # a stuck database (a lock, a paused server) answers within QUERY_WAIT_S
            await AsyncGateway(conn).run(ops.sep.bound_waits(QUERY_WAIT_S))

        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=db_timeout,
            kwargs=kwargs,
            check=check,
            configure=bounded,
        )
        self.xr_pool: AsyncConnectionPool[Any] | None = None
        if xr_url is not None and xr_url != url:
            self.xr_pool = AsyncConnectionPool(
                xr_url,
                min_size=0,
                max_size=2,
                open=False,
                timeout=db_timeout,
                kwargs=kwargs,
                check=check,
                configure=bounded,
            )
        self.series = Series(sample_every, window_s)
        self.down: str | None = None  # why the database is unavailable (None: it is not)
        self._own_names = own_names(host)
        self.app = self.make_app()
        self.runner: web.AppRunner | None = None
        self.sampler: asyncio.Task[None] | None = None
        self._cache: tuple[float, dict[str, Any]] | None = None
        # the last reading that failed (its time, the error): served for _cache_s too, so
        # that viewers of a broken region do not send the database one query each
        self._failed: tuple[float, Exception] | None = None
        self._xr_down: tuple[float, str] | None = None  # the timers' database: when, why
        self._cache_s = min(1.0, sample_every / 2)  # viewers share one reading
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        """Where the page is: http://HOST:PORT/."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------ the app
    def make_app(self) -> web.Application:
        """The aiohttp application: ``GET /`` and ``GET /api/status``."""
        app = web.Application(middlewares=[self._known_host, _security_headers])
        app.router.add_get("/", self.page)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/favicon.ico", _no_icon)  # browsers ask; nothing to fetch
        return app

    @web.middleware
    async def _known_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer only requests addressed to this machine (a Host that is an IP address,
        localhost, this host's name or the --host given): a web page elsewhere whose
        name an attacker points at 127.0.0.1 (DNS rebinding) gets nothing."""
        if not _known(request.host, self._own_names):
            return _json(
                {
                    "error": "unknown_host",
                    "message": "this page answers requests addressed to an IP address, "
                    "localhost or this machine's name (a proxy: send one of them as Host)",
                },
                421,
            )
        return await handler(request)

    async def start(self) -> None:
        """Open the pools, start sampling and listen; if listening fails (the port is
        taken), stop what was started and raise the OSError."""
        await self.pool.open(wait=False)
        if self.xr_pool is not None:
            await self.xr_pool.open(wait=False)
        self.sampler = asyncio.create_task(self._sample_forever(), name="status-page-sampler")
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            await self.runner.setup()
            site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, OSError):
                raise cannot_listen("the status page", self.host, self.port, exc) from None
            raise
        self.started = True
        self.port = bound_port(site._server, self.port)  # port 0: the one chosen
        self.log.info("web_started", host=self.host, port=self.port)

    async def close(self) -> None:
        self.stopping.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.sampler is not None:
            self.sampler.cancel()
            await asyncio.gather(self.sampler, return_exceptions=True)
            self.sampler = None
        await self.pool.close()
        if self.xr_pool is not None:
            await self.xr_pool.close()
        if self.started:
            self.log.info("web_stopped")

    # ------------------------------------------------------------ sampling
    async def _sample_forever(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            await self.sample()
            delay = max(0.0, self.sample_every - (time.monotonic() - started))
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except TimeoutError:
                pass

    async def sample(self) -> None:
        """One sample of the queue depth by band (and running tasks) into the series;
        notes whether the database answered."""
        try:
            async with self.pool.connection() as conn:
                g = await AsyncGateway(conn).run(ops.metrics.metrics_gauges(self.region))
        except UNAVAILABLE as exc:
            self._went_down(exc)
            return
        except Exception as exc:  # the sampler must go on
            self.log.warning("web_sample_failed", error=str(exc))
            return
        self._came_back()
        self.series.add(time.time(), g["queued_by_band"] or {}, int(g["running"] or 0))

    def _went_down(self, exc: BaseException) -> None:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if self.down is None:
            self.log.warning("database_unavailable", error=message, retry_in_s=self.sample_every)
        self.down = message
        self._cache = None

    def _came_back(self) -> None:
        if self.down is not None:
            self.log.info("database_reconnected")
            self.down = None

    # ------------------------------------------------------------ reading
    async def status(self) -> dict[str, Any]:
        """The region as /api/status shows it (without the series); read at most once
        a second for all viewers. Unavailable: the database cannot be reached."""
        async with self._lock:
            now = time.monotonic()
            if self._cache is not None and now - self._cache[0] < self._cache_s:
                return self._cache[1]
            if self._failed is not None and now - self._failed[0] < self._cache_s:
                raise self._failed[1]
            if self.down is not None and self.sampler is not None and not self.sampler.done():
                # known to be down: answer at once; the sampler finds it back
                raise Unavailable(self.down)
            try:
                # (not wait_for: cancelling a statement of a hung server takes 10 s more)
                body = await answered_within(self._collect(), READ_DEADLINE_S)
            except UNAVAILABLE as exc:
                self._went_down(exc)
                self._failed = (time.monotonic(), Unavailable(self.down))
                raise self._failed[1] from None
            except (DispatcherError, psycopg.Error) as exc:
                self._failed = (time.monotonic(), exc)
                raise
            self._failed = None
            self._cache = (time.monotonic(), body)
            return body

    async def _collect(self) -> dict[str, Any]:
        region = self.region
        async with self.pool.connection() as conn:
            db = AsyncGateway(conn)
            await db.run(ops.region.get_region(region))  # UnknownRegion
            st = await db.run(ops.region.region_status(region))
            seps = await db.run(ops.sep.list_seps(region))
            finished = await db.run(ops.status_page.status_page_finished(region, self.window_s))
            failures = await db.run(
                ops.status_page.status_page_failures(region, FAILURES, FAILURES_WITHIN_S)
            )
            timers = await self._timers(db) if self.xr_pool is None else None
        if self.xr_pool is not None:
            if self._xr_down is not None and time.monotonic() - self._xr_down[0] < XR_RETRY_S:
                timers = _no_timers(self._xr_down[1])  # known down: no 3 s wait each time
            else:
                try:
                    async with self.xr_pool.connection() as xconn:
                        timers = await self._timers(AsyncGateway(xconn))
                    self._xr_down = None
                except UNAVAILABLE as exc:
                    why = f"the timers' database is unavailable: {exc}"
                    self._xr_down = (time.monotonic(), why)
                    timers = _no_timers(why)
        self._came_back()
        bands = st["queued_by_band"] or {}
        oldest = st["oldest_queued"]
        living = [s for s in seps if s["state"] != "dead"]
        dead = [s for s in seps if s["state"] == "dead"]
        return {
            "region": st["name"],
            "region_state": st["state"],
            "max_seps": st["max_seps"],
            "now": dt.datetime.now(dt.UTC).isoformat(),
            "seps_by_state": st["seps"] or {},
            "seps": [_sep(s) for s in [*living, *dead][:MAX_SEPS_LISTED]],
            "requests_by_state": st["requests"] or {},
            "finished": {
                "window_s": self.window_s,
                **{k: finished.get(k, 0) for k in ("done", "failed", "cancelled")},
            },
            "queue_depth": {band: int(bands.get(band) or 0) for band in BANDS},
            "oldest_queued": oldest,
            "oldest_queued_age_s": None if oldest is None else float(oldest["age_s"]),
            "failures": [_failure(f) for f in failures],
            "timers": timers,
            "listeners": st["listeners"],
            "sessions": st["sessions"],
        }

    async def _timers(self, db: AsyncGateway) -> dict[str, Any]:
        try:
            st = await db.run(ops.timer.timer_status(self.region))
            nxt = await db.run(ops.status_page.status_page_next_timers(self.region, NEXT_TIMERS))
        except psycopg.errors.UndefinedTable:  # a database without the timers' tables
            return _no_timers("no timers in this database")
        lag = st["lag_ms_p50_p99"] or [None, None]
        return {
            "pending": int(st["pending"]),
            "next_due": st["next_due"],
            "fired_last_hour": int(st["fired_last_hour"] or 0),
            "lag_ms_p50": lag[0],
            "lag_ms_p99": lag[1],
            "next": [
                {
                    "reqid": t["reqid"],
                    "transid": t["transid"],
                    "due_at": t["due_at"],
                    "cron": t["cron"],
                }
                for t in nxt
            ],
            "error": None,
        }

    # ------------------------------------------------------------ routes
    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def api_status(self, request: web.Request) -> web.Response:
        since: float | None = None
        raw = request.query.get("since")
        if raw:
            try:
                since = float(raw)
            except ValueError:
                since = math.nan
            if not math.isfinite(since):
                return _json(
                    {
                        "error": "invalid_value",
                        "message": f"since must be a number of seconds "
                        f"since the epoch, not {raw[:40]!r}",
                        "region": self.region,
                        "now": dt.datetime.now(dt.UTC).isoformat(),
                        "series": self.series.as_json(None),
                    },
                    400,
                )
        series = self.series.as_json(since)
        now = dt.datetime.now(dt.UTC).isoformat()
        try:
            body = await self.status()
        except Unavailable as exc:
            return _json(
                {
                    "error": "database_unavailable",
                    "message": str(exc),
                    "region": self.region,
                    "now": now,
                    "series": series,
                },
                503,
                {"Retry-After": "2"},
            )
        except UnknownRegion as exc:
            body = {"error": "unknown_region", "message": str(exc), "region": self.region}
            return _json({**body, "now": now, "series": series}, 404)
        except (DispatcherError, psycopg.Error) as exc:
            self.log.warning("web_status_failed", error=str(exc))
            message = " ".join(str(exc).split())
            body = {"error": "database_error", "message": message, "region": self.region}
            return _json({**body, "now": now, "series": series}, 500)
        return _json({**body, "series": series})


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


def _no_timers(error: str) -> dict[str, Any]:
    return {
        "pending": None,
        "next_due": None,
        "fired_last_hour": None,
        "lag_ms_p50": None,
        "lag_ms_p99": None,
        "next": [],
        "error": error,
    }


def _sep(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "state": row["state"],
        "paused": bool(row["paused"]),
        "host": row["host"],
        "pid": row["pid"],
        "current_request": row["current_request"],
        "heartbeat_at": row["heartbeat_at"],
        "heartbeat_age_s": row["heartbeat_age_s"],
        "silent": bool(row["silent"]),
        "tasks_run": row["tasks_run"],
    }


def _shown(text: Any, limit: int) -> Any:
    """TEXT as a page shows it: at most LIMIT characters and 12 lines (a message of a
    thousand newlines must not make a row a thousand lines tall)."""
    if not isinstance(text, str):
        return text
    lines = text.splitlines()
    if len(lines) > 12:
        text = "\n".join([*lines[:11], f"... ({len(lines) - 11} more lines)"])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failure(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "request_id": row["id"],
        "transid": row["transid"],
        "attempt": row["attempt"],
        "error_type": _shown(row["error_type"], 200),
        "error_message": _shown(row["error_message"], 1000),
        "finished_at": row["finished_at"],
    }


# ---------------------------------------------------------------- the page

STYLE = """
:root { color-scheme: light; --fg: #1d2330; --muted: #5f6b7a; --line: #d8dde5;
  --bg: #f6f7f9; --card: #fff; --ok: #2e7d32; --bad: #c62828; --warn: #b26a00; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .5em 1.5em;
  padding: .8em 1.2em; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 1.2em; margin: 0; }
h2 { font-size: 1em; margin: 0 0 .5em; }
main { padding: 1em 1.2em; display: grid; gap: 1em; }
#status { color: var(--muted); }
#status[data-state="ok"]::before { content: "\\25CF "; color: var(--ok); }
#status[data-state="db-down"], #status[data-state="unreachable"],
#status[data-state="error"] { color: var(--bad); font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(9em, 1fr)); gap: .6em; }
.card, section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: .6em .8em; }
.card .n { font-size: 1.6em; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .what { color: var(--muted); font-size: .85em; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .25em .6em .25em 0; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: anywhere; }
th { color: var(--muted); font-weight: 500; }
td.msg { white-space: pre-wrap; word-break: break-word; max-width: 50em; }
td.none { color: var(--muted); }
.muted { color: var(--muted); }
.state-busy { color: var(--warn); } .state-dead { color: var(--bad); }
#chart svg { width: 100%; height: auto; display: block; }
#chart .axis { stroke: var(--line); } #chart text { fill: var(--muted); font-size: 11px; }
#legend { display: flex; gap: 1.2em; flex-wrap: wrap; margin-top: .3em; }
#legend .sw { display: inline-block; width: .9em; height: .9em; border-radius: 2px;
  margin-right: .3em; vertical-align: -.1em; }
body[data-stale="yes"] main { opacity: .55; }
#zoom { margin-left: 1em; font-weight: normal; }
#zoom button { font: inherit; font-size: .85em; border: 1px solid var(--line);
  background: var(--card); border-radius: 4px; padding: 0 .5em; margin-right: .2em;
  cursor: pointer; }
#zoom button[aria-pressed="true"] { background: var(--fg); color: var(--card); }
.two { display: grid; grid-template-columns: repeat(auto-fit, minmax(28em, 1fr)); gap: 1em; }
"""

SCRIPT = """
"use strict";
(function () {
  var SVGNS = "http://www.w3.org/2000/svg";
  var COLORS = ["#4e79a7", "#59a14f", "#f28e2b", "#e15759"];
  // ?every=N: refresh every N seconds (0.5 to 3600; default 2)
  var asked = Number(new URLSearchParams(location.search).get("every"));
  var EVERY_MS = asked >= 0.5 && asked <= 3600 ? asked * 1000 : 2000;
  var points = [];
  var lastT = null;
  var windowS = 900;
  var shownS = null;  // the chart's span (null: all the server keeps)
  var intervalS = 2;
  var bands = ["0-63", "64-127", "128-191", "192-255"];
  var lastOk = null;
  var refreshes = 0;

  function $(id) { return document.getElementById(id); }
  function fill(node, attrs, kids) {
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    (kids || []).forEach(function (k) {
      node.append(k instanceof Node ? k : (k === null || k === undefined ? "" : String(k)));
    });
    return node;
  }
  function el(tag, attrs, kids) { return fill(document.createElement(tag), attrs, kids); }
  function sv(tag, attrs, kids) { return fill(document.createElementNS(SVGNS, tag), attrs, kids); }
  function swatch(color) {
    var s = el("span", {"class": "sw"});
    s.style.background = color;
    return s;
  }
  function text(id, value) {
    $(id).textContent = value === null || value === undefined ? "-" : String(value);
  }
  function clock(d) { return d.toLocaleTimeString([], {hour12: false}); }
  function when(iso) {  // a time of today as a clock; another day with its date
    if (!iso) return "-";
    var d = new Date(iso);
    return d.toDateString() === new Date().toDateString() ? clock(d) :
      d.toLocaleDateString("sv") + " " + clock(d);
  }
  function secs(s) {
    if (s === null || s === undefined) return "-";
    s = Number(s);
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function setStatus(state, message) {
    var s = $("status");
    s.setAttribute("data-state", state);
    s.textContent = message;
  }
  function lastData() { return lastOk ? " (last data " + clock(lastOk) + ")" : ""; }
  function rows(id, list, cells, columns) {
    var body = $(id).tBodies[0];
    if (!list.length) {
      body.replaceChildren(el("tr", {}, [el("td", {"class": "none", colspan: columns}, ["none"])]));
      return;
    }
    body.replaceChildren.apply(body, list.map(function (item) {
      return el("tr", {}, cells(item).map(function (c) {
        return c instanceof Node ? c : el("td", {}, [c]);
      }));
    }));
  }

  function render(s) {
    text("region", s.region);
    text("region-state", s.region_state);
    var r = s.requests_by_state || {};
    var f = s.finished || {};
    text("stat-queued", r.queued || 0);
    text("stat-running", (r.running || 0) + (r.dispatched || 0));
    text("stat-done", f.done || 0);
    text("stat-failed", f.failed || 0);
    var living = 0;
    Object.keys(s.seps_by_state || {}).forEach(function (k) {
      if (k !== "dead") living += s.seps_by_state[k];
    });
    text("stat-seps", living + " / " + s.max_seps);
    text("stat-timers", s.timers && s.timers.pending !== null ? s.timers.pending : "-");
    text("stat-oldest", s.oldest_queued_age_s === null ? "-" : secs(s.oldest_queued_age_s));
    text("finished-window", Math.round((f.window_s || 900) / 60));
    text("seps-by-state", Object.keys(s.seps_by_state || {}).sort().map(function (k) {
      return k + " " + s.seps_by_state[k];
    }).join(", ") || "none");
    text("requests-by-state", Object.keys(r).sort().map(function (k) {
      return k + " " + r[k];
    }).join(", ") || "none");
    text("sessions", s.sessions + (s.sessions === 1 ? " session, " : " sessions, ") +
      s.listeners + (s.listeners === 1 ? " listener" : " listeners"));
    bands.forEach(function (b, i) { text("depth-" + i, (s.queue_depth || {})[b] || 0); });
    rows("seps", s.seps || [], function (p) {
      return [
        String(p.id),
        el("td", {"class": "state-" + p.state}, [p.state + (p.paused ? " (paused)" : "") +
          (p.silent ? " (silent)" : "")]),
        (p.host || "") + ":" + p.pid,
        el("td", {"class": "current"}, [p.current_request === null ? "-" :
          String(p.current_request)]),
        secs(p.heartbeat_age_s) + " ago",
        String(p.tasks_run)
      ];
    }, 6);
    rows("failures", s.failures || [], function (x) {
      return [
        String(x.request_id), x.transid, String(x.attempt), x.error_type || "-",
        el("td", {"class": "msg"}, [x.error_message || ""]), when(x.finished_at)
      ];
    }, 6);
    var t = s.timers || {next: []};
    text("timers-summary", t.error ? t.error :
      t.pending + " pending, " + t.fired_last_hour + " fired in the last hour" +
      (t.lag_ms_p50 === null ? "" : ", lag p50 " + Math.round(t.lag_ms_p50) + " ms, p99 " +
       Math.round(t.lag_ms_p99) + " ms"));
    rows("timers", t.next || [], function (x) {
      return [x.reqid, x.transid, new Date(x.due_at).toLocaleString([], {hour12: false}),
              x.cron || "-"];
    }, 4);
  }

  function merge(series) {
    if (series.window_s && series.window_s !== windowS) { windowS = series.window_s; zoom(); }
    intervalS = series.interval_s || intervalS;
    bands = series.bands || bands;
    (series.points || []).forEach(function (p) {
      if (lastT === null || p.t > lastT) { points.push(p); lastT = p.t; }
    });
    var horizon = (lastT === null ? Date.now() / 1000 : lastT) - windowS;
    while (points.length && points[0].t <= horizon) points.shift();
  }

  function label(s) { return s < 60 ? Math.round(s) + " s" : Math.round(s / 60) + " min"; }

  function zoom() {
    var spans = [60, 300, null];
    $("zoom").replaceChildren.apply($("zoom"), spans.map(function (s) {
      var b = el("button", {type: "button", "data-span": s === null ? "all" : s,
        "aria-pressed": String(s === shownS)}, [s === null ? label(windowS) : label(s)]);
      b.addEventListener("click", function () { shownS = s; zoom(); drawChart(); });
      return b;
    }));
  }

  // the top of the axis: 4 whole steps of 1, 2 or 5 times a power of ten (counts are
  // whole numbers: no 2.5 or 6.25 on the axis)
  function nice(n) {
    var need = Math.max(n, 4) / 4;
    var p = Math.pow(10, Math.floor(Math.log10(need)));
    var m = [1, 2, 5, 10].find(function (k) { return k * p >= need; });
    return 4 * Math.max(1, Math.round(m * p));
  }

  function short(v) {  // 5000000 -> 5M: an axis label fits its margin
    if (v >= 1e6) return (v / 1e6) + "M";
    if (v >= 1e4) return (v / 1e3) + "k";
    return String(v);
  }

  function drawChart() {
    var W = 800, H = 220, L = 44, R = 10, T = 10, B = 26;
    var span = shownS === null ? windowS : Math.min(shownS, windowS);
    var end = lastT === null ? Date.now() / 1000 : lastT;
    var start = end - span;
    var max = 0;
    var shown = points.filter(function (p) { return p.t >= start; });
    shown.forEach(function (p) { p.depth.forEach(function (d) { if (d > max) max = d; }); });
    var top = nice(max);
    function x(t) { return L + (W - L - R) * (t - start) / span; }
    function y(v) { return H - B - (H - T - B) * v / top; }
    var svg = sv("svg", {viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "queued requests by priority band, last " + label(span)});
    for (var i = 0; i <= 4; i++) {
      var v = top * i / 4;
      svg.append(sv("line", {"class": "axis", x1: L, x2: W - R, y1: y(v), y2: y(v)}));
      svg.append(sv("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, [short(v)]));
    }
    var step = span > 600 ? 300 : span > 120 ? 60 : 15;
    for (var ago = 0; ago <= span + 0.001; ago += step) {
      svg.append(sv("text", {x: x(end - ago), y: H - 8, "text-anchor": ago === 0 ? "end" :
        (ago + step > span ? "start" : "middle")}, [ago === 0 ? "now" : "-" + label(ago)]));
    }
    svg.append(sv("text", {x: L, y: T + 2, "text-anchor": "start", dy: "0.6em", dx: "4"},
      ["queued"]));
    bands.forEach(function (band, b) {
      var d = "", prev = null;
      shown.forEach(function (p) {
        var gap = prev === null || p.t - prev > 3 * intervalS;
        d += (gap ? "M" : "L") + x(p.t).toFixed(1) + "," + y(p.depth[b]).toFixed(1);
        prev = p.t;
      });
      if (d) {
        svg.append(sv("path", {d: d, fill: "none", stroke: COLORS[b % COLORS.length],
          "stroke-width": 2, "stroke-linejoin": "round", "data-band": band}));
      }
    });
    $("chart-svg").replaceChildren(svg);
    text("samples", points.length + " samples, every " + intervalS + " s");
  }

  function refresh() {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, 8000);
    var url = "api/status" + (lastT === null ? "" : "?since=" + encodeURIComponent(lastT));
    fetch(url, {cache: "no-store", signal: ctl.signal}).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (body) {
        if (body && body.series) merge(body.series);
        if (body && body.region) text("region", body.region);
        document.body.setAttribute("data-stale", r.ok ? "no" : "yes");
        if (r.ok && body) {
          render(body);
          lastOk = new Date();
          refreshes += 1;
          document.body.setAttribute("data-refreshes", String(refreshes));
          setStatus("ok", "updated " + clock(lastOk) + ", every " + EVERY_MS / 1000 + " s");
        } else if (r.status === 503) {
          setStatus("db-down", "database unavailable" + (body && body.message ? " (" +
            body.message + ")" : "") + ", retrying every " + EVERY_MS / 1000 + " s" + lastData());
        } else {
          setStatus("error", "error " + r.status + (body && body.message ? ": " +
            body.message : "") + lastData());
        }
        drawChart();
      });
    }).catch(function () {
      document.body.setAttribute("data-stale", "yes");
      setStatus("unreachable", "server unreachable, retrying every " + EVERY_MS / 1000 + " s" +
        lastData());
    }).finally(function () {
      clearTimeout(timer);
      setTimeout(refresh, EVERY_MS);
    });
  }

  bands.forEach(function (b, i) {
    $("legend").append(el("span", {}, [
      swatch(COLORS[i]),
      "priority " + b + ": ", el("b", {id: "depth-" + i}, ["-"])
    ]));
  });
  zoom();
  drawChart();
  refresh();
})();
"""

_BODY = """<header>
<h1>dispatcher region <span id="region">-</span></h1>
<span class="muted" id="region-state"></span>
<span id="status" data-state="loading">loading...</span>
</header>
<main>
<div class="cards">
  <div class="card"><div class="n" id="stat-queued">-</div><div class="what">queued</div></div>
  <div class="card"><div class="n" id="stat-running">-</div><div class="what">running</div></div>
  <div class="card"><div class="n" id="stat-done">-</div>
    <div class="what">done, last <span id="finished-window">15</span> min</div></div>
  <div class="card"><div class="n" id="stat-failed">-</div>
    <div class="what">failed, same window</div></div>
  <div class="card"><div class="n" id="stat-seps">-</div><div class="what">SEPs / max</div></div>
  <div class="card"><div class="n" id="stat-oldest">-</div>
    <div class="what">oldest queued</div></div>
  <div class="card"><div class="n" id="stat-timers">-</div>
    <div class="what">timers pending</div></div>
</div>
<section id="chart">
  <h2>Queue depth by priority band <span class="muted" id="samples"></span>
    <span id="zoom"></span></h2>
  <div id="chart-svg"></div>
  <div id="legend"></div>
</section>
<div class="two">
<section>
  <h2>SEPs <span class="muted" id="seps-by-state"></span></h2>
  <p class="muted">requests: <span id="requests-by-state">-</span>;
    <span id="sessions"></span></p>
  <table id="seps"><thead><tr><th>SEP</th><th>state</th><th>host:pid</th>
    <th>current request</th><th>last heartbeat</th><th>tasks run</th></tr></thead>
    <tbody></tbody></table>
</section>
<section>
  <h2>Timers <span class="muted" id="timers-summary"></span></h2>
  <table id="timers"><thead><tr><th>reqid</th><th>transaction</th><th>due at</th>
    <th>cron</th></tr></thead><tbody></tbody></table>
</section>
</div>
<section>
  <h2>Recent failures</h2>
  <table id="failures"><thead><tr><th>request</th><th>transaction</th><th>attempt</th>
    <th>error</th><th>message</th><th>finished</th></tr></thead><tbody></tbody></table>
</section>
</main>
"""


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>dispatcher status</title>\n"
    f"<style>{STYLE}</style>\n</head>\n<body>\n{_BODY}<script>{SCRIPT}</script>\n"
    "</body>\n</html>\n"
)
"""The page: one document, nothing fetched but api/status (relative: the page works
under a proxy's path prefix too)."""

# only the page's own script and style; data only from this server; no frames, no forms
CSP = (
    "default-src 'none'; "
    f"script-src 'sha256-{_sha256(SCRIPT)}'; "
    "style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def own_names(bound: str) -> frozenset[str]:
    """The names of this machine a Host header may carry (see _known)."""
    import socket

    return frozenset(n.lower() for n in ("localhost", socket.gethostname(), bound) if n)


def _known(host_header: str | None, own: frozenset[str]) -> bool:
    """Is HOST_HEADER (``name[:port]``, ``[v6]:port``) this machine, as far as a browser
    can tell: an IP literal, localhost (or a name under it), or one of OWN (this host's
    names, the host the page was told to bind)?"""
    import ipaddress

    if not host_header:
        return True  # HTTP/1.0 without Host: not a browser's rebinding
    name = host_header.strip()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    name = name.rstrip(".").lower()
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in own or name.endswith(".localhost")


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
