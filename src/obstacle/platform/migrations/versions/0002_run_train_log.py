"""The run's training log: the key and hash of its uploaded train_log.jsonl on the run row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("train_log_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("train_log_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("train_log_entries", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("train_log_store_key", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("train_log_store_key")
        batch_op.drop_column("train_log_entries")
        batch_op.drop_column("train_log_size_bytes")
        batch_op.drop_column("train_log_sha256")
