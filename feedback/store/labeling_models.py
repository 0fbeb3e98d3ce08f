"""The labeling workbench's tables: queues, their items, and who labeled what.

They share the feedback store's database and metadata (migration 0003) but hold no
judgments: a labeler's ranking, comparison, rating or demonstration goes through the
feedback path (broker → ingester → ``feedback``), and the assignment row keeps only the
``event_id`` it was sent under, plus what the feedback schema has no field for (the
labeler's per-answer flags, note and a "both bad" verdict) and the time it took.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from feedback.store.base import Base, SeqType


class LabelingQueueTable(Base):
    """A batch of labeling work: where its prompts came from, the task and its overlap."""

    __tablename__ = "labeling_queues"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # traffic | upload | candidate
    task: Mapped[str] = mapped_column(String(16))  # ranking | comparison | rating | demonstration
    k: Mapped[int] = mapped_column(Integer)
    samples_per_prompt: Mapped[int] = mapped_column(Integer)
    overlap: Mapped[int] = mapped_column(Integer)
    sampling: Mapped[dict] = mapped_column(JSON)
    candidate: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    live: Mapped[str | None] = mapped_column(String(256), nullable=True)
    instructions: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # open | closed
    created_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LabelingItemTable(Base):
    """One prompt with its answers, in canonical order (answer i is index i everywhere).

    ``answers`` is a list of ``{"text", "choice"?, "origin"?}``: ``choice`` is the index in
    the completion ``request_id`` (traffic and upload queues), ``origin`` is
    ``candidate`` or ``live`` (candidate queues). Neither is ever shown to a labeler.
    """

    __tablename__ = "labeling_items"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    queue_id: Mapped[int] = mapped_column(
        ForeignKey("labeling_queues.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    answers: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LabelingAssignmentTable(Base):
    """One item handed to one labeler: at most once per (item, labeler)."""

    __tablename__ = "labeling_assignments"
    __table_args__ = (UniqueConstraint("item_id", "labeler"),)

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(
        ForeignKey("labeling_items.id", ondelete="CASCADE"), index=True)
    queue_id: Mapped[int] = mapped_column(
        ForeignKey("labeling_queues.id", ondelete="CASCADE"), index=True)
    labeler: Mapped[str] = mapped_column(String(256), index=True)
    status: Mapped[str] = mapped_column(String(16))  # assigned | done | skipped
    display_order: Mapped[list] = mapped_column(JSON)  # slot s shows answer display_order[s]
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    event_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    flags: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
