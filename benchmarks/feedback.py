"""Feedback pipeline throughput: events/s from publish to committed rows, against a floor.

    python benchmarks/feedback.py --events 3000 [--db-url postgresql://…]

Each *path* gets a fresh embedded broker and database and reports sustained events/s
(first publish → last row committed) and the p50/p99 end-to-end delay (event created →
row stored). The floor is the least any Kafka → SQL pipeline can do on this machine: a
bare kafka-python produce → consume → one bulk INSERT per poll → commit loop, with the
same payloads. The ratio says what our pipeline (validation, join, dedup, seq) costs.

Paths: ``floor``; ``publisher`` (FeedbackPublisher, as the API uses it, → ``rlhf ingest``);
``http-single`` and ``http-batch`` (a real ``rlhf serve`` on a tiny model, driven with
``POST /v1/feedback`` or ``POST /v1/feedback/batch`` at a fixed concurrency, →
``rlhf ingest``). HTTP clients stamp ``created_at`` when they send, so an HTTP path's delay
runs from the client's send to the row's commit.

To add a path, write a function ``(ctx: PathContext) -> PathResult`` and register it in
``PATHS``; a path that ends in ``rlhf ingest`` only needs a ``Send`` for ``through_ingester``.
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
from functools import partial
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import ServerProcess, free_port  # noqa: E402
from core.events import Ranking, encode_event  # noqa: E402
from core.settings import KafkaSettings  # noqa: E402
from feedback.broker import EmbeddedBroker  # noqa: E402


@dataclass(frozen=True)
class PathContext:
    kafka: KafkaSettings
    db_url: str
    events: int
    concurrency: int
    http_concurrency: int
    batch_size: int
    batch_concurrency: int
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
    from core.producer import FeedbackPublisher

    publisher = FeedbackPublisher(ctx.kafka)
    gate = asyncio.Semaphore(ctx.concurrency)

    async def one(e: Ranking) -> None:
        async with gate:
            await publisher.publish(ctx.kafka.topics.feedback, e.model_copy(
                update={"created_at": datetime.now(UTC)}))

    await asyncio.gather(*[one(e) for e in events])
    publisher.close()


Send = Callable[[list[Ranking]], None]
"""Deliver these events to the feedback topic; returns once every one was acknowledged."""


def through_ingester(ctx: PathContext, name: str, send: Send) -> PathResult:
    """Warm up with one event, then send ``ctx.events`` and wait for every row."""
    from sqlalchemy import select

    from feedback.store import FeedbackStore
    from feedback.store.models import FeedbackTable

    store = FeedbackStore(ctx.db_url)
    store.migrate()
    ingester = start_ingester(ctx)
    try:
        send([labeler_ranking(-1)])  # warm-up: the consumer group join, connections
        wait_until(lambda: store.high_water_mark() == 1, 60, "the warm-up event")
        events = [labeler_ranking(i) for i in range(ctx.events)]
        started, cpu = datetime.now(UTC), time.process_time()
        send(events)
        cpu = time.process_time() - cpu
        wait_until(lambda: store.high_water_mark() == ctx.events + 1, 300, "all rows")
        with store.engine.connect() as conn:
            rows = conn.execute(select(FeedbackTable.created_at, FeedbackTable.stored_at)
                                .where(FeedbackTable.seq > 1)).all()
        print(f"{name}: CPU ms/event: {cpu * 1000 / ctx.events:.2f} sending (this process), "
              f"{cpu_seconds(ingester.pid) * 1000 / ctx.events:.2f} in rlhf ingest")
    finally:
        ingester.terminate()
        ingester.wait(30)
        store.close()
    return _result(name, started, rows)


def publisher_to_ingester(ctx: PathContext) -> PathResult:
    return through_ingester(ctx, "FeedbackPublisher → rlhf ingest",
                            lambda events: asyncio.run(publish_all(ctx, events)))


# ---------------------------------------------------------------------------------------
# Paths 2 and 3: POST /v1/feedback[/batch] on a real `rlhf serve` → rlhf ingest
# ---------------------------------------------------------------------------------------

def start_server(ctx: PathContext) -> tuple[ServerProcess, str]:
    """``rlhf serve`` on a tiny model, publishing to this path's broker; no keys: open."""
    from training.tiny_model import build_tiny_model

    model = ctx.workdir.parent / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    port = free_port()
    cmd = [sys.executable, "-m", "rlhf", "serve", "--model", str(model), "--host",
           "127.0.0.1", "--port", str(port), "--grpc-port", str(free_port()),
           "--served-model-name", "tiny", "--max-model-len", "512"]
    url = f"http://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(REPO), "RLHF_PUBLISH_EVENTS": "true",
           "RLHF_KAFKA__BOOTSTRAP_SERVERS": ctx.kafka.bootstrap_servers,
           "RLHF_FOLLOW_POLICY_EVENTS": "false"}
    return ServerProcess("rlhf serve", cmd, url + "/ready", ctx.workdir / "serve.log",
                         env=env), url


