"""The HTTP front: the requests and timers of a region over HTTP/JSON (docs/http.md).

The same tokens as the socket protocol (``Authorization: Bearer``, with their allow
list and priority), the same checks of values (listener/frames.py,
dispatcher/values.py), the same enqueue through the gateway (origin ``http``) and the
same error codes (docs/protocol.md), answered as RFC 9457 problem documents
(http_problems.py). A lost database is answered ``database_unavailable`` (503) at once
while a probe waits for it to come back (health.py, as in the socket listener).

- http.py: the application, its runner and the request routes;
- http_wait.py: waiting for outcomes (``Prefer: wait=N``);
- http_timers.py: the timer routes (START after/at/cron, CANCEL);
- http_problems.py: problem documents and the middleware that answers with them;
- http_openapi.py: the OpenAPI document of these routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dispatcher.channel import ChannelError, parse_json
from dispatcher.errors import DispatcherError
from dispatcher.eventloop import bound_port, cannot_listen
from dispatcher.gateway import AsyncGateway, Token, checked_within, ops
from dispatcher.logs import get_logger
from dispatcher.values import MAX_DATA

from .frames import check_call, failure_code, token_hash
from .health import DB_ERRORS, Answered, Health
from .http_openapi import openapi
from .http_problems import Problem, from_error, make_problem_middleware
from .http_wait import Waiters
from .state import ListenerState

__all__ = ["DEFAULT_HTTP_PORT", "MAX_WAIT", "HttpFront", "dumps"]

DEFAULT_HTTP_PORT = 7380
MAX_WAIT = 60.0  # Prefer: wait=N is honoured up to this many seconds
FINAL = ("done", "failed", "cancelled")
JSON = "application/json"


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default).encode()


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(body), content_type=JSON, headers=headers)


def request_id(ref: str) -> int:
    """The request id in a path (bad_frame: not an integer; invalid_value: out of range)."""
    if not ref.isascii() or not ref.isdigit():
        raise Problem("bad_frame", f"{ref[:80]!r} is not a request id (a positive integer)")
    rid = int(ref)
    if not 0 < rid < 2**63:
        raise Problem("invalid_value", f"request id {rid} is out of range")
    return rid


def wait_preference(request: web.Request) -> tuple[float | None, bool]:
    """How long to wait for the outcome: ``?wait=N`` or ``Prefer: wait=N`` (seconds, at
    most MAX_WAIT); and whether it came from Prefer (then Preference-Applied says so)."""
    query = request.query.get("wait")
    if query is not None:
        try:
            n = float(query)
        except ValueError:
            n = math.nan
        if not math.isfinite(n) or n < 0:
            raise Problem("invalid_value", f"wait must be a number of seconds, not {query[:40]!r}")
        return min(n, MAX_WAIT), False
    for header in request.headers.getall("Prefer", []):
        for pref in header.split(","):
            name, _, value = pref.split(";")[0].strip().partition("=")
            if name.strip().lower() != "wait":
                continue
            try:
                n = float(value.strip().strip('"'))
            except ValueError:
                continue  # a preference not understood is ignored (RFC 7240)
            if math.isfinite(n) and n >= 0:
                return min(n, MAX_WAIT), True
    return None, False


def _seconds(n: float) -> str:
    return f"{n:g}"


def outcome_answer(
    rid: int, state: str, result: Any, err: Any, headers: dict[str, str], duplicate: bool
) -> web.Response:
    """The answer for a finished request: 200 with its result, or its error as a
    problem with the protocol's failure code (abend, sep_lost, cancelled)."""
    extra: dict[str, Any] = {"duplicate": True} if duplicate else {}
    if state == "done":
        body = {"request_id": rid, "state": "done", "result": result, **extra}
        return answer(body, 200, headers)
    detail = err if isinstance(err, dict) else {"message": str(err)}
    raise Problem(
        failure_code(detail),
        str(detail.get("message", f"the request is {state}")),
        headers=headers,
        request_id=rid,
        state=state,
        error=detail,
        **extra,
    )


