"""DELIVER: the built-in program that makes an outbound HTTP call (seed 004).

A request of DELIVER describes the call, in the seed's form or in lower case::

    {"UUID": "2313a6a1-...", "Url": "http://my-url/", "Method": "POST",
     "Body": "{}", "Header": {"Content-Type": "application/json"}, "Timeout": 1000}

``Timeout`` is in milliseconds (default 10,000, at most 300,000); ``Body`` is a string
sent as is, or any other JSON value sent as JSON. The request is committed before the
caller hears ``accepted`` (202 over HTTP), so the call survives any crash
(at-least-once: the target may see it more than once; it gets the ``UUID`` as an
``Idempotency-Key`` header to tell).

- 2xx: done; the result is ``{"status", "headers", "body"}`` (the body's first 64 KiB,
  as text: bytes that are not text in its charset and NULs become U+FFFD).
- 5xx, 408, 429, a connection error or a timeout: run again after the transaction's
  backoff (2, 4, 8, 16 s ... capped at ``max_backoff``), or after the target's
  ``Retry-After`` when that is later; after the last attempt the request is failed: a
  dead letter (``dispatcher request list --state failed --transid DELIVER``, then
  ``dispatcher request rerun ID``).
- Any other 4xx, a 3xx (redirects are not followed), or a description that is not a
  valid call (a bad URL or header): failed at once.

Run it on a SEP with ``--app sep.delivery`` (the sample app of ``dispatcher up`` has it
too). ``tx define DELIVER --max-attempts N --retry-backoff S`` changes the schedule.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import re
from typing import Any

import httpx

from dispatcher.values import shortened

from .program import GiveUp, RetryLater, program

__all__ = ["MAX_ATTEMPTS", "deliver", "describe"]

MAX_ATTEMPTS = 10
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_BODY_BACK = 64 * 1024
RETRY = {408, 429}


# a host name (letters of any script, digits, "-", ".", "_") or an IP address (IPv6
# without its brackets, as httpx gives it, with its zone)
_HOST = re.compile(r"[\w.-]+|[0-9A-Fa-f:.]+(%[\w.~-]+)?")
# RFC 9110 header names (tokens); values must not hold CR, LF, NUL or other controls
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # (C0 and C1 controls but tab)


def _text(value: str) -> str:
    """VALUE as text that the result can hold: a NUL (which JSON in PostgreSQL cannot
    store) becomes U+FFFD, like bytes that were not text in the response's charset."""
    return value.replace("\x00", "\ufffd")


def _field(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    return None


def describe(data: Any) -> dict[str, Any]:
    """The call DATA describes: url, method, headers, content, timeout (s), uuid;
    GiveUp when it is not a valid one (it would never succeed)."""
    if not isinstance(data, dict):
        raise GiveUp("a DELIVER request is a JSON object with at least Url")
    url = _field(data, "Url", "url")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise GiveUp(f"Url must be an http:// or https:// URL, not {shortened(repr(url), 200)}")
    try:
        parsed = httpx.URL(url)
        if not parsed.host:
            raise httpx.InvalidURL("no host")
        if not _HOST.fullmatch(parsed.host):
            raise httpx.InvalidURL(f"no such host name {parsed.host!r}")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise httpx.InvalidURL(f"port {parsed.port} is not 1-65535")
    except (httpx.InvalidURL, ValueError) as exc:  # (it would never succeed)
        raise GiveUp(f"Url {shortened(repr(url), 200)} is not a valid URL: {exc}") from None
    method = _field(data, "Method", "method") or "POST"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise GiveUp(f"Method must be one of {', '.join(METHODS)}, not {method!r}")
    headers = _field(data, "Header", "Headers", "headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise GiveUp("Header must be an object of strings")
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise GiveUp(
                f"Header name {shortened(repr(name), 200)} is not a valid HTTP header name"
            )
        if _BAD_VALUE.search(value):
            raise GiveUp(
                f"Header {name} holds a line break or control character (not allowed in HTTP)"
            )
    body = _field(data, "Body", "body")
    content = body.encode("utf-8") if isinstance(body, str) else None
    if body is not None and content is None:
        content = json.dumps(body).encode("utf-8")
        if not any(k.lower() == "content-type" for k in headers):
            headers = {**headers, "Content-Type": "application/json"}
    timeout_ms = _field(data, "Timeout", "timeout_ms", "timeout")
    if timeout_ms is None:
        timeout_ms = 10_000
    if (
        isinstance(timeout_ms, bool)
        or not isinstance(timeout_ms, int | float)
        or not 1 <= timeout_ms <= 300_000
    ):
        raise GiveUp(f"Timeout must be 1 to 300000 ms, not {timeout_ms!r}")
    uuid = _field(data, "UUID", "uuid")
    if uuid is not None and not isinstance(uuid, str):
        raise GiveUp("UUID must be a string")
    if uuid and not any(k.lower() == "idempotency-key" for k in headers):
        headers = {**headers, "Idempotency-Key": uuid}
    return {
        "url": url,
        "method": method.upper(),
        "headers": headers,
        "content": content,
        "timeout": timeout_ms / 1000,
        "uuid": uuid,
    }


def retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


@program(
    "DELIVER",
    max_attempts=MAX_ATTEMPTS,
    retry_backoff=2.0,
    max_backoff=3600.0,
    timeout=330,
)
def deliver(ctx: Any) -> Any:
    """Deliver an HTTP call, at least once, with retries (seed 004)."""
    call = describe(ctx.data)
    try:
        response = httpx.request(
            call["method"],
            call["url"],
            # values as UTF-8 (obs-text to HTTP: "sent as they are"; httpx would refuse
            # what is not ASCII)
            headers={k.encode("ascii"): v.encode("utf-8") for k, v in call["headers"].items()},
            content=call["content"],
            timeout=call["timeout"],
        )
    except httpx.TimeoutException as exc:
        raise RetryLater(f"{call['method']} {call['url']}: timed out ({exc})") from None
    except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        # the call itself is malformed: it would fail the same way every time
        raise GiveUp(f"{call['method']} {call['url']}: not a valid call ({exc})") from None
    except httpx.TransportError as exc:
        raise RetryLater(f"{call['method']} {call['url']}: cannot connect ({exc})") from None
    status = response.status_code
    if 200 <= status < 300:
        # delivered: the result must be storable whatever the target sent (a NUL, or
        # bytes that are not text), or the delivery would be made again
        return {
            "status": status,
            "headers": {_text(k): _text(v) for k, v in response.headers.items()},
            "body": _text(response.text[:MAX_BODY_BACK]),
        }
    what = f"{call['method']} {call['url']}: HTTP {status} {response.text[:200]!r}"
    if status >= 500 or status in RETRY:
        raise RetryLater(what, after=retry_after(response.headers.get("Retry-After")))
    raise GiveUp(what)
