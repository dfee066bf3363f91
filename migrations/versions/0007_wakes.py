"""Two wake-ups that could miss: a reaped listener's conversations end at once (its
SEPs are told on their channels), and wake_idle_sep wakes a SEP able to run what waits
(sql/schema/100_wakes.sql).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FILES = ["100_wakes.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), [f.replace(".sql", "_down.sql") for f in reversed(FILES)])
