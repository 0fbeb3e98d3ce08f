"""The feedback store: one transactional write path for the ingester, one query API for training.

The same code runs on SQLite (the local default) and PostgreSQL (production). Writes are
idempotent on ``event_id``: an event already in ``processed_events`` is skipped, so a
crashed ingester that replays a batch never double-counts.

Feedback the store will not take (a choice its completion lacks, a user judging another
user's completion, feedback parked longer than its TTL) comes back as a
:class:`Rejection` for the dead-letter topic, with the Kafka origin of the feedback when
known (parked feedback remembers the partition and offset it was read from).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from core.events import (
    CompletionChoice,
    CompletionRecord,
    Event,
    InvalidEvent,
    decode_event,
    encode_event,
    event_key,
)
from feedback.store.bulk import insert_all, insert_feedback, insert_new, table_of
from feedback.store.errors import describe, is_transient
from feedback.store.models import (
    ComparisonTable,
    CompletionChoiceTable,
    CompletionTable,
    DemonstrationTable,
    FeedbackTable,
    PendingFeedbackTable,
    ProcessedEventTable,
    RankingTable,
)
from feedback.store.resolve import (
    CompletionView,
    Feedback,
    FeedbackRows,
    Row,
    build_feedback_rows,
    comparison_ranks,
    needs_completion,
)

PendingRow = Any
"""A row of ``pending_feedback`` as read (attribute access by column name)."""

FEEDBACK_KINDS = ("ranking", "comparison", "rating", "demonstration")


@dataclass(frozen=True)
class PreferenceGroup:
    """One prompt's K responses; rank 1 = best; equal ranks = tie."""

    seq: int
    prompt: str
    responses: list[str]
    ranks: list[int]
    source: str
    policy_version: str | None
    request_id: str | None


@dataclass(frozen=True)
class DemonstrationRow:
    seq: int
    prompt: str
    response: str
    source: str = "labeler"  # who submitted it: user, labeler or admin


Origin = tuple[int, int]
"""Where an event was read from: (partition, offset) on its topic."""


@dataclass(frozen=True)
class Rejection:
    """Feedback that was not stored, for the dead-letter topic.

    ``value`` is the event as JSON (the ingester sends the original bytes instead when the
    record is in the batch at hand); ``partition``/``offset`` are its Kafka origin, ``None``
    when unknown (feedback parked before the origin was recorded).
    """

    event_id: str
    value: bytes
    key: bytes | None
    reason: str
    partition: int | None = None
    offset: int | None = None


@dataclass
class PersistResult:
    """What one ``persist`` call did. ``rejected`` events were not stored: dead-letter them."""

    completions: int = 0
    feedback: int = 0
    pending: int = 0
    resolved: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.completions + self.feedback + self.pending

    def add(self, other: PersistResult) -> None:
        """Fold another call's result into this one (the one-by-one fallback)."""
        self.completions += other.completions
        self.feedback += other.feedback
        self.pending += other.pending
        self.resolved += other.resolved
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)


def _rejection(event: Event, reason: str, origin: Origin | None) -> Rejection:
    partition, offset = origin if origin is not None else (None, None)
    return Rejection(event.event_id, encode_event(event), event_key(event), reason,
                     partition, offset)


def postgres_driver(url: URL) -> URL:
    """``postgresql://`` with whichever driver is installed (SQLAlchemy 2.1 assumes psycopg 3).

    The Helm chart and tests pass plain ``postgresql://`` URLs; psycopg2-binary is what
    the ``postgres`` extra installs.
    """
    if url.drivername != "postgresql" or importlib.util.find_spec("psycopg"):
        return url
    return url.set(drivername="postgresql+psycopg2")


