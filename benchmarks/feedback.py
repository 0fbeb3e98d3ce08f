"""Feedback pipeline throughput: events/s from publish to committed rows, against a floor.

    python benchmarks/feedback.py --events 3000 [--db-url postgresql://…]

Each *path* gets a fresh embedded broker and database and reports sustained events/s
(first publish → last row committed) and the p50/p99 end-to-end delay (event created →
row stored). The floor is the least any Kafka → SQL pipeline can do on this machine: a
bare kafka-python produce → consume → one bulk INSERT per poll → commit loop, with the
same payloads. The ratio says what our pipeline (validation, join, dedup, seq) costs.

To add a path (e.g. HTTP ``POST /v1/feedback`` → ingester), write a function
``(ctx: PathContext) -> PathResult`` and register it in ``PATHS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feedback.broker import EmbeddedBroker  # noqa: E402
from feedback.events import Ranking, encode_event  # noqa: E402
from feedback.settings import KafkaSettings  # noqa: E402


@dataclass(frozen=True)
class PathContext:
    kafka: KafkaSettings
    db_url: str
    events: int
    concurrency: int
    workdir: Path


@dataclass(frozen=True)
class PathResult:
    name: str
    events: int
    seconds: float
    delays_s: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        return statistics.quantiles(self.delays_s, n=100)[int(q) - 1] * 1000


def labeler_ranking(i: int) -> Ranking:
    """A realistic piece of feedback: one prompt, four ranked responses of ~200 chars."""
    return Ranking(prompt=f"Explain item {i} to a child. " * 3,
                   responses=[f"Response {k} about item {i}: " + "words " * 30 for k in range(4)],
                   ranks=[1, 2, 2, 4], source="labeler", submitted_by="bench")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# Path 1: FeedbackPublisher.publish → rlhf ingest → FeedbackStore
# ---------------------------------------------------------------------------------------

def start_ingester(ctx: PathContext) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "RLHF_KAFKA__BOOTSTRAP_SERVERS": ctx.kafka.bootstrap_servers,
           "RLHF_DATABASE__URL": ctx.db_url, "RLHF_METRICS_PORT": "0",
           "RLHF_GROUP_ID": "bench", "RLHF_LOG_LEVEL": "warning",
           "RLHF_SESSION_TIMEOUT_MS": "3000", "RLHF_MAX_POLL_INTERVAL_MS": "10000",
           "RLHF_POLL_TIMEOUT_MS": "100"}
    log = open(ctx.workdir / "ingest.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "feedback.cli", "ingest"], env=env,
                            cwd=REPO, stdout=log, stderr=log)


async def publish_all(ctx: PathContext, events: list[Ranking]) -> None:
    """Publish like the API does: one acknowledged publish per request, N in flight."""
    from feedback.producer import FeedbackPublisher

    publisher = FeedbackPublisher(ctx.kafka)
    gate = asyncio.Semaphore(ctx.concurrency)

    async def one(e: Ranking) -> None:
        async with gate:
            await publisher.publish(ctx.kafka.topics.feedback, e.model_copy(
                update={"created_at": datetime.now(UTC)}))

    await asyncio.gather(*[one(e) for e in events])
    publisher.close()


def publisher_to_ingester(ctx: PathContext) -> PathResult:
    from sqlalchemy import select

    from feedback.store import FeedbackStore
    from feedback.store.models import FeedbackTable

    store = FeedbackStore(ctx.db_url)
    store.migrate()
    ingester = start_ingester(ctx)
    try:
        asyncio.run(publish_all(ctx, [labeler_ranking(-1)]))  # warm-up: the group join
        wait_until(lambda: store.high_water_mark() == 1, 60, "the warm-up event")
        events = [labeler_ranking(i) for i in range(ctx.events)]
        started = datetime.now(UTC)
        asyncio.run(publish_all(ctx, events))
        wait_until(lambda: store.high_water_mark() == ctx.events + 1, 300, "all rows")
        with store.engine.connect() as conn:
            rows = conn.execute(select(FeedbackTable.created_at, FeedbackTable.stored_at)
                                .where(FeedbackTable.seq > 1)).all()
    finally:
        ingester.terminate()
        ingester.wait(30)
        store.close()
    return _result("FeedbackPublisher → rlhf ingest", started, rows)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _result(name: str, started: datetime, rows: list) -> PathResult:
    """Throughput over first publish → last commit; delay per row: created → stored."""
    stored = [_utc(s) for _, s in rows]
    delays = [(_utc(s) - _utc(c)).total_seconds() for c, s in rows]
    return PathResult(name, len(rows), (max(stored) - started).total_seconds(), delays)


# ---------------------------------------------------------------------------------------
# The floor: bare kafka-python produce → consume → bulk insert
# ---------------------------------------------------------------------------------------

def floor_consumer(kafka: KafkaSettings, db_url: str, expected: int) -> None:
    """Consume → one executemany INSERT per poll → SQL commit → offset commit. No checks."""
    from kafka import KafkaConsumer
    from sqlalchemy import text

    from feedback.store.store import create_store_engine

    engine = create_store_engine(db_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS floor (id TEXT PRIMARY KEY, "
                       "created_at TEXT, stored_at TEXT, body TEXT)"))
    consumer = KafkaConsumer(kafka.topics.feedback, **kafka.client_kwargs(), group_id="floor",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_records=500, session_timeout_ms=3000,
                             heartbeat_interval_ms=1000, max_poll_interval_ms=10000)
    done = 0
    while done < expected:
        records = [r for b in consumer.poll(timeout_ms=100).values() for r in b]
        if not records:
            continue
        now = datetime.now(UTC).isoformat()
        rows = []
        for r in records:
            d = json.loads(r.value)
            rows.append({"id": d["event_id"], "c": d["created_at"], "s": now,
                         "b": r.value.decode()})
        with engine.begin() as c:
            c.execute(text("INSERT INTO floor VALUES (:id, :c, :s, :b)"), rows)
        consumer.commit()
        done += len(records)
    consumer.close()


def floor(ctx: PathContext) -> PathResult:
    from kafka import KafkaProducer
    from sqlalchemy import text

    from feedback.store.store import create_store_engine

    proc = mp.get_context("spawn").Process(target=floor_consumer,
                                           args=(ctx.kafka, ctx.db_url, ctx.events + 1))
    proc.start()
    producer = KafkaProducer(**ctx.kafka.client_kwargs(), acks="all", enable_idempotence=True,
                             linger_ms=0)
    topic = ctx.kafka.topics.feedback
    producer.send(topic, encode_event(labeler_ranking(-1))).get(30)  # warm-up
    engine = create_store_engine(ctx.db_url)

    def stored() -> int:
        try:
            with engine.connect() as c:
                return c.execute(text("SELECT count(*) FROM floor")).scalar() or 0
        except Exception:  # noqa: BLE001 - table not created yet
            return 0

    wait_until(lambda: stored() == 1, 60, "the floor warm-up")
    started = datetime.now(UTC)
    for i in range(ctx.events):
        e = labeler_ranking(i).model_copy(update={"created_at": datetime.now(UTC)})
        producer.send(topic, key=e.event_id.encode(), value=encode_event(e))
    producer.flush(60)
    proc.join(300)
    with engine.connect() as c:
        raw = c.execute(text("SELECT created_at, stored_at FROM floor")).all()
    producer.close()
    rows = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in raw]
    rows = [r for r in rows if r[0] >= started]
    return PathResult("floor: kafka-python → bulk INSERT", len(rows),
                      (max(s for _, s in rows) - started).total_seconds(),
                      [(s - c).total_seconds() for c, s in rows])


PATHS: dict[str, Callable[[PathContext], PathResult]] = {
    "floor": floor,
    "publisher": publisher_to_ingester,
}


def run_path(name: str, args: argparse.Namespace, workdir: Path) -> PathResult:
    """Each path gets its own broker and database so that nothing carries over."""
    db_url = args.db_url or f"sqlite:///{workdir / name / 'feedback.db'}"
    (workdir / name).mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(KafkaSettings(request_timeout_ms=10000)) as broker:
        ctx = PathContext(broker.kafka, db_url, args.events, args.concurrency, workdir / name)
        return PATHS[name](ctx)


def print_table(results: list[PathResult], floor_result: PathResult) -> None:
    print(f"\n{'path':<36} {'events':>7} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'vs floor':>9}")
    for r in results:
        print(f"{r.name:<36} {r.events:>7} {r.rate:>9.0f} {r.pct(50):>8.1f} {r.pct(99):>8.1f} "
              f"{r.rate / floor_result.rate:>8.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=64, help="publishes in flight")
    p.add_argument("--db-url", default=None, help="store URL (default: a fresh SQLite file; "
                   "a PostgreSQL URL must point at an empty schema)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        results = [run_path(name, args, Path(tmp)) for name in args.paths.split(",")]
    floor_result = next((r for r in results if r.name.startswith("floor")), results[0])
    print_table(results, floor_result)


if __name__ == "__main__":
    main()
