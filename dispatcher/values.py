"""What a request's data may hold: the limits every entry point checks the same way.

A request's data (and a program's COMMAREA, and idempotency keys) is stored as
PostgreSQL ``jsonb``/``text``, which refuses some values that JSON allows. Every way
in (the listener, the CLI, timers, ``ctx.start``) checks a value here before it goes
to the database, so that a bad value fails alone with ``invalid_value`` and never
spoils a batch of other clients' requests:

- strings and object keys: no NUL character (U+0000) and no lone surrogate
  (U+D800-U+DFFF): PostgreSQL cannot store them;
- numbers: finite (no NaN or Infinity, which are not JSON), integers of at most 4,300
  digits (the most Python converts to and from text);
- nesting: at most :data:`MAX_DEPTH` levels of arrays/objects;
- size: where data arrives as text (a client frame, a CLI option or file) the text is
  at most :data:`MAX_DATA` bytes, the client frame limit.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from typing import Any

from .errors import InvalidValue

__all__ = [
    "MAX_DATA",
    "MAX_DEPTH",
    "MAX_KEY",
    "check_data",
    "check_reqid",
    "check_text",
    "check_timer_reqid",
    "row_json_default",
    "scrub",
]

MAX_DEPTH = 100
MAX_DATA = 1024 * 1024
MAX_KEY = 200  # an idempotency key, a routing key or a START reqid: 1-200 characters

_MAX_INT_BITS = 14280  # below this, an integer surely has at most 4,300 digits
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


def _bad_char(text: str, what: str, where: str) -> InvalidValue | None:
    found = _BAD_CHAR.search(text)
    if found is None:
        return None
    ch = found.group()
    kind = "a NUL character (U+0000)" if ch == "\x00" else f"a lone surrogate (U+{ord(ch):04X})"
    return InvalidValue(f"{what} holds {kind} at {where}: PostgreSQL cannot store it")


def _too_long(value: int) -> bool:
    """Has VALUE more than 4,300 decimal digits (the most Python converts to text)?"""
    try:
        str(value)
    except ValueError:
        return True
    return False


def check_text(text: str, what: str) -> None:
    """Raise InvalidValue if TEXT (a key, a name) cannot be stored as PostgreSQL text."""
    found = _BAD_CHAR.search(text)
    if found is not None:
        bad = _bad_char(text, what, f"character {found.start()}")
        assert bad is not None
        raise bad


def check_reqid(reqid: str) -> None:
    """Raise InvalidValue unless REQID can name a START's request: 1-200 characters
    that PostgreSQL can store, without "/". The idempotency keys of client sessions
    (socket and HTTP) are stored as NAME/KEY, scoped by the token's name: a START's
    reqid never has the shape of one, so the two never meet."""
    if not 0 < len(reqid) <= MAX_KEY:
        raise InvalidValue(f"a reqid is 1-{MAX_KEY} characters, not {len(reqid)}")
    if "/" in reqid:
        raise InvalidValue(
            "a reqid may not contain '/' (clients' idempotency keys are NAME/KEY, "
            "and a START's reqid must not be mistaken for one)"
        )
    check_text(reqid, "the reqid")


_TIMER_REQID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
# what can name a transaction (the CHECK of dispatcher.transaction.transid)
_TRANSID = re.compile(r"[A-Za-z0-9_.$#@-]{1,32}")


def shortened(text: str, limit: int) -> str:
    """TEXT cut to LIMIT characters and "..." when longer (a value shown in a message)."""
    return text if len(text) <= limit else text[:limit] + "..."


def transid_problem(transid: str) -> str | None:
    """Why no transaction can have the name TRANSID (1-32 letters, digits or _.$#@-),
    in a short message; None when one could."""
    if _TRANSID.fullmatch(transid) is not None:
        return None
    shown = shortened(transid, 40)
    return f"no transaction {shown!r}: a transaction id is 1-32 letters, digits or _.$#@-"


def check_timer_reqid(reqid: str) -> None:
    """Raise InvalidValue unless REQID can name a timer: 1-64 letters, digits or _.:@-
    (the rule of dispatcher_xr.set_timer_v1, checked before the database is asked)."""
    if _TIMER_REQID.fullmatch(reqid) is None:
        raise InvalidValue(f"invalid REQID {reqid!r}: 1-64 letters, digits or _.:@-")


def check_data(value: Any, what: str = "data") -> None:
    """Raise InvalidValue if VALUE cannot be stored as a request's data (see module doc).

    Iterative (no recursion), so any depth is refused cleanly; cost is one pass over
    the value.
    """
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            bad = _bad_char(v, what, path)
            if bad is not None:
                raise bad
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if v.bit_length() > _MAX_INT_BITS and _too_long(v):
                raise InvalidValue(f"{what} holds an integer of over 4,300 digits at {path}")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InvalidValue(f"{what} holds {v!r} at {path}: numbers must be finite")
        elif isinstance(v, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise InvalidValue(f"{what} is nested deeper than {MAX_DEPTH} levels (at {path})")
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise InvalidValue(f"{what} has a non-string key {k!r} at {path}")
                    bad = _bad_char(k, what, f"a key of {path}")
                    if bad is not None:
                        raise bad
                    stack.append((item, f"{path}.{k[:40]}", depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        else:
            kind = type(v).__name__
            article = "an" if kind[:1].lower() in "aeiou" else "a"
            raise InvalidValue(f"{what} holds {article} {kind} at {path}: not JSON")


def scrub(value: Any) -> Any:
    """VALUE with every character PostgreSQL cannot store (NUL, lone surrogates) in its
    strings and keys replaced by U+FFFD: for text the dispatcher writes itself about a
    failure (an error message, a traceback), which must be stored whatever it quotes."""
    if isinstance(value, str):
        return _BAD_CHAR.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub(str(k)): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def row_json_default(value: Any) -> Any:
    """The JSON of what a database row holds beyond JSON's types (``json.dumps``'s
    ``default``), for rows shown to people: the CLI's listings, the status page."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")
