"""Throughput: fewer statements per request on the hot path (history_row inlined,
tasks_of for a batch's tasks) and plans that stay on the indexes of a churning queue
table (sql/schema/090_throughput.sql), and one enqueue of an idempotency key at a time
(two requests for one key could be made by a race). Callers see no other change.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FILES = ["090_throughput.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), [f.replace(".sql", "_down.sql") for f in reversed(FILES)])
