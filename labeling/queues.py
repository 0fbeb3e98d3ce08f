"""Store queries on the workbench's tables (``feedback/store/labeling_models.py``).

The workbench writes only queues, items and assignments. Judgments are read back from the
feedback tables by the ``event_id`` each assignment was submitted under, so agreement and
win rates count exactly what reached the store through the ingester.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import fmean, median
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from feedback.store.labeling_models import (
    LabelingAssignmentTable,
    LabelingItemTable,
    LabelingQueueTable,
)
from feedback.store.models import (
    ComparisonTable,
    FeedbackTable,
    RankingEntryTable,
)
from labeling.assignment import ItemLoad, choose_item, display_order
from labeling.winrate import Outcome

Assignment = LabelingAssignmentTable
Item = LabelingItemTable
Queue = LabelingQueueTable


def utc(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A write transaction that takes SQLite's write lock up front (``BEGIN IMMEDIATE``,
    as the store's own writes do), so it waits for the ingester instead of failing with
    "database is locked" when a read turns into a write. PostgreSQL ignores the option."""
    with engine.connect().execution_options(immediate=True) as conn:
        with Session(bind=conn, expire_on_commit=False) as s, s.begin():
            yield s


@dataclass(frozen=True)
class NewItem:
    """An item to add to a queue: a prompt and its answers in canonical order."""

    prompt: str
    answers: list[dict[str, Any]]
    request_id: str | None = None


def create_queue(engine: Engine, fields: dict[str, Any], items: list[NewItem]) -> int:
    """Insert a queue with its items; Conflict when the name is taken."""
    now = datetime.now(UTC)
    with writing(engine) as s:
        if s.scalar(select(Queue.id).where(Queue.name == fields["name"])) is not None:
            raise Conflict(f"name: a queue named {fields['name']!r} exists", param="name")
        queue = Queue(**fields, status="open", created_at=now)
        s.add(queue)
        s.flush()
        s.add_all(Item(queue_id=queue.id, prompt=i.prompt, request_id=i.request_id,
                       answers=i.answers, created_at=now) for i in items)
        return queue.id


def get_queue(engine: Engine, queue_id: int) -> Queue:
    with Session(engine) as s:
        queue = s.get(Queue, queue_id)
        if queue is None:
            raise NotFound(f"queue {queue_id} does not exist", param="queue_id")
        s.expunge(queue)
        return queue


def set_status(engine: Engine, queue_id: int, status: str) -> None:
    with writing(engine) as s:
        queue = s.get(Queue, queue_id)
        if queue is None:
            raise NotFound(f"queue {queue_id} does not exist", param="queue_id")
        queue.status = status


def list_queues(engine: Engine) -> list[dict[str, Any]]:
    """Every queue with its item count and how many judgments are done."""
    with Session(engine) as s:
        items = {q: n for q, n in s.execute(
            select(Item.queue_id, func.count()).group_by(Item.queue_id))}
        done = {q: n for q, n in s.execute(
            select(Assignment.queue_id, func.count()).where(Assignment.status == "done")
            .group_by(Assignment.queue_id))}
        return [queue_summary(q, items.get(q.id, 0), done.get(q.id, 0))
                for q in s.scalars(select(Queue).order_by(Queue.id.desc()))]


def queue_summary(q: Queue, items: int, done: int) -> dict[str, Any]:
    return {"id": q.id, "name": q.name, "source": q.source, "task": q.task, "k": q.k,
            "samples_per_prompt": q.samples_per_prompt, "overlap": q.overlap,
            "sampling": q.sampling, "candidate": q.candidate, "live": q.live,
            "instructions": q.instructions, "status": q.status,
            "items": items, "judgments_done": done, "judgments_needed": items * q.overlap}


# -- assignment ---------------------------------------------------------------------------

def _open_assignment(s: Session, queue_id: int, labeler: str) -> Assignment | None:
    return s.scalar(select(Assignment).where(
        Assignment.queue_id == queue_id, Assignment.labeler == labeler,
        Assignment.status == "assigned").order_by(Assignment.id).limit(1))


