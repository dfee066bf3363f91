"""Errors raised by the region database, as Python exceptions.

The procedures raise SQLSTATEs of their own (class ``DP``); :func:`translate` turns
a psycopg error into the matching :class:`DispatcherError` subclass, keeping the
database's message, which is written for people.
"""

from __future__ import annotations

import psycopg

__all__ = [
    "CompletionRefused",
    "DatabaseUnavailable",
    "DispatcherError",
    "DuplicateTimer",
    "InvalidValue",
    "NoRoom",
    "PermissionDenied",
    "TooManySessions",
    "UnknownRegion",
    "UnknownRequest",
    "UnknownSEP",
    "UnknownSession",
    "UnknownTimer",
    "UnknownToken",
    "UnknownTransaction",
    "translate",
]


class DispatcherError(Exception):
    """Base of every error the dispatcher reports to a user."""

    code = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UnknownRegion(DispatcherError):
    code = "unknown_region"


class UnknownTransaction(DispatcherError):
    code = "unknown_transaction"


class InvalidValue(DispatcherError, ValueError):
    """A value out of range, or one PostgreSQL cannot store (also a ValueError)."""

    code = "invalid_value"


class CompletionRefused(DispatcherError):
    code = "completion_refused"


class UnknownSEP(DispatcherError):
    code = "unknown_sep"


class NoRoom(DispatcherError):
    code = "no_room"


class UnknownSession(DispatcherError):
    code = "unknown_session"


class UnknownRequest(DispatcherError):
    code = "unknown_request"


class DuplicateTimer(DispatcherError):
    code = "duplicate_timer"


class UnknownTimer(DispatcherError):
    code = "unknown_timer"


class UnknownToken(DispatcherError):
    code = "unauthorized"


class TooManySessions(DispatcherError):
    code = "too_many_sessions"


class PermissionDenied(DispatcherError):
    """The database refused the process's role the statement (least privilege)."""

    code = "permission_denied"


class DatabaseUnavailable(DispatcherError):
    """The database cannot be reached; the operation may be retried."""

    code = "database_unavailable"


_BY_SQLSTATE: dict[str, type[DispatcherError]] = {
    "DP001": UnknownRegion,
    "DP002": UnknownTransaction,
    "DP003": InvalidValue,
    "DP004": CompletionRefused,
    "DP005": UnknownSEP,
    "DP006": NoRoom,
    "DP007": UnknownSession,
    "DP009": UnknownRequest,
    "DP010": DuplicateTimer,
    "DP011": UnknownToken,
    "DP012": TooManySessions,
    "42501": PermissionDenied,  # insufficient privilege
    "22P02": InvalidValue,  # invalid text representation
    "22023": InvalidValue,  # invalid parameter value
    "23514": InvalidValue,  # check violation
    "22003": InvalidValue,  # numeric value out of range
}


def translate(exc: psycopg.Error) -> DispatcherError | None:
    """The DispatcherError for a database error, or None when it is not one of ours."""
    diag = exc.diag
    state = diag.sqlstate or ""
    cls = _BY_SQLSTATE.get(state)
    if cls is None and (state.startswith("22") or state == "54001"):
        # any data exception (a value PostgreSQL refuses: NUL, bad Unicode, out of range)
        # or a value too deeply nested to process is the sender's bad value, not a fault
        cls = InvalidValue
    if cls is None:
        if isinstance(exc, psycopg.OperationalError) and diag.sqlstate in (
            None,
            "57P01",
            "57P02",
            "57P03",
            "08006",
            "08003",
            "08001",
        ):
            return DatabaseUnavailable(f"database unavailable: {str(exc).strip()}")
        return None
    return cls(diag.message_primary or str(exc), diag.message_hint)
