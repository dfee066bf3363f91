"""The OpenAPI 3.1 document of the HTTP front (served at ``/openapi.json``; a test
checks that it names exactly the routes the application serves)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi"]

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): _PROBLEM for s in statuses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REF = {
    "name": "ref",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
_ACCEPTED = {
    "type": "object",
    "required": ["request_id", "state"],
    "properties": {
        "request_id": {"type": "integer"},
        "state": {"type": "string"},
        "duplicate": {"type": "boolean"},
    },
}
_DONE = {
    "type": "object",
    "required": ["request_id", "state", "result"],
    "properties": {
        "request_id": {"type": "integer"},
        "state": {"const": "done"},
        "result": {},
        "duplicate": {"type": "boolean"},
    },
}
_TIMES = {"type": ["string", "null"], "format": "date-time"}
_REQUEST = {
    "type": "object",
    "required": ["request_id", "transid", "state", "attempt", "timings"],
    "properties": {
        "request_id": {"type": "integer"},
        "transid": {"type": "string"},
        "state": {
            "enum": ["queued", "dispatched", "running", "done", "failed", "cancelled"],
        },
        "attempt": {"type": "integer"},
        "origin": {"type": "string"},
        "result": {},
        "error": {"type": "object"},
        "timings": {
            "type": "object",
            "properties": {k: _TIMES for k in ("enqueued", "dispatched", "started", "finished")},
        },
    },
}
_TIMER = {
    "type": "object",
    "required": ["transid"],
    "properties": {
        "transid": {"type": "string"},
        "data": {},
        "after": {"type": "number", "minimum": 0, "description": "seconds from now"},
        "at": {"type": "string", "format": "date-time"},
        "cron": {"type": "string", "description": "five fields"},
        "tz": {"type": "string", "description": "time zone of cron (default UTC)"},
        "reqid": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,64}$"},
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["after"]}, {"required": ["at"]}, {"required": ["cron"]}],
}


def openapi() -> dict[str, Any]:
    """The OpenAPI document (a new dict each time)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dispatcher HTTP front",
            "version": "1",
            "description": "Requests and timers of a region over HTTP (docs/http.md). Errors "
            "are RFC 9457 problem documents whose `code` is that of docs/protocol.md.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "an RFC 9457 problem document",
                    "content": {
                        "application/problem+json": {
                            "schema": {
                                "type": "object",
                                "required": ["type", "title", "status", "detail", "code"],
                                "properties": {
                                    "type": {"type": "string", "format": "uri"},
                                    "title": {"type": "string"},
                                    "status": {"type": "integer"},
                                    "detail": {"type": "string"},
                                    "code": {"type": "string"},
                                    "retryable": {"type": "boolean"},
                                },
                            }
                        }
                    },
                }
            },
        },
        "paths": {
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "the OpenAPI document"}},
                }
            },
            "/v1/requests/{ref}": {
                "post": {
                    "summary": "Queue a request of transaction `ref` (a TRANSID) with the body "
                    "as its data",
                    "operationId": "enqueue",
                    "security": _AUTH,
                    "parameters": [
                        {**_REF, "description": "the TRANSID to run"},
                        {"name": "wait", "in": "query", "schema": {"type": "number"}},
                        {"name": "Prefer", "in": "header", "schema": {"type": "string"}},
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                        {"name": "Routing-Key", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {}}},
                    },
                    "responses": {
                        "202": _json(_ACCEPTED, "queued (Location: /v1/requests/{id})"),
                        "200": _json(_DONE, "finished within the wait"),
                        **_problems(400, 401, 403, 404, 413, 415, 500, 502, 503),
                    },
                },
                "get": {
                    "summary": "A request (`ref`: its id): state, result or error, timings",
                    "operationId": "show",
                    "security": _AUTH,
                    "parameters": [{**_REF, "description": "the request id"}],
                    "responses": {
                        "200": _json(_REQUEST, "the request"),
                        **_problems(400, 401, 404, 503),
                    },
                },
                "delete": {
                    "summary": "Cancel a queued request (`ref`: its id)",
                    "operationId": "cancel",
                    "security": _AUTH,
                    "parameters": [{**_REF, "description": "the request id"}],
                    "responses": {
                        "200": _json(_ACCEPTED, "cancelled"),
                        **_problems(400, 401, 403, 404, 409, 503),
                    },
                },
            },
            "/v1/timers": {
                "post": {
                    "summary": "START a transaction after a delay, at a time, or on a schedule",
                    "operationId": "start_timer",
                    "security": _AUTH,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _TIMER}},
                    },
                    "responses": {
                        "201": _json(
                            {"type": "object", "properties": {"reqid": {"type": "string"}}},
                            "the timer is set (Location: /v1/timers/{reqid})",
                        ),
                        **_problems(400, 401, 403, 404, 409, 413, 415, 503),
                    },
                }
            },
            "/v1/timers/{reqid}": {
                "delete": {
                    "summary": "CANCEL a pending timer or schedule",
                    "operationId": "cancel_timer",
                    "security": _AUTH,
                    "parameters": [
                        {
                            "name": "reqid",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "204": {"description": "cancelled"},
                        **_problems(401, 403, 404, 503),
                    },
                }
            },
        },
    }
