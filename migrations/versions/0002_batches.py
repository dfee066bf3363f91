"""SEP-side batching: sep.held, claim_batch_v1, complete_many_v1.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

from dispatcher.migrate import run_sql_files

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_files(op.get_bind(), ["050_batches.sql"])


def downgrade() -> None:
    run_sql_files(op.get_bind(), ["050_batches_down.sql"])
