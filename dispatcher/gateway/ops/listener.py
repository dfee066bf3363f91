"""Listeners and what they ask of the database: tokens, registration, heartbeat,
reaping, handing tasks to SEPs, session state, outcomes (sql/queries/listener.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from ..op import Op, Result, Row, all_rows, each, nothing, one_row, optional, scalar
from ..records import RequestOutcome, SessionNext, Token

__all__ = [
    "bind_session",
    "create_token",
    "find_token",
    "heartbeat_listener",
    "leave_listener",
    "list_tokens",
    "listener_ping",
    "notify_sep_dispatch",
    "outcomes",
    "reap_listeners",
    "register_listener",
    "revoke_token",
    "sep_address",
    "session_next",
]


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def create_token(
    region: str,
    name: str,
    token_hash: bytes,
    allow: Sequence[str] | None,
    priority: int,
    max_sessions: int | None = None,
) -> Op[Row]:
    """Create (or replace) token NAME, stored as its hash; the token's row. MAX_SESSIONS:
    how many sessions it may have open at once in the region (None: no limit)."""
    params = {
        "region": region,
        "name": name,
        "hash": token_hash,
        "allow": list(allow) if allow else None,
        "priority": priority,
        "max_sessions": max_sessions,
    }
    return Op("create_token", params, one_row("create_token"))


def find_token(region: str, token_hash: bytes) -> Op[Token | None]:
    """The token whose hash is TOKEN_HASH (None: no such token)."""
    params = {"region": region, "hash": token_hash}
    return Op("find_token", params, optional(Token.from_row))


def revoke_token(region: str, name: str) -> Op[bool]:
    """Delete token NAME (no new session may use it); False if there was none."""
    return Op("revoke_token", {"region": region, "name": name}, lambda r: bool(r.rows))


def list_tokens(region: str) -> Op[list[Row]]:
    """name, allow, priority, created_at of each token (never the token)."""
    return Op("list_tokens", {"region": region}, all_rows)


def register_listener(region: str, host: str, port: int, pid: int, address: str | None) -> Op[UUID]:
    """A new listener; its id."""
    params = {"region": region, "host": host, "port": port, "pid": pid, "address": address}
    return Op("register_listener", params, scalar("register_listener", "id", _uuid))


def heartbeat_listener(listener: UUID) -> Op[bool]:
    """The listener is alive; False when it was declared dead meanwhile."""
    return Op(
        "heartbeat_listener", {"listener": listener}, scalar("heartbeat_listener", "alive", bool)
    )


def leave_listener(listener: UUID) -> Op[int]:
    """The listener leaves; how many sessions it ended."""
    return Op("leave_listener", {"listener": listener}, scalar("leave_listener", "sessions", int))


def reap_listeners(region: str, dead_after_s: float) -> Op[int]:
    """Declare silent listeners dead; how many."""
    params = {"region": region, "dead_after_s": dead_after_s}
    return Op("reap_listeners", params, scalar("reap_listeners", "reaped", int))


def _address(result: Result) -> str | None:
    if not result.rows or not result.rows[0]["address"]:
        return None
    return str(result.rows[0]["address"])


def sep_address(sep: int) -> Op[str | None]:
    """The channel address of live SEP SEP (None: dead, or no channel)."""
    return Op("sep_address", {"sep": sep}, _address)


def notify_sep_dispatch(sep: int, request_id: int) -> Op[None]:
    """Wake SEP SEP with a NOTIFY naming the request dispatched to it."""
    return Op("notify_sep_dispatch", {"sep": sep, "request": request_id}, nothing)


def session_next(session: UUID) -> Op[SessionNext | None]:
    """The transaction (and COMMAREA) SESSION's next input goes to (None: no session)."""
    return Op("session_next", {"session": session}, optional(SessionNext.from_row))


def outcomes(ids: Sequence[int]) -> Op[list[RequestOutcome]]:
    """The finished requests among IDS."""
    return Op("outcomes", {"ids": list(ids)}, each(RequestOutcome.from_row))


def bind_session(session: UUID, sep: int) -> Op[None]:
    """SESSION's task is in a conversation with SEP (it fails if that SEP dies)."""
    return Op("bind_session", {"sep": sep, "session": session}, nothing)


def listener_ping() -> Op[bool]:
    """Does a query get through?"""
    return Op("listener_ping", {}, scalar("listener_ping", "ok", lambda v: v == 1))