class HttpFront:
    """The HTTP front of REGION on HOST:PORT (port 0: any free port, see ``port``)."""

    def __init__(
        self,
        url: str,
        region: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_HTTP_PORT,
        *,
        xr_url: str | None = None,
        db_timeout: float = 5.0,
        max_pool: int = 16,
    ) -> None:
        self.url = url
        self.region = region
        self.host = host
        self.db_timeout = db_timeout  # for a connection, and for an answer to a statement
        self.started = False
        self.log = get_logger("http", region=region, pid=os.getpid())
        self.stopping = asyncio.Event()
        kwargs = {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": "dispatcher-http",
        }

        # a connection is checked as it is taken: a request is not answered
        # database_unavailable for a connection broken by a restart that is over
        check = checked_within(db_timeout)
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_pool,
            open=False,
            timeout=db_timeout,
            kwargs=kwargs,
            check=check,
        )
        # timers live in the cross-region database when it is another one
        self.xr_pool: AsyncConnectionPool[Any] | None = None
        if xr_url is not None and xr_url != url:
            self.xr_pool = AsyncConnectionPool(
                xr_url,
                min_size=1,
                max_size=4,
                open=False,
                timeout=db_timeout,
                kwargs=kwargs,
                check=check,
            )
        self.state = ListenerState(region, self.pool, self.log, self.stopping, port)
        self.health = Health(self.state, heartbeat_interval=2.0, dead_after=10.0)
        self.waiters = Waiters(self)
        self.app = self.make_app()
        self.runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self.state.port

    # ------------------------------------------------------------ the app
    def make_app(self) -> web.Application:
        from . import http_timers

        app = web.Application(
            client_max_size=MAX_DATA, middlewares=[make_problem_middleware(self.log)]
        )
        r = app.router
        r.add_get("/openapi.json", self.openapi, allow_head=False)
        r.add_post("/v1/requests/{ref}", self.post_request)
        r.add_get("/v1/requests/{ref}", self.get_request, allow_head=False)
        r.add_delete("/v1/requests/{ref}", self.delete_request)
        r.add_post("/v1/timers", http_timers.handler(self, http_timers.create_timer))
        r.add_delete("/v1/timers/{reqid}", http_timers.handler(self, http_timers.cancel_timer))
        return app

    async def start(self) -> None:
        """Open the pools, start the waiters and listen; if listening fails (the port is
        taken), stop what was started and raise, so that the process ends at once."""
        await self.pool.open(wait=False)
        if self.xr_pool is not None:
            await self.xr_pool.open(wait=False)
        self.waiters.start()
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            await self.runner.setup()
            site = web.TCPSite(self.runner, self.host, self.state.port, reuse_address=True)
            await site.start()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, OSError):
                raise cannot_listen("the HTTP front", self.host, self.state.port, exc) from None
            raise
        self.started = True
        self.state.port = bound_port(site._server, self.state.port)
        self.log.info("http_started", host=self.host, port=self.port)

    async def close(self) -> None:
        self.stopping.set()
        if self.runner is not None:
            await self.runner.cleanup()
        tasks = [t for t in [self.waiters.task, *self.health.probes] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pool.close()
        if self.xr_pool is not None:
            await self.xr_pool.close()
        if self.started:
            self.log.info("http_stopped")

    # ---------------------------------------------------- shared pieces
    @contextlib.asynccontextmanager
    async def db(self, timers: bool = False) -> AsyncIterator[AsyncGateway]:
        """A gateway on a pooled connection to the region database (TIMERS: to the
        database holding the timers). A lost database is the problem
        database_unavailable (503); a DispatcherError, the problem of its code."""
        notes: list[dict[str, Any]] = []

        async def note(message: dict[str, Any]) -> None:
            notes.append(message)

        pool = self.xr_pool if timers and self.xr_pool is not None else self.pool
        try:
            if pool is self.pool:
                async with self.health.guard(note, None), pool.connection() as conn:
                    yield AsyncGateway(conn, self.db_timeout)
            else:
                async with pool.connection() as conn:
                    yield AsyncGateway(conn, self.db_timeout)
        except Answered:
            message = notes[0]["message"] if notes else "the database is unavailable"
            raise Problem("database_unavailable", message, headers={"Retry-After": "1"}) from None
        except DB_ERRORS as exc:
            raise Problem(
                "database_unavailable",
                f"the timers' database is unavailable, retry later: {str(exc).strip()}",
                headers={"Retry-After": "1"},
            ) from None
        except DispatcherError as exc:
            raise from_error(exc) from None

    async def authorize(self, request: web.Request) -> Token:
        """The token of ``Authorization: Bearer <token>`` (unauthorized: none, unknown)."""
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(
                "unauthorized",
                "a token is required: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="dispatcher"'},
            )
        async with self.db() as db:
            tok = await db.run(ops.listener.find_token(self.region, token_hash(token)))
        if tok is None:
            raise Problem(
                "unauthorized",
                "unknown token",
                headers={"WWW-Authenticate": 'Bearer realm="dispatcher", error="invalid_token"'},
            )
        return tok

    async def json_body(self, request: web.Request) -> Any:
        """The JSON body (unsupported_media_type: not application/json; frame_too_large:
        over the data limit; bad_frame: not strict JSON)."""
        if request.content_type != JSON:
            raise Problem(
                "unsupported_media_type",
                f"the body must be {JSON}, not {request.content_type or 'missing'}",
                headers={"Accept-Post": JSON},
            )
        if request.content_length is not None and request.content_length > MAX_DATA:
            raise Problem(
                "frame_too_large",
                f"the body is {request.content_length:,} bytes, over the limit of {MAX_DATA:,}",
            )
        body = await request.read()  # over client_max_size: 413 (the middleware)
        try:
            return parse_json(body)
        except ChannelError as exc:
            raise Problem("bad_frame", str(exc)) from None

    # ------------------------------------------------------------ routes
    async def openapi(self, request: web.Request) -> web.Response:
        return answer(openapi())

    async def post_request(self, request: web.Request) -> web.Response:
        """Queue a request of TRANSID with the body as its data: 202 (or, waiting, its
        outcome)."""
        transid = request.match_info["ref"]
        tok = await self.authorize(request)
        data = await self.json_body(request)
        wait, preferred = wait_preference(request)
        key = request.headers.get("Idempotency-Key")
        route = request.headers.get("Routing-Key")
        bad = check_call(
            {"type": "call", "transid": transid, "data": data, "key": key, "routing_key": route}
        )
        if bad is not None:
            raise Problem(bad["code"], bad["message"])
        if tok.allow is not None and transid not in tok.allow:
            raise Problem("forbidden", f"this token may not run {transid}")
        # keys are scoped by the token's name, as the socket listener does
        scoped = None if key is None else f"{tok.name}/{key}"
        row: dict[str, Any] | None = None
        async with self.db() as db:
            e = await db.run(
                ops.request.enqueue(
                    self.region,
                    transid,
                    data,
                    user_priority=tok.priority,
                    idempotency_key=scoped,
                    origin="http",
                    routing_key=route,
                )
            )
            if e.duplicate:
                row = await db.run(ops.request.show_request(self.region, e.request_id))
        rid = e.request_id
        state = row["state"] if row is not None else ("dispatched" if e.sep_id else "queued")
        self.log.info("http_request_accepted", request_id=rid, transid=transid, reason=e.reason)
        headers = {"Location": f"/v1/requests/{rid}"}
        if wait is not None:
            if preferred:
                headers["Preference-Applied"] = f"wait={_seconds(wait)}"
            if row is not None and row["state"] in FINAL:
                return outcome_answer(
                    rid, row["state"], row["result"], row["error"], headers, e.duplicate
                )
            out = await self.waiters.wait(rid, wait)
            if out is not None:
                return outcome_answer(rid, out.state, out.result, out.error, headers, e.duplicate)
        body: dict[str, Any] = {"request_id": rid, "state": state}
        if e.duplicate:
            body["duplicate"] = True
        return answer(body, 202, headers)

    async def get_request(self, request: web.Request) -> web.Response:
        """A request: its state, result or error, attempt and timings."""
        rid = request_id(request.match_info["ref"])
        await self.authorize(request)
        async with self.db() as db:
            row = await db.run(ops.request.show_request(self.region, rid))
        body: dict[str, Any] = {
            "request_id": rid,
            "transid": row["transid"],
            "state": row["state"],
            "attempt": row["attempt"],
            "origin": row["origin"],
            "timings": {
                "enqueued": row["enqueued_at"],
                "dispatched": row["dispatched_at"],
                "started": row["started_at"],
                "finished": row["finished_at"],
            },
        }
        if row["state"] == "done":
            body["result"] = row["result"]
        elif row["state"] in FINAL:
            detail = row["error"] if isinstance(row["error"], dict) else {}
            body["error"] = {"code": failure_code(detail), **detail}
        return answer(body)

    async def delete_request(self, request: web.Request) -> web.Response:
        """Cancel a queued request (409: a SEP has it, or it has finished)."""
        rid = request_id(request.match_info["ref"])
        tok = await self.authorize(request)
        async with self.db() as db:
            if tok.allow is not None:
                row = await db.run(ops.request.show_request(self.region, rid))
                if row["transid"] not in tok.allow:
                    raise Problem("forbidden", f"this token may not cancel {row['transid']}")
            outcome = await db.run(ops.request.cancel_request(self.region, rid))
        if outcome == "cancelled":
            self.log.info("http_request_cancelled", request_id=rid)
            return answer({"request_id": rid, "state": "cancelled"})
        if outcome == "running":
            raise Problem(
                "request_running", f"request {rid} is running: it cannot be cancelled now"
            )
        raise Problem("request_finished", f"request {rid} has finished", request_id=rid)
