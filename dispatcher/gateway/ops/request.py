"""Requests: enqueue one or many, show one (sql/queries/request.sql)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from ...errors import InvalidValue, UnknownRequest
from ...values import check_data, check_text
from ..op import Op, Result, Row, all_rows, each, one, scalar
from ..records import Enqueued

__all__ = [
    "enqueue",
    "enqueue_many",
    "enqueue_many_params",
    "enqueue_params",
    "request_by_key",
    "retry_of",
    "show_request",
]


MAX_ROUTING_KEY = 200  # characters (the request table's check)


def _check_request(
    transid: str, payload: Any, idempotency_key: str | None, routing_key: str | None = None
) -> None:
    """The limits of dispatcher.values, checked before anything reaches the database."""
    check_text(transid, "the transaction id")
    check_data(payload)
    if idempotency_key is not None:
        check_text(idempotency_key, "the idempotency key")
    if routing_key is not None:
        check_text(routing_key, "the routing key")
        if not 1 <= len(routing_key) <= MAX_ROUTING_KEY:
            raise InvalidValue(f"a routing key is 1 to {MAX_ROUTING_KEY} characters")


def enqueue_params(
    region: str,
    transid: str,
    payload: Any = None,
    *,
    session: UUID | None = None,
    user_priority: int = 0,
    idempotency_key: str | None = None,
    deadline: dt.datetime | None = None,
    commarea: Any = None,
    origin: str = "api",
    notify: bool = True,
    routing_key: str | None = None,
) -> dict[str, Any]:
    """The bound parameters of ``enqueue`` (checks the values first)."""
    _check_request(transid, payload, idempotency_key, routing_key)
    if commarea is not None:
        check_data(commarea, "the COMMAREA")
    return {
        "region": region,
        "transid": transid,
        "payload": Jsonb(payload),
        "session": session,
        "user_priority": user_priority,
        "idempotency_key": idempotency_key,
        "deadline": deadline,
        "commarea": None if commarea is None else Jsonb(commarea),
        "origin": origin,
        "notify": notify,
        "routing_key": routing_key,
    }


def enqueue_many_params(
    region: str,
    items: Sequence[tuple[str, Any]],
    *,
    sessions: Sequence[UUID | None] | None = None,
    user_priorities: Sequence[int] | None = None,
    idempotency_keys: Sequence[str | None] | None = None,
    origin: str = "api",
    notify: bool = True,
    routing_keys: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """The bound parameters of ``enqueue_many`` (checks the values first)."""
    keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(items)
    routes = list(routing_keys) if routing_keys is not None else [None] * len(items)
    for (transid, payload), key, route in zip(items, keys, routes, strict=True):
        _check_request(transid, payload, key, route)
    return {
        "region": region,
        "transids": [t for t, _ in items],
        "payloads": [Jsonb(p) for _, p in items],
        "sessions": list(sessions) if sessions is not None else None,
        "user_priorities": list(user_priorities) if user_priorities is not None else None,
        "idempotency_keys": list(idempotency_keys) if idempotency_keys is not None else None,
        "origin": origin,
        "notify": notify,
        "routing_keys": routes if any(r is not None for r in routes) else None,
    }


def enqueue(
    region: str,
    transid: str,
    payload: Any = None,
    *,
    session: UUID | None = None,
    user_priority: int = 0,
    idempotency_key: str | None = None,
    deadline: dt.datetime | None = None,
    commarea: Any = None,
    origin: str = "api",
    notify: bool = True,
    routing_key: str | None = None,
) -> Op[Enqueued]:
    """Queue a request of TRANSID (dispatched at once to an idle SEP when there is one;
    with ROUTING_KEY, only ever to the SEP that owns the key)."""
    params = enqueue_params(
        region,
        transid,
        payload,
        session=session,
        user_priority=user_priority,
        idempotency_key=idempotency_key,
        deadline=deadline,
        commarea=commarea,
        origin=origin,
        notify=notify,
        routing_key=routing_key,
    )
    return Op("enqueue", params, one("enqueue", Enqueued.from_row))


def enqueue_many(
    region: str,
    items: Sequence[tuple[str, Any]],
    *,
    sessions: Sequence[UUID | None] | None = None,
    user_priorities: Sequence[int] | None = None,
    idempotency_keys: Sequence[str | None] | None = None,
    origin: str = "api",
    notify: bool = True,
    routing_keys: Sequence[str | None] | None = None,
) -> Op[list[Enqueued]]:
    """Queue ITEMS ((transid, payload) pairs) in one call, all or none."""
    params = enqueue_many_params(
        region,
        items,
        sessions=sessions,
        user_priorities=user_priorities,
        idempotency_keys=idempotency_keys,
        origin=origin,
        notify=notify,
        routing_keys=routing_keys,
    )
    return Op("enqueue_many", params, each(Enqueued.from_row))


def show_request(region: str, request_id: int) -> Op[Row]:
    """A request, queued, running or finished (UnknownRequest if there is none)."""

    def decode(result: Result) -> Row:
        if not result.rows:
            raise UnknownRequest(f"unknown request {request_id} in region {region!r}")
        return result.rows[0]

    return Op("show_request", {"region": region, "id": request_id}, decode)


def cancel_request(region: str, request_id: int) -> Op[str]:
    """Cancel a queued request: ``cancelled``, or why not: ``running`` (a SEP has it) or
    ``finished`` (UnknownRequest if there is none)."""
    return Op(
        "cancel_request",
        {"region": region, "id": request_id},
        scalar("cancel_request", "outcome", str),
    )


REQUEST_STATES = ("queued", "dispatched", "running", "done", "failed", "cancelled")


def list_requests(
    region: str,
    *,
    state: str | None = None,
    transid: str | None = None,
    limit: int = 50,
    since: dt.datetime | None = None,
    before: int | None = None,
) -> Op[list[Row]]:
    """The region's requests, newest first (STATE, TRANSID: only those; SINCE: enqueued
    then or later; BEFORE: ids below it, the page after one that ended there)."""
    if state is not None and state not in REQUEST_STATES:
        raise InvalidValue(f"state must be one of {', '.join(REQUEST_STATES)}, not {state!r}")
    if transid is not None:
        check_text(transid, "the transaction id")
    params = {
        "region": region,
        "state": state,
        "transid": transid,
        "limit": limit,
        "since": since,
        "before": before,
    }
    return Op("list_requests", params, all_rows)


def request_by_key(region: str, key: str) -> Op[int | None]:
    """The newest request whose START reqid (idempotency key) is KEY; None: none."""
    return Op(
        "request_by_key",
        {"region": region, "key": key},
        lambda r: int(r.rows[0]["id"]) if r.rows else None,
    )


def retry_of(request_id: int) -> Op[Row | None]:
    """next_attempt and retry_in_s of a request that abended and waits to run again;
    None: it does not (it failed for good, or runs already)."""
    return Op("retry_of", {"id": request_id}, lambda r: r.rows[0] if r.rows else None)