def body(e: Ranking) -> dict:
    """The JSON a labeler's client sends: its own texts, stamped with the send time."""
    return e.model_copy(update={"created_at": datetime.now(UTC)}).model_dump(
        mode="json", exclude={"source"})


async def post_all(url: str, events: list[Ranking], batch_size: int, concurrency: int
                   ) -> None:
    """``POST /v1/feedback`` per event (batch_size 0) or ``/v1/feedback/batch`` per chunk."""
    step = batch_size or 1
    chunks = [events[i:i + step] for i in range(0, len(events), step)]
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one(chunk: list[Ranking]) -> None:
            async with gate:
                if batch_size == 0:
                    r = await client.post("/v1/feedback", json=body(chunk[0]))
                else:
                    r = await client.post("/v1/feedback/batch",
                                          json={"items": [body(e) for e in chunk]})
                if r.status_code != 202:
                    raise RuntimeError(f"feedback API answered {r.status_code}: {r.text}")

        await asyncio.gather(*[one(c) for c in chunks])


def http_to_ingester(ctx: PathContext, batch: bool) -> PathResult:
    server, url = start_server(ctx)
    size, conc = (ctx.batch_size, ctx.batch_concurrency) if batch else (0, ctx.http_concurrency)
    name = f"HTTP batch ({size}/call) → rlhf ingest" if batch else "HTTP single → rlhf ingest"
    with server:
        before = server.cpu_times()
        result = through_ingester(
            ctx, name, lambda events: asyncio.run(post_all(url, events, size, conc)))
        used = server.cpu_times() - before
        print(f"{name}: rlhf serve used {used.frontend * 1000 / ctx.events:.2f} CPU ms/event "
              f"in its front-end, {used.total * 1000 / ctx.events:.2f} in all")
    return result


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


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
    "http-single": partial(http_to_ingester, batch=False),
    "http-batch": partial(http_to_ingester, batch=True),
}


def run_path(name: str, args: argparse.Namespace, workdir: Path) -> PathResult:
    """Each path gets its own broker and database so that nothing carries over."""
    db_url = args.db_url or f"sqlite:///{workdir / name / 'feedback.db'}"
    (workdir / name).mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(KafkaSettings(request_timeout_ms=10000)) as broker:
        ctx = PathContext(broker.kafka, db_url, args.events, args.concurrency,
                          args.http_concurrency, args.batch_size, args.batch_concurrency,
                          workdir / name)
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
    p.add_argument("--http-concurrency", type=int, default=8, help="single POSTs in flight "
                   "(httpx's client costs ~3.5x the CPU per request at 64 as at 8, and it "
                   "shares the machine with the server and the ingester)")
    p.add_argument("--batch-size", type=int, default=250, help="items per batch POST "
                   "(the API takes up to 1000)")
    p.add_argument("--batch-concurrency", type=int, default=4, help="batch POSTs in flight")
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
