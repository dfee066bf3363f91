"""No lost wake-up without a lock: a SEP that rests commits, then looks for work
(work_waiting); an enqueue that left a request queued commits, then hands queued
requests to the SEPs idle by then (dispatch_queued). The region's advisory lock, its
spin in the SEP and its waits in enqueues are gone (sql/schema/100_look_after_commit.sql).

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

FILES = ["100_look_after_commit.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), [f.replace(".sql", "_down.sql") for f in reversed(FILES)])
