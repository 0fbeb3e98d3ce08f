"""Bulk Core inserts for the store's write path: one statement per table per batch.

The ORM's unit of work costs far more per row than the database does (objects, identity
map, one flush per mapper). The write path instead builds plain rows (``resolve.py``) and
inserts them with ``INSERT … ON CONFLICT DO NOTHING`` on the table's natural key, in the
PostgreSQL or SQLite dialect. What counts is what the database reports back: ``RETURNING``
names exactly the rows inserted, so a row skipped as a conflict is never counted as stored
(and never gets children).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.dialects import postgresql, sqlite

from feedback.store.models import Base, FeedbackTable, RankingEntryTable
from feedback.store.resolve import FeedbackRows, Row


def table_of(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def insert_new(conn: Connection, model: type[Base], key: str, rows: Sequence[Row],
               returning: Sequence[str]) -> list[Any]:
    """Insert the rows whose ``key`` is not taken yet; the ``returning`` columns of those.

    Conflicts on ``key`` (a unique column) are skipped, not raised; a conflict on any other
    constraint still raises.
    """
    if not rows:
        return []
    table = table_of(model)
    stmt = _insert_ignoring(conn.dialect.name, table, key).returning(
        *[table.c[name] for name in returning])
    return list(conn.execute(stmt, list(rows)).all())


def _insert_ignoring(dialect: str, table: Table, key: str) -> postgresql.Insert | sqlite.Insert:
    """``INSERT … ON CONFLICT (key) DO NOTHING`` in the connection's dialect."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    raise NotImplementedError(f"the feedback store runs on PostgreSQL and SQLite, not {dialect}")


def insert_all(conn: Connection, model: type[Base], rows: Sequence[Row]) -> None:
    """A plain multi-row INSERT (executemany); any conflict raises."""
    if rows:
        conn.execute(insert(table_of(model)), list(rows))


def insert_feedback(conn: Connection, rows: Sequence[FeedbackRows]) -> dict[str, int]:
    """Insert feedback (in order: ``seq`` follows the batch) and the kinds' rows of the
    ones inserted; returns ``{event_id: seq}`` of those. An event_id stored already is
    skipped."""
    seqs: dict[str, int] = dict(insert_new(  # type: ignore[arg-type]
        conn, FeedbackTable, "event_id", [r.feedback for r in rows], ("event_id", "seq")))
    details: dict[type[Base], list[Row]] = {}
    for r in rows:
        seq = seqs.get(r.feedback["event_id"])
        if seq is None:
            continue
        details.setdefault(r.detail_table, []).append({**r.detail, "seq": seq})
        if r.entries:  # after their ranking: entries reference rankings.seq
            details.setdefault(RankingEntryTable, []).extend(
                {**e, "seq": seq} for e in r.entries)
    for model, values in details.items():
        insert_all(conn, model, values)
    return seqs
