"""Operating a region: session limits per token, the internal channel's secret, and
least-privilege roles for the region's processes (dispatcher_listener, dispatcher_sep,
dispatcher_monitor, dispatcher_operator; sql/schema/080_operations.sql).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FILES = ["080_operations.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), [f.replace(".sql", "_down.sql") for f in reversed(FILES)])
