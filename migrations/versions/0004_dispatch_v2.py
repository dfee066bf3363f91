"""One clear shape: the dispatch procedures of version 2, in schema dispatcher_v2, built
from shared helpers (archive, assign, rest_sep, queue_candidates, ...) with one rule for
which request an idle SEP gets; enqueue answers with the task and the SEP's address.

Version 1 stays untouched in schema dispatcher, so SEPs and listeners of the previous
release keep working during an upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FILES = ["070_dispatch_v2.sql"]


def upgrade() -> None:
    run_sql_files(op.get_bind(), FILES)


def downgrade() -> None:
    run_sql_files(op.get_bind(), [f.replace(".sql", "_down.sql") for f in reversed(FILES)])
