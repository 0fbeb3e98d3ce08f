"""Labeling workbench: queues, items and assignments (no judgments: those are feedback).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "labeling_queues",
        sa.Column("id", SEQ, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("samples_per_prompt", sa.Integer(), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("sampling", sa.JSON(), nullable=False),
        sa.Column("candidate", sa.String(256), nullable=True),
        sa.Column("live", sa.String(256), nullable=True),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_labeling_queues_candidate"), "labeling_queues", ["candidate"])
    op.create_table(
        "labeling_items",
        sa.Column("id", SEQ, autoincrement=True, nullable=False),
        sa.Column("queue_id", SEQ, nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=True),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["queue_id"], ["labeling_queues.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_labeling_items_queue_id"), "labeling_items", ["queue_id"])
    op.create_table(
        "labeling_assignments",
        sa.Column("id", SEQ, autoincrement=True, nullable=False),
        sa.Column("item_id", SEQ, nullable=False),
        sa.Column("queue_id", SEQ, nullable=False),
        sa.Column("labeler", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("display_order", sa.JSON(), nullable=False),
        sa.Column("assigned_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("event_id", sa.String(128), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["item_id"], ["labeling_items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["queue_id"], ["labeling_queues.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id", "labeler"),
    )
    for column in ("item_id", "queue_id", "labeler", "event_id"):
        op.create_index(op.f(f"ix_labeling_assignments_{column}"), "labeling_assignments",
                        [column])


def downgrade() -> None:
    for table in ("labeling_assignments", "labeling_items", "labeling_queues"):
        op.drop_table(table)
