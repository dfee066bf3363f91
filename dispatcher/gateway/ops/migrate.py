"""The schema's revision, as Alembic records it (sql/queries/migrate.sql)."""

from __future__ import annotations

from ..op import Op, Result, scalar


def version_table_present() -> Op[bool]:
    return Op("version_table_present", {}, scalar("version_table_present", "present", bool))


def _revision(result: Result) -> str | None:
    return str(result.rows[0]["version_num"]) if result.rows else None


def alembic_revision() -> Op[str | None]:
    """The revision the database is at (None: no row)."""
    return Op("alembic_revision", {}, _revision)
