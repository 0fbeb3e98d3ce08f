"""SQLAlchemy tables of the feedback store. Alembic migrations create them; keep in step.

All feedback kinds share one ``feedback`` table whose autoincrement ``seq`` is the store's
high-water mark: one sequence across kinds, so "everything up to seq N" names exactly
the data a training run used. Each kind has its own table keyed by that ``seq``.
Feedback that referenced a completion stores the resolved texts and policy version, so
training never has to join back to completions.

String lengths come from the bounds in ``core.events`` (which validation enforces), so an
event that validates always fits; ``tests/unit/feedback`` compares the two.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.events import MAX_EVENT_ID_CHARS, MAX_FINISH_REASON_CHARS, MAX_NAME_CHARS

# The labeling workbench's tables share this metadata, so Alembic sees them (migration 0003):
# importing Base from here (as the store, Alembic and the tests do) brings every table.
from feedback.store import labeling_models as _labeling_models  # noqa: F401
from feedback.store.base import Base, SeqType

EventId = String(MAX_EVENT_ID_CHARS)
Name = String(MAX_NAME_CHARS)


class CompletionTable(Base):
    __tablename__ = "completions"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(EventId)
    request_id: Mapped[str] = mapped_column(Name, unique=True)
    policy_version: Mapped[str] = mapped_column(Name, index=True)
    model: Mapped[str] = mapped_column(Name)
    endpoint: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text)
    messages: Mapped[list | None] = mapped_column(JSON, nullable=True)
    sampling_params: Mapped[dict] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(Name, nullable=True)
    purpose: Mapped[str] = mapped_column(String(8), default="train", server_default="train")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    choices: Mapped[list[CompletionChoiceTable]] = relationship(
        order_by="CompletionChoiceTable.idx", lazy="selectin", cascade="all, delete-orphan")


class CompletionChoiceTable(Base):
    __tablename__ = "completion_choices"

    completion_id: Mapped[int] = mapped_column(
        ForeignKey("completions.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(MAX_FINISH_REASON_CHARS),
                                                      nullable=True)
    completion_tokens: Mapped[int] = mapped_column(Integer)


class FeedbackTable(Base):
    """What every kind of feedback has in common; ``seq`` orders all of it."""

    __tablename__ = "feedback"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(EventId, unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    source: Mapped[str] = mapped_column(String(16))
    submitted_by: Mapped[str | None] = mapped_column(Name, nullable=True)
    request_id: Mapped[str | None] = mapped_column(Name, nullable=True, index=True)
    policy_version: Mapped[str | None] = mapped_column(Name, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ranking: Mapped[RankingTable | None] = relationship(cascade="all, delete-orphan")
    comparison: Mapped[ComparisonTable | None] = relationship(cascade="all, delete-orphan")
    rating: Mapped[RatingTable | None] = relationship(cascade="all, delete-orphan")
    demonstration: Mapped[DemonstrationTable | None] = relationship(
        cascade="all, delete-orphan")


class RankingTable(Base):
    """One ranking event: one prompt and its K ranked responses (the entries)."""

    __tablename__ = "rankings"

    seq: Mapped[int] = mapped_column(ForeignKey("feedback.seq", ondelete="CASCADE"),
                                     primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    entries: Mapped[list[RankingEntryTable]] = relationship(
        order_by="RankingEntryTable.position", lazy="selectin", cascade="all, delete-orphan")


class RankingEntryTable(Base):
    __tablename__ = "ranking_entries"

    seq: Mapped[int] = mapped_column(ForeignKey("rankings.seq", ondelete="CASCADE"),
                                     primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    choice_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)


class ComparisonTable(Base):
    __tablename__ = "comparisons"

    seq: Mapped[int] = mapped_column(ForeignKey("feedback.seq", ondelete="CASCADE"),
                                     primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    choice_a: Mapped[int | None] = mapped_column(Integer, nullable=True)
    choice_b: Mapped[int | None] = mapped_column(Integer, nullable=True)
    preferred: Mapped[str] = mapped_column(String(4))


class RatingTable(Base):
    __tablename__ = "ratings"

    seq: Mapped[int] = mapped_column(ForeignKey("feedback.seq", ondelete="CASCADE"),
                                     primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    choice_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)


class DemonstrationTable(Base):
    __tablename__ = "demonstrations"

    seq: Mapped[int] = mapped_column(ForeignKey("feedback.seq", ondelete="CASCADE"),
                                     primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    messages: Mapped[list | None] = mapped_column(JSON, nullable=True)
    response: Mapped[str] = mapped_column(Text)


class PendingFeedbackTable(Base):
    """Feedback whose completion has not arrived yet; resolved when it does."""

    __tablename__ = "pending_feedback"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(EventId, unique=True)
    request_id: Mapped[str] = mapped_column(Name, index=True)
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Where the feedback was read from, for the dead-letter headers if it is rejected later.
    source_partition: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ProcessedEventTable(Base):
    """Every event_id ever stored (or parked as pending): the deduplication set."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(EventId, primary_key=True)

