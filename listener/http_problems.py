"""Problem documents (RFC 9457) of the HTTP front: the error answers, with the codes of
the socket protocol (docs/protocol.md) and the few the HTTP front adds (docs/http.md).

A handler raises :class:`Problem`; :func:`make_problem_middleware` turns it, aiohttp's own
404 and 405, and any unexpected failure into an ``application/problem+json`` answer."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dispatcher.errors import DispatcherError
from dispatcher.protocol import ERRORS

__all__ = [
    "HTTP_CODES",
    "PROBLEM_TYPE",
    "Problem",
    "from_error",
    "make_problem_middleware",
    "problem_response",
]

PROBLEM_TYPE = "urn:dispatcher:problem:"  # + the code: a problem's "type" URI

# the codes the HTTP front adds to docs/protocol.md (code -> retryable)
HTTP_CODES: dict[str, bool] = {
    "not_found": False,  # no such route
    "method_not_allowed": False,  # the route exists, not with this method
    "unsupported_media_type": False,  # a body that is not application/json
    "request_running": False,  # DELETE of a request a SEP has already
    "request_finished": False,  # DELETE of a finished request
    "unknown_timer": False,  # DELETE of a timer that fired, was cancelled, never was
    "duplicate_timer": False,  # POST /v1/timers with a reqid in use
}

# the status of each code (a code not named here: 400)
STATUS: dict[str, int] = {
    "bad_frame": 400,
    "invalid_value": 400,
    "frame_too_large": 413,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_transaction": 404,
    "unknown_request": 404,
    "unknown_timer": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "request_running": 409,
    "request_finished": 409,
    "duplicate_timer": 409,
    "abend": 500,
    "sep_lost": 502,
    "cancelled": 409,
    "internal": 500,
    "database_unavailable": 503,
    "shutting_down": 503,
}

TITLES: dict[str, str] = {
    "bad_frame": "Malformed request",
    "invalid_value": "Value out of range",
    "frame_too_large": "Body too large",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "unknown_transaction": "Unknown transaction",
    "unknown_request": "Unknown request",
    "unknown_timer": "Unknown timer",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "unsupported_media_type": "Unsupported media type",
    "request_running": "Request already running",
    "request_finished": "Request already finished",
    "duplicate_timer": "Duplicate timer",
    "abend": "The program failed",
    "sep_lost": "The SEP running the request was lost",
    "cancelled": "The request was cancelled",
    "internal": "Internal error",
    "database_unavailable": "Database unavailable",
    "shutting_down": "Shutting down",
}


class Problem(Exception):
    """An error answer: CODE (its status follows), DETAIL for people, EXTRA members of
    the problem document, HEADERS of the answer."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else STATUS.get(code, 400)
        self.headers = headers or {}
        self.extra = extra


def from_error(exc: DispatcherError) -> Problem:
    """The problem for a DispatcherError (a code of its own, else invalid_value, as the
    socket listener answers a value the database refused)."""
    code = exc.code if exc.code in STATUS else "invalid_value"
    headers = {"Retry-After": "1"} if code == "database_unavailable" else None
    return Problem(code, exc.message, headers=headers)


def problem_response(p: Problem) -> web.Response:
    retryable = ERRORS.get(p.code, HTTP_CODES.get(p.code, False))
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + p.code,
        "title": TITLES.get(p.code, p.code),
        "status": p.status,
        "detail": p.detail,
        "code": p.code,
        "retryable": retryable,
        **p.extra,
    }
    return web.Response(
        status=p.status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
        headers=p.headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_problem_middleware(log: Any) -> Any:
    @web.middleware
    async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as p:
            return problem_response(p)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return problem_response(
                Problem(
                    "method_not_allowed",
                    f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
                    headers={"Allow": allowed},
                )
            )
        except web.HTTPNotFound:
            return problem_response(Problem("not_found", f"no route {request.path}"))
        except web.HTTPRequestEntityTooLarge as exc:
            return problem_response(Problem("frame_too_large", exc.text or "body too large"))
        except web.HTTPException:
            raise
        except Exception as exc:
            log.exception("http_request_failed", method=request.method, path=request.path)
            return problem_response(Problem("internal", f"{type(exc).__name__}: {exc}"))

    return problem_middleware