def create_store_engine(url: str, echo: bool = False) -> Engine:
    """An engine for ``url``; for SQLite: parent dir created, WAL, FKs, immediate writes."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite"):
        return create_engine(postgres_driver(u), echo=echo, pool_pre_ping=True)
    memory = u.database in (None, "", ":memory:")
    if not memory:
        Path(str(u.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False},
                           **({"poolclass": StaticPool} if memory else {}))
    _configure_sqlite(engine, wal=not memory)
    return engine


def _configure_sqlite(engine: Engine, wal: bool) -> None:
    """Let SQLAlchemy own transactions so that writers can take the lock up front.

    A deferred SQLite transaction that reads and then writes can fail with SQLITE_BUSY
    when another writer got there first; ``BEGIN IMMEDIATE`` (for connections marked
    ``immediate``) waits for the lock instead.
    """
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class FeedbackStore:
    """Writes events (``persist``) and answers training's queries."""

    def __init__(self, url: str, echo: bool = False):
        self.url = url
        self.engine = create_store_engine(url, echo=echo)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (``alembic upgrade head``)."""
        from feedback.store.migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------

    def persist(self, events: Sequence[Event],
                origins: Mapping[str, Origin] | None = None) -> PersistResult:
        """Store a batch in ONE transaction; idempotent on event_id.

        Feedback is joined to its completion (stored earlier or in this batch); feedback
        whose completion is unknown is parked in ``pending_feedback`` (with its origin from
        ``origins``, keyed by event_id) and stored when the completion arrives. Feedback that
        does not fit its completion is returned in ``result.rejected`` (not stored, not
        marked processed) for the dead-letter topic. Database errors propagate (see
        ``feedback.store.errors`` for which of them are worth a retry).

        Each table gets one bulk insert per batch (``bulk.py``); the counts are the rows the
        database reports inserted.
        """
        origins = origins or {}
        result = PersistResult()
        now = datetime.now(UTC)
        with self._writer() as conn:
            fresh = self._claim(conn, events, result)
            completions = [e for e in fresh if isinstance(e, CompletionRecord)]
            feedback = [e for e in fresh if not isinstance(e, CompletionRecord)]
            arrived = self._insert_completions(conn, completions, now, result)
            views = {**self._load_views(conn, feedback, arrived), **arrived}
            self._store_feedback(conn, feedback, views, now, result, origins)
            self._unclaim(conn, result.rejected)  # so far only this batch's own
            self._resolve_pending(conn, arrived, now, result)
        return result

    @contextmanager
    def _writer(self) -> Iterator[Connection]:
        """A connection in a write transaction that holds the writers' lock.

        On PostgreSQL, one writer at a time, so seq order equals commit order. Otherwise a
        reader could see seq 10 committed while seq 9 is still in flight, and a training
        snapshot "up to the high-water mark" would silently miss seq 9. On SQLite, BEGIN
        IMMEDIATE (the ``immediate`` option) serializes writers.
        """
        with self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("LOCK TABLE feedback IN SHARE ROW EXCLUSIVE MODE")
            yield conn

    def _claim(self, conn: Connection, events: Sequence[Event],
               result: PersistResult) -> list[Event]:
        """Mark the batch's event_ids processed; the events whose id was not yet (the first
        of each id in the batch). The others are duplicates. One INSERT … ON CONFLICT DO
        NOTHING RETURNING both checks and marks, under the writers' lock."""
        first: dict[str, Event] = {}
        for e in events:
            first.setdefault(e.event_id, e)
        claimed = {event_id for event_id, in insert_new(
            conn, ProcessedEventTable, "event_id", [{"event_id": i} for i in first],
            ("event_id",))}
        fresh = [e for i, e in first.items() if i in claimed]
        result.duplicates += len(events) - len(fresh)
        return fresh

    def _unclaim(self, conn: Connection, rejected: list[Rejection]) -> None:
        """Rejected events are not processed: a replay is judged again (and rejected)."""
        if rejected:
            conn.execute(delete(ProcessedEventTable).where(
                ProcessedEventTable.event_id.in_([r.event_id for r in rejected])))

    def _insert_completions(self, conn: Connection, completions: list[CompletionRecord],
                            now: datetime, result: PersistResult) -> dict[str, CompletionView]:
        """Insert new completions and their choices; the views of the ones inserted.

        A request_id stored before (or earlier in the batch) counts as a duplicate.
        """
        first: dict[str, CompletionRecord] = {}
        for c in completions:
            first.setdefault(c.request_id, c)
        ids: dict[str, int] = dict(insert_new(  # type: ignore[arg-type]
            conn, CompletionTable, "request_id",
            [_completion_values(c, now) for c in first.values()], ("request_id", "id")))
        insert_all(conn, CompletionChoiceTable, [
            {"completion_id": ids[rid], "idx": ch.index, "text": ch.text,
             "finish_reason": ch.finish_reason, "completion_tokens": ch.completion_tokens}
            for rid, c in first.items() if rid in ids for ch in c.choices])
        result.completions += len(ids)
        result.duplicates += len(completions) - len(ids)
        return {rid: CompletionView.of_event(first[rid]) for rid in ids}

    def _load_views(self, conn: Connection, feedback: Iterable[Feedback],
                    known: dict[str, CompletionView]) -> dict[str, CompletionView]:
        """The stored completions that feedback of this batch refers to."""
        wanted = {f.request_id for f in feedback
                  if needs_completion(f) and f.request_id not in known}
        if not wanted:
            return {}
        c, ch = CompletionTable, CompletionChoiceTable
        rows = conn.execute(select(c.id, c.request_id, c.prompt, c.policy_version, c.user)
                            .where(c.request_id.in_(wanted))).all()
        texts: dict[int, dict[int, str]] = {r.id: {} for r in rows}
        for cid, idx, text in conn.execute(select(ch.completion_id, ch.idx, ch.text)
                                           .where(ch.completion_id.in_(texts))):
            texts[cid][idx] = text
        return {r.request_id: CompletionView(r.request_id, r.prompt, r.policy_version,
                                             texts[r.id], r.user) for r in rows}

    def _store_feedback(self, conn: Connection, feedback: list[Feedback],
                        views: dict[str, CompletionView], now: datetime,
                        result: PersistResult, origins: Mapping[str, Origin]) -> None:
        """Store joined feedback, park the feedback whose completion is unknown, and reject
        what does not fit into ``result``."""
        rows: list[FeedbackRows] = []
        parked: list[Row] = []
        for fb in feedback:
            origin = origins.get(fb.event_id)
            if needs_completion(fb) and fb.request_id not in views:
                parked.append(_pending_values(fb, now, origin))
            else:
                try:
                    rows.append(build_feedback_rows(fb, views.get(fb.request_id or ""), now))
                except InvalidEvent as e:
                    result.rejected.append(_rejection(fb, e.reason, origin))
        stored = len(insert_feedback(conn, rows))
        waiting = len(insert_new(conn, PendingFeedbackTable, "event_id", parked, ("id",)))
        result.feedback += stored
        result.pending += waiting
        result.duplicates += len(rows) - stored + len(parked) - waiting

    def _resolve_pending(self, conn: Connection, arrived: dict[str, CompletionView],
                         now: datetime, result: PersistResult) -> None:
        """Store the pending feedback whose completion arrived in this batch.

        Each parked event is written under its own SAVEPOINT, so one that the database
        refuses is rejected alone instead of failing the completion that resolved it.
        """
        if not arrived:
            return
        pending = table_of(PendingFeedbackTable)
        parked = conn.execute(select(pending).where(pending.c.request_id.in_(arrived))
                              .order_by(pending.c.id)).all()
        for p in parked:
            reason = self._resolve_one(conn, p, arrived[p.request_id], now)
            if reason is None:
                result.resolved += 1
            else:
                result.rejected.append(_parked_rejection(p, reason))
        if parked:
            conn.execute(delete(pending).where(pending.c.id.in_([p.id for p in parked])))

    def _resolve_one(self, conn: Connection, p: PendingRow, completion: CompletionView,
                     now: datetime) -> str | None:
        """Store one parked event; the reason it cannot be stored, or None when it was."""
        try:
            rows = build_feedback_rows(decode_event(p.payload.encode()), completion, now)
        except InvalidEvent as e:
            return e.reason
        try:
            with conn.begin_nested():
                insert_feedback(conn, [rows])
        except Exception as e:  # noqa: BLE001 - classified: transient ones propagate
            if is_transient(e):
                raise
            return describe(e)
        return None

    def expire_pending(self, older_than: datetime,
                       dead_letter: Callable[[list[Rejection]], None],
                       limit: int = 1000) -> int:
        """Give up on feedback parked since before ``older_than``: its completion never came.

        ``dead_letter`` receives the expired feedback inside the transaction that deletes
        it and must raise if it cannot deliver, so an expired event is either still parked
        or delivered, never lost (a crash between delivery and commit delivers it twice).
        Returns how many expired (at most ``limit`` per call).
        """
        pending = table_of(PendingFeedbackTable)
        expired = pending.c.received_at < older_than
        with self._sessions() as s:  # cheap check first: no write lock when nothing expired
            if s.scalar(select(pending.c.id).where(expired).limit(1)) is None:
                return 0
        with self._writer() as conn:
            rows = conn.execute(select(pending).where(expired)
                                .order_by(pending.c.id).limit(limit)).all()
            if not rows:
                return 0
            dead_letter([_parked_rejection(p, _never_stored(p)) for p in rows])
            conn.execute(delete(pending).where(pending.c.id.in_([p.id for p in rows])))
        return len(rows)

    # -- reading ---------------------------------------------------------------------------

    def high_water_mark(self) -> int:
        """The largest feedback seq stored, 0 when empty; names a training data snapshot."""
        with self._sessions() as s:
            return s.scalar(select(func.coalesce(func.max(FeedbackTable.seq), 0))) or 0

    def preference_groups(self, since: int = 0, until: int | None = None
                          ) -> list[PreferenceGroup]:
        """Rankings and comparisons (as K=2) with seq in (since, until], in seq order."""
        with self._sessions() as s:
            rankings = s.execute(_window(select(FeedbackTable, RankingTable)
                                         .join(RankingTable), since, until)).all()
            comparisons = s.execute(_window(select(FeedbackTable, ComparisonTable)
                                            .join(ComparisonTable), since, until)).all()
            groups = [_ranking_group(f, r) for f, r in rankings]
            groups += [_comparison_group(f, c) for f, c in comparisons]
        return sorted(groups, key=lambda g: g.seq)

    def demonstrations(self, since: int = 0, until: int | None = None
                       ) -> list[DemonstrationRow]:
        """Demonstrations with seq in (since, until], in seq order."""
        with self._sessions() as s:
            q = select(DemonstrationTable, FeedbackTable.source).join(
                FeedbackTable, FeedbackTable.seq == DemonstrationTable.seq)
            rows = s.execute(_window(q, since, until, DemonstrationTable.seq)).all()
            return [DemonstrationRow(r.seq, r.prompt, r.response, src) for r, src in rows]

    def recent_prompts(self, limit: int = 1000) -> list[str]:
        """Distinct prompts of recent traffic, newest first (PPO's prompt distribution)."""
        newest = func.max(CompletionTable.id)
        q = (select(CompletionTable.prompt).group_by(CompletionTable.prompt)
             .order_by(newest.desc()).limit(limit))
        with self._sessions() as s:
            return list(s.scalars(q))

    def completion_mark(self) -> int:
        """The largest completion id stored, 0 when empty; pins PPO's prompt pool."""
        with self._sessions() as s:
            return s.scalar(select(func.coalesce(func.max(CompletionTable.id), 0))) or 0

    def prompt_pool(self, until: int | None = None, limit: int = 100_000
                    ) -> list[tuple[str, str | None]]:
        """(prompt, user) of completions with id ≤ ``until``, newest first, one row per
        distinct pair; completions logged with ``purpose = "eval"`` are left out when the
        table has that column. PPO dedupes, caps per user and drops gate prompts."""
        newest = func.max(CompletionTable.id)
        q = select(CompletionTable.prompt, CompletionTable.user)
        if until is not None:
            q = q.where(CompletionTable.id <= until)
        purpose = getattr(CompletionTable, "purpose", None)
        if purpose is not None:
            q = q.where((purpose.is_(None)) | (purpose != "eval"))
        q = (q.group_by(CompletionTable.prompt, CompletionTable.user)
             .order_by(newest.desc()).limit(limit))
        with self._sessions() as s:
            return [(p, u) for p, u in s.execute(q).all()]

    def counts(self, until: int | None = None) -> dict[str, int]:
        """Rows per kind (feedback up to ``until``), plus completions and pending."""
        q = select(FeedbackTable.kind, func.count()).group_by(FeedbackTable.kind)
        if until is not None:
            q = q.where(FeedbackTable.seq <= until)
        with self._sessions() as s:
            out = dict.fromkeys(FEEDBACK_KINDS, 0)
            out.update({k: n for k, n in s.execute(q).all()})
            out["completions"] = s.scalar(select(func.count()).select_from(CompletionTable)) or 0
            out["pending"] = s.scalar(select(func.count()).select_from(PendingFeedbackTable)) or 0
            return out

    def pending_summary(self) -> tuple[int, datetime | None]:
        """How much feedback is parked waiting for its completion, and since when the
        oldest (None when nothing is parked)."""
        pending = table_of(PendingFeedbackTable)
        with self._sessions() as s:
            n, oldest = s.execute(select(func.count(), func.min(pending.c.received_at))).one()
        if oldest is not None and oldest.tzinfo is None:  # SQLite drops the zone
            oldest = oldest.replace(tzinfo=UTC)
        return n or 0, oldest

    def get_completion(self, request_id: str) -> CompletionRecord | None:
        with self._sessions() as s:
            row = s.scalar(select(CompletionTable).where(CompletionTable.request_id == request_id))
            return _completion_event(row) if row else None