def _loads(s: Session, queue_id: int, labeler: str, lease_cutoff: datetime) -> list[ItemLoad]:
    taken: dict[int, int] = defaultdict(int)
    seen: set[int] = set()
    rows = s.execute(select(Assignment.item_id, Assignment.labeler, Assignment.status,
                            Assignment.assigned_at).where(Assignment.queue_id == queue_id))
    for item_id, who, status, assigned_at in rows:
        if who == labeler:
            seen.add(item_id)
        if status == "done" or (status == "assigned" and utc(assigned_at) >= lease_cutoff):
            taken[item_id] += 1
    ids = s.scalars(select(Item.id).where(Item.queue_id == queue_id))
    return [ItemLoad(i, taken[i], i in seen) for i in ids]


def next_assignment(engine: Engine, queue_id: int, labeler: str,
                    lease: timedelta) -> tuple[Assignment, Item] | None:
    """The labeler's open assignment in the queue, else a new one (see assignment.py).

    None when the labeler has done everything they may do in this queue. Two labelers
    asking at the same instant may push one item one past its overlap; the unique
    (item, labeler) constraint still keeps a labeler from getting an item twice.
    """
    now = datetime.now(UTC)
    for _ in range(3):
        try:
            with writing(engine) as s:
                queue = s.get(Queue, queue_id)
                if queue is None:
                    raise NotFound(f"queue {queue_id} does not exist", param="queue_id")
                held = _open_assignment(s, queue_id, labeler)
                if held is not None:
                    return held, s.get_one(Item, held.item_id)
                if queue.status != "open":
                    return None
                chosen = choose_item(_loads(s, queue_id, labeler, now - lease), queue.overlap)
                if chosen is None:
                    return None
                item = s.get_one(Item, chosen)
                assignment = Assignment(
                    item_id=chosen, queue_id=queue_id, labeler=labeler, status="assigned",
                    display_order=display_order(len(item.answers)), assigned_at=now,
                    event_id=uuid.uuid4().hex)
                s.add(assignment)
                s.flush()
                return assignment, item
        except IntegrityError:  # the same labeler asked twice at once: look again
            continue
    return None


def held_assignment(engine: Engine, assignment_id: int,
                    labeler: str) -> tuple[Assignment, Item, Queue]:
    """An assignment the labeler holds and has not finished; NotFound/Conflict otherwise."""
    with Session(engine, expire_on_commit=False) as s:
        a = s.get(Assignment, assignment_id)
        if a is None or a.labeler != labeler:
            raise NotFound(f"assignment {assignment_id} is not yours", param="assignment_id")
        if a.status != "assigned":
            raise Conflict(f"assignment {assignment_id} is already {a.status}",
                           param="assignment_id")
        return a, s.get_one(Item, a.item_id), s.get_one(Queue, a.queue_id)


def finish(engine: Engine, assignment_id: int, status: str, *, verdict: str | None = None,
           flags: dict | None = None, note: str | None = None) -> float:
    """Mark an assignment done or skipped; returns the seconds it took."""
    now = datetime.now(UTC)
    with writing(engine) as s:
        a = s.get_one(Assignment, assignment_id)
        seconds = (now - utc(a.assigned_at)).total_seconds()
        a.status, a.completed_at, a.seconds = status, now, seconds
        a.verdict, a.flags, a.note = verdict, flags or None, note or None
        return seconds


# -- reading judgments back from the feedback store ------------------------------------------

@dataclass(frozen=True)
class Judgment:
    """One stored judgment of a finished assignment, ranks in canonical answer order."""

    item_id: int
    labeler: str
    ranks: list[int]
    verdict: str | None


