"""Client sessions (sql/queries/session.sql)."""

from __future__ import annotations

from uuid import UUID

from ..op import Op, Result, scalar
from ..records import Token


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def register_session(
    region: str, listener: UUID | None = None, user: str = "", priority: int = 0
) -> Op[UUID]:
    """A new session of USER (on LISTENER); its id."""
    params = {"region": region, "listener": listener, "user": user, "priority": priority}
    return Op("register_session", params, scalar("register_session", "id", _uuid))


def open_session(region: str, listener: UUID | None, token_hash: bytes) -> Op[tuple[UUID, Token]]:
    """A client's hello: the token whose hash is TOKEN_HASH opens a session on LISTENER;
    the session's id and the token's rights. UnknownToken: no such token;
    TooManySessions: the token's max sessions are open."""

    def decode(r: Result) -> tuple[UUID, Token]:
        row = r.rows[0]
        return _uuid(row["id"]), Token.from_row(row)

    params = {"region": region, "listener": listener, "hash": token_hash}
    return Op("open_session", params, decode)


def end_session(session: UUID) -> Op[bool]:
    """End a session; False when it had ended already."""
    return Op("end_session", {"session": session}, scalar("end_session", "ended", bool))