def _never_stored(p: PendingRow) -> str:
    """The dead-letter reason of feedback whose completion never came."""
    return (f"pending_ttl: completion {p.request_id!r} never reached the store: no "
            f"completion with this request_id was ingested within the pending TTL (parked "
            f"since {p.received_at.isoformat()}). It was served with store: false, never "
            f"served, or lost before Kafka; or it still waits in a serving replica's spill "
            f"(RLHF_EVENT_SPILL_DIR)")


def _parked_rejection(p: PendingRow, reason: str) -> Rejection:
    return Rejection(p.event_id, p.payload.encode(), p.request_id.encode(), reason,
                     p.source_partition, p.source_offset)


def _pending_values(fb: Feedback, now: datetime, origin: Origin | None) -> Row:
    return {"event_id": fb.event_id, "request_id": fb.request_id,
            "payload": encode_event(fb).decode(), "received_at": now,
            "source_partition": origin[0] if origin else None,
            "source_offset": origin[1] if origin else None}


def _window(q, since: int, until: int | None, seq=FeedbackTable.seq):  # type: ignore[no-untyped-def]
    q = q.where(seq > since)
    if until is not None:
        q = q.where(seq <= until)
    return q.order_by(seq)


def _ranking_group(f: FeedbackTable, r: RankingTable) -> PreferenceGroup:
    return PreferenceGroup(seq=f.seq, prompt=r.prompt,
                           responses=[e.response for e in r.entries],
                           ranks=[e.rank for e in r.entries], source=f.source,
                           policy_version=f.policy_version, request_id=f.request_id)


