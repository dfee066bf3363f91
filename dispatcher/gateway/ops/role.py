"""Database roles of a region's processes (sql/queries/role.sql)."""

from __future__ import annotations

from ..op import Op, Row, one_row, scalar

__all__ = ["current_role", "may_take_role"]


def may_take_role(role: str) -> Op[bool]:
    """May this connection's login take ROLE? False when there is no such role."""
    return Op("may_take_role", {"role": role}, scalar("may_take_role", "may", bool))


def current_role() -> Op[Row]:
    """role: the role this connection works with; login: its login."""
    return Op("current_role", {}, one_row("current_role"))
