"""The region database: tables, dispatch procedures, timers.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# sql/schema scripts this revision applies, in order
FILES = ["010_tables.sql", "020_procedures.sql", "030_listener.sql", "040_timers.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), ["000_drop.sql"])