def _comparison_group(f: FeedbackTable, c: ComparisonTable) -> PreferenceGroup:
    return PreferenceGroup(seq=f.seq, prompt=c.prompt, responses=[c.response_a, c.response_b],
                           ranks=comparison_ranks(c.preferred), source=f.source,
                           policy_version=f.policy_version, request_id=f.request_id)


def _completion_values(c: CompletionRecord, now: datetime) -> Row:
    return {"event_id": c.event_id, "request_id": c.request_id,
            "policy_version": c.policy_version, "model": c.model, "endpoint": c.endpoint,
            "prompt": c.prompt, "messages": c.messages, "sampling_params": c.sampling_params,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "user": c.user, "purpose": c.purpose, "created_at": c.created_at,
            "stored_at": now}


def _completion_event(row: CompletionTable) -> CompletionRecord:
    return CompletionRecord(
        event_id=row.event_id, created_at=row.created_at, request_id=row.request_id,
        policy_version=row.policy_version, model=row.model,
        endpoint=row.endpoint,  # type: ignore[arg-type]
        prompt=row.prompt, messages=row.messages, sampling_params=row.sampling_params,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        user=row.user, purpose=row.purpose,  # type: ignore[arg-type]
        choices=[CompletionChoice(index=c.idx, text=c.text, finish_reason=c.finish_reason,
                                  completion_tokens=c.completion_tokens) for c in row.choices])