def judgments(engine: Engine, queue_id: int) -> list[Judgment]:
    """Rankings and comparisons of the queue's done assignments that reached the store."""
    with Session(engine) as s:
        rows = s.execute(
            select(Assignment.item_id, Assignment.labeler, Assignment.verdict,
                   FeedbackTable.seq, FeedbackTable.kind)
            .join(FeedbackTable, FeedbackTable.event_id == Assignment.event_id)
            .where(Assignment.queue_id == queue_id, Assignment.status == "done")
            .order_by(Assignment.id)).all()
        seqs = [r.seq for r in rows]
        entries: dict[int, list[int]] = defaultdict(list)
        for seq, rank in s.execute(select(RankingEntryTable.seq, RankingEntryTable.rank)
                                   .where(RankingEntryTable.seq.in_(seqs))
                                   .order_by(RankingEntryTable.seq,
                                             RankingEntryTable.position)):
            entries[seq].append(rank)
        preferred = dict(s.execute(select(ComparisonTable.seq, ComparisonTable.preferred)
                                   .where(ComparisonTable.seq.in_(seqs))).all())
    out = []
    for r in rows:
        if r.kind == "ranking":
            ranks = entries[r.seq]
        elif r.kind == "comparison":
            ranks = {"a": [1, 2], "b": [2, 1], "tie": [1, 1]}[preferred[r.seq]]
        else:
            continue
        out.append(Judgment(r.item_id, r.labeler, ranks, r.verdict))
    return out


def item_rankings(engine: Engine, queue_id: int) -> dict[str, dict[str, list[int]]]:
    """item id → labeler → ranks: the input of labeling.agreement."""
    out: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for j in judgments(engine, queue_id):
        out[str(j.item_id)][j.labeler] = j.ranks
    return dict(out)


def candidate_outcomes(engine: Engine, candidate: str,
                       live: str | None = None) -> list[Outcome]:
    """win/loss/tie of ``candidate`` in every stored judgment of its candidate queues."""
    with Session(engine) as s:
        q = select(Queue.id).where(Queue.source == "candidate", Queue.candidate == candidate)
        if live is not None:
            q = q.where(Queue.live == live)
        queue_ids = list(s.scalars(q))
        origins = {i.id: [a.get("origin") for a in i.answers] for i in s.scalars(
            select(Item).where(Item.queue_id.in_(queue_ids)))}
    outcomes: list[Outcome] = []
    for queue_id in queue_ids:
        for j in judgments(engine, queue_id):
            if j.verdict == "both_bad" or j.ranks[0] == j.ranks[1]:
                outcomes.append("tie")
                continue
            better = origins[j.item_id][0 if j.ranks[0] < j.ranks[1] else 1]
            outcomes.append("win" if better == "candidate" else "loss")
    return outcomes


def progress(engine: Engine, queue_id: int) -> dict[str, Any]:
    """Items done per labeler and for the queue, and seconds per item."""
    with Session(engine) as s:
        queue = s.get(Queue, queue_id)
        if queue is None:
            raise NotFound(f"queue {queue_id} does not exist", param="queue_id")
        items = s.scalar(select(func.count()).where(Item.queue_id == queue_id)) or 0
        rows = s.execute(select(Assignment.item_id, Assignment.labeler, Assignment.status,
                                Assignment.seconds)
                         .where(Assignment.queue_id == queue_id)).all()
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"done": 0, "skipped": 0,
                                                          "seconds": []})
    per_item: dict[int, int] = defaultdict(int)
    for item_id, who, status, seconds in rows:
        if status == "done":
            per[who]["done"] += 1
            per_item[item_id] += 1
            if seconds is not None:
                per[who]["seconds"].append(seconds)
        elif status == "skipped":
            per[who]["skipped"] += 1
    all_seconds = [x for p in per.values() for x in p["seconds"]]
    return {
        "queue_id": queue_id, "items": items, "overlap": queue.overlap,
        "items_complete": sum(1 for n in per_item.values() if n >= queue.overlap),
        "judgments_done": sum(per_item.values()),
        "judgments_needed": items * queue.overlap,
        "median_seconds_per_item": median(all_seconds) if all_seconds else None,
        "labelers": [{"labeler": who, "done": p["done"], "skipped": p["skipped"],
                      "mean_seconds_per_item": fmean(p["seconds"]) if p["seconds"] else None}
                     for who, p in sorted(per.items())],
    }
