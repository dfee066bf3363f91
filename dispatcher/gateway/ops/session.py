"""Client sessions (sql/queries/session.sql)."""

from __future__ import annotations

from uuid import UUID

from ..op import Op, scalar


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def register_session(
    region: str, listener: UUID | None = None, user: str = "", priority: int = 0
) -> Op[UUID]:
    """A new session of USER (on LISTENER); its id."""
    params = {"region": region, "listener": listener, "user": user, "priority": priority}
    return Op("register_session", params, scalar("register_session", "id", _uuid))


def end_session(session: UUID) -> Op[bool]:
    """End a session; False when it had ended already."""
    return Op("end_session", {"session": session}, scalar("end_session", "ended", bool))
