"""Completions get a purpose (train/eval); pending feedback remembers its Kafka origin.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond ADD COLUMN, and batch
    # keeps the downgrade symmetrical there.
    with op.batch_alter_table("completions") as t:
        t.add_column(sa.Column("purpose", sa.String(8), nullable=False,
                               server_default="train"))
    with op.batch_alter_table("pending_feedback") as t:
        t.add_column(sa.Column("source_partition", sa.Integer(), nullable=True))
        t.add_column(sa.Column("source_offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pending_feedback") as t:
        t.drop_column("source_offset")
        t.drop_column("source_partition")
    with op.batch_alter_table("completions") as t:
        t.drop_column("purpose")
