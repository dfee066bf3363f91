"""Hardening: capped retry backoff with jitter, timers on the database clock, no reaping
right after a database restart.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# sql/schema scripts of this revision, in order; each has a *_down.sql twin that puts
# back exactly what revision 0002 had
FILES = ["060_retries.sql", "061_timers.sql", "062_reap.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), [f.replace(".sql", "_down.sql") for f in reversed(FILES)])
