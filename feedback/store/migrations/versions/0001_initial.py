"""Initial schema: completions, feedback (one seq for all kinds) and its kinds, pending, dedup.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit sequence.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def _seq_fk(parent: str) -> list:
    """The primary key of a feedback kind's table: the seq of its feedback row."""
    return [sa.Column("seq", SEQ, nullable=False),
            sa.ForeignKeyConstraint(["seq"], [f"{parent}.seq"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("seq")]


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column("id", SEQ, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("policy_version", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=True),
        sa.Column("sampling_params", sa.JSON(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("stored_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index(op.f("ix_completions_policy_version"), "completions", ["policy_version"])
    op.create_table(
        "completion_choices",
        sa.Column("completion_id", SEQ, nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["completion_id"], ["completions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("completion_id", "idx"),
    )
    op.create_table(
        "feedback",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("submitted_by", sa.String(256), nullable=True),
        sa.Column("request_id", sa.String(256), nullable=True),
        sa.Column("policy_version", sa.String(256), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("stored_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(op.f("ix_feedback_kind"), "feedback", ["kind"])
    op.create_index(op.f("ix_feedback_request_id"), "feedback", ["request_id"])
    op.create_table("rankings", sa.Column("prompt", sa.Text(), nullable=False),
                    *_seq_fk("feedback"))
    op.create_table(
        "ranking_entries",
        sa.Column("seq", SEQ, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("choice_index", sa.Integer(), nullable=True),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["seq"], ["rankings.seq"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq", "position"),
    )
    op.create_table(
        "comparisons",
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response_a", sa.Text(), nullable=False),
        sa.Column("response_b", sa.Text(), nullable=False),
        sa.Column("choice_a", sa.Integer(), nullable=True),
        sa.Column("choice_b", sa.Integer(), nullable=True),
        sa.Column("preferred", sa.String(4), nullable=False),
        *_seq_fk("feedback"),
    )
    op.create_table(
        "ratings",
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("choice_index", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        *_seq_fk("feedback"),
    )
    op.create_table(
        "demonstrations",
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=True),
        sa.Column("response", sa.Text(), nullable=False),
        *_seq_fk("feedback"),
    )
    op.create_table(
        "pending_feedback",
        sa.Column("id", SEQ, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(op.f("ix_pending_feedback_request_id"), "pending_feedback", ["request_id"])
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )


def downgrade() -> None:
    for table in ("processed_events", "pending_feedback", "demonstrations", "ratings",
                  "comparisons", "ranking_entries", "rankings", "feedback",
                  "completion_choices", "completions"):
        op.drop_table(table)
