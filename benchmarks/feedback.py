"""Feedback pipeline throughput: events/s from publish to committed rows, against a floor.

    python benchmarks/feedback.py [--events 3000] [--rounds 3] [--db-url postgresql://…]

What runs is what production runs, long-lived: one broker, one ``rlhf ingest`` writing
one store, and (for the HTTP paths) one ``rlhf serve`` on a tiny model. Each path is then
measured for ``--rounds`` rounds. A round sends ``--events`` events and reports sustained
events/s (first send → last row committed) and the p50/p99 delay per event (handed to the
pipeline → row stored).

The floor is the least any Kafka → SQL pipeline can do on this machine: a bare
kafka-python producer (``make_producer``'s settings, as ours) sending every event at once
→ a consumer doing one executemany INSERT per poll, SQL commit, offset commit, with the
same payloads and no checks (its own topic, table and long-lived consumer process).
Every round of a path is paired with a floor round run right before or right after it,
alternating (floor first on even pairs), so a ratio compares two runs seconds apart:
events/s ours / floor, and p99 as floor / ours (both: 1.0 = as good as the floor, higher
is better).

Paths: ``bare-send`` (the floor's producer loop → ``rlhf ingest``: what the ingester alone
costs); ``publisher`` (``FeedbackPublisher.publish`` as the API calls it, ``--concurrency``
in flight); ``http-single`` (``POST /v1/feedback``, ``--http-concurrency`` in flight) and
``http-batch`` (``POST /v1/feedback/batch`` of ``--batch-size``, ``--batch-concurrency``
in flight), each → ``rlhf ingest`` → the store. HTTP clients stamp ``created_at`` when
they send, so an HTTP delay runs from the client's send to the row's commit.

CPU per event is each process's CPU time over the round alone (start-up and warm-up
excluded): the sending client (this process, with its producer's I/O thread), the
``rlhf serve`` front-end, ``rlhf ingest`` (or the floor's consumer) and the broker.

To add a path, write a ``Send`` (deliver these events, return once all are acknowledged)
and register it in ``PATHS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

# Run as a script, this folder comes first on sys.path, and this file would shadow the
# feedback package: the repository root goes first.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import ServerProcess, free_port, percentile  # noqa: E402
from core.events import Ranking, encode_event  # noqa: E402
from core.settings import KafkaSettings  # noqa: E402
from feedback.broker import EmbeddedBroker  # noqa: E402

FLOOR_TOPIC = "bench.floor"


def labeler_ranking(i: int, event_id: str | None = None) -> Ranking:
    """A realistic piece of feedback: one prompt, four ranked responses of ~200 chars."""
    extra = {"event_id": event_id} if event_id else {}
    return Ranking(prompt=f"Explain item {i} to a child. " * 3,
                   responses=[f"Response {k} about item {i}: " + "words " * 30 for k in range(4)],
                   ranks=[1, 2, 2, 4], source="labeler", submitted_by="bench", **extra)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Run:
    """One round of one path: throughput, per-event delays, CPU ms per event by process."""

    path: str
    events: int
    seconds: float
    delays_s: list[float] = field(repr=False)
    cpu_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def p50_ms(self) -> float:
        return percentile(self.delays_s, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.delays_s, 99) * 1000


# ---------------------------------------------------------------------------------------
# CPU accounting: each long-lived process's CPU seconds, sampled around a round
# ---------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


def broker_pid() -> int:
    """The tansu child of this process (EmbeddedBroker starts it)."""
    [proc] = [p for p in psutil.Process().children() if p.name() == "tansu"]
    return proc.pid


class CpuMeter:
    """CPU seconds of named processes; ``since(snapshot, events)`` gives ms per event."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def since(self, before: dict[str, float], events: int, names: list[str]) -> dict[str, float]:
        now = self.snapshot()
        return {n: (now[n] - before[n]) * 1000 / events for n in names}


# ---------------------------------------------------------------------------------------
# The long-lived parts: broker, rlhf ingest + store, the floor's consumer, rlhf serve
# ---------------------------------------------------------------------------------------

def start_ingester(kafka: KafkaSettings, db_url: str, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "RLHF_DATABASE__URL": db_url, "RLHF_INGEST__METRICS_PORT": "0",
           "RLHF_INGEST__GROUP_ID": "bench", "RLHF_LOG_LEVEL": "warning",
           "RLHF_INGEST__SESSION_TIMEOUT_MS": "3000", "RLHF_INGEST__MAX_POLL_INTERVAL_MS": "10000",
           "RLHF_INGEST__POLL_TIMEOUT_MS": "100"}
    log = open(workdir / "ingest.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "feedback.cli", "ingest"], env=env,
                            cwd=REPO, stdout=log, stderr=log)


def floor_consumer(kafka: KafkaSettings, db_url: str, stop: Any) -> None:
    """Consume → one executemany INSERT per poll → SQL commit → offset commit. No checks."""
    from kafka import KafkaConsumer
    from sqlalchemy import text

    from feedback.store.store import create_store_engine

    engine = create_store_engine(db_url)
    consumer = KafkaConsumer(FLOOR_TOPIC, **kafka.client_kwargs(), group_id="floor",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_records=500, session_timeout_ms=3000,
                             heartbeat_interval_ms=1000, max_poll_interval_ms=10000)
    insert = text("INSERT INTO floor VALUES (:id, :c, :s, :b)")
    while not stop.is_set():
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
            c.execute(insert, rows)
        consumer.commit()
    consumer.close()


class Floor:
    """The bare pipeline: this process's KafkaProducer → the floor consumer process."""

    def __init__(self, kafka: KafkaSettings, db_url: str):
        from kafka.admin import KafkaAdminClient, NewTopic
        from sqlalchemy import text

        from core.producer import make_producer
        from feedback.store.store import create_store_engine

        admin = KafkaAdminClient(**kafka.client_kwargs())
        admin.create_topics([NewTopic(FLOOR_TOPIC, kafka.topics.partitions,
                                      kafka.topics.replication_factor)])
        admin.close()
        self.engine = create_store_engine(db_url)
        with self.engine.begin() as c:
            c.execute(text("CREATE TABLE floor (id TEXT PRIMARY KEY, created_at TEXT, "
                           "stored_at TEXT, body TEXT)"))
        spawn = mp.get_context("spawn")
        self._stop = spawn.Event()
        self.proc = spawn.Process(target=floor_consumer, args=(kafka, db_url, self._stop))
        self.proc.start()
        self.producer = make_producer(kafka)  # the same producer settings as ours

    def stored(self, tag: str) -> int:
        from sqlalchemy import text

        with self.engine.connect() as c:
            return c.execute(text("SELECT count(*) FROM floor WHERE id LIKE :t"),
                             {"t": f"{tag}-%"}).scalar() or 0

    def rows(self, tag: str) -> list[tuple[datetime, datetime]]:
        from sqlalchemy import text

        with self.engine.connect() as c:
            raw = c.execute(text("SELECT created_at, stored_at FROM floor WHERE id LIKE :t"),
                            {"t": f"{tag}-%"}).all()
        return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in raw]

    def send(self, events: list[Ranking], topic: str = FLOOR_TOPIC) -> None:
        for e in events:
            e = e.model_copy(update={"created_at": datetime.now(UTC)})
            self.producer.send(topic, key=e.event_id.encode(), value=encode_event(e))
        self.producer.flush(120)

    def close(self) -> None:
        self.producer.close(5)
        self._stop.set()
        self.proc.join(30)
        self.engine.dispose()


@dataclass
class Rig:
    """Everything long-lived of one benchmark run, and where each path sends."""

    kafka: KafkaSettings
    store: Any  # FeedbackStore
    floor: Floor
    publisher: Any  # FeedbackPublisher, built once and warmed up like the server's
    meter: CpuMeter
    args: argparse.Namespace
    url: str | None = None  # rlhf serve, when an HTTP path runs


def build_rig(args: argparse.Namespace, workdir: Path, stack: ExitStack) -> Rig:
    from core.producer import FeedbackPublisher
    from feedback.store import FeedbackStore

    broker = stack.enter_context(EmbeddedBroker(KafkaSettings(request_timeout_ms=10000),
                                                log_path=workdir / "tansu.log"))
    kafka = broker.kafka
    db_url = args.db_url or f"sqlite:///{workdir / 'feedback.db'}"
    floor_url = args.db_url or f"sqlite:///{workdir / 'floor.db'}"
    store = FeedbackStore(db_url)
    store.migrate()
    stack.callback(store.close)
    ingester = start_ingester(kafka, db_url, workdir)
    stack.callback(lambda: (ingester.terminate(), ingester.wait(30)))
    floor = Floor(kafka, floor_url)
    stack.callback(floor.close)
    publisher = FeedbackPublisher(kafka)
    stack.callback(publisher.close)
    meter = CpuMeter()
    meter.pids.update(ingest=ingester.pid, floor=floor.proc.pid, broker=broker_pid())
    rig = Rig(kafka, store, floor, publisher, meter, args)
    if any(p.startswith("http") for p in args.paths):
        server, rig.url = start_server(kafka, workdir)
        stack.enter_context(server)
        meter.pids["serve"] = server.proc.pid
    warm_up(rig)
    return rig


def start_server(kafka: KafkaSettings, workdir: Path) -> tuple[ServerProcess, str]:
    """``rlhf serve`` on a tiny model, publishing to the broker; no keys: open."""
    from training.tiny_model import build_tiny_model

    model = workdir / "tiny-model"
    build_tiny_model(model)
    port = free_port()
    cmd = [sys.executable, "-m", "rlhf", "serve", "--model", str(model), "--host",
           "127.0.0.1", "--port", str(port), "--grpc-port", str(free_port()),
           "--served-model-name", "tiny", "--max-model-len", "512"]
    url = f"http://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(REPO), "RLHF_PUBLISH_EVENTS": "true",
           "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "RLHF_KAFKA__REQUEST_TIMEOUT_MS": str(kafka.request_timeout_ms),
           "RLHF_FOLLOW_POLICY_EVENTS": "false"}
    return ServerProcess("rlhf serve", cmd, url + "/ready", workdir / "serve.log",
                         env=env), url


def warm_up(rig: Rig) -> None:
    """One event through every pipeline: consumer-group joins, connections, producers."""
    rig.floor.send([labeler_ranking(-1, event_id="warm-0")])
    send_publisher(rig, [labeler_ranking(-1)])
    if rig.url:
        asyncio.run(post_all(rig.url, [labeler_ranking(-2)], batch_size=0, concurrency=1))
        asyncio.run(post_all(rig.url, [labeler_ranking(-3)], batch_size=1, concurrency=1))
    started = time.monotonic()
    expected = 3 if rig.url else 1
    wait_until(lambda: rig.floor.stored("warm") == 1, 120, "the floor's warm-up event")
    wait_until(lambda: rig.store.high_water_mark() == expected, 120, "the warm-up events")
    print(f"warmed up: every pipeline stored its first event "
          f"({time.monotonic() - started:.1f}s)", flush=True)


# ---------------------------------------------------------------------------------------
# Paths: a Send delivers events and returns once every one was acknowledged
# ---------------------------------------------------------------------------------------

Send = Callable[[Rig, list[Ranking]], None]


def send_publisher(rig: Rig, events: list[Ranking]) -> None:
    """Publish like the API does: one acknowledged publish per request, N in flight."""
    async def publish_all() -> None:
        gate = asyncio.Semaphore(rig.args.concurrency)
        topic = rig.kafka.topics.feedback

        async def one(e: Ranking) -> None:
            async with gate:
                await rig.publisher.publish(topic, e.model_copy(
                    update={"created_at": datetime.now(UTC)}))

        await asyncio.gather(*[one(e) for e in events])

    asyncio.run(publish_all())


def body(e: Ranking) -> dict:
    """The JSON a labeler's client sends: its own texts, stamped with the send time."""
    return e.model_copy(update={"created_at": datetime.now(UTC)}).model_dump(
        mode="json", exclude={"source"})


async def post_all(url: str, events: list[Ranking], batch_size: int, concurrency: int
                   ) -> None:
    """``POST /v1/feedback`` per event (batch_size 0) or ``/v1/feedback/batch`` per chunk.

    aiohttp, as benchmarks/serving.py uses: it costs the shared cores a fraction of the
    CPU per request that httpx's async client does.
    """
    step = batch_size or 1
    chunks = [events[i:i + step] for i in range(0, len(events), step)]
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def one(chunk: list[Ranking]) -> None:
            async with gate:
                if batch_size == 0:
                    request = client.post("/v1/feedback", json=body(chunk[0]))
                else:
                    request = client.post("/v1/feedback/batch",
                                          json={"items": [body(e) for e in chunk]})
                async with request as r:
                    if r.status != 202:
                        raise RuntimeError(f"feedback API answered {r.status}: "
                                           f"{await r.text()}")
                    await r.read()

        await asyncio.gather(*[one(c) for c in chunks])


def send_http_single(rig: Rig, events: list[Ranking]) -> None:
    assert rig.url
    asyncio.run(post_all(rig.url, events, 0, rig.args.http_concurrency))


def send_http_batch(rig: Rig, events: list[Ranking]) -> None:
    assert rig.url
    asyncio.run(post_all(rig.url, events, rig.args.batch_size, rig.args.batch_concurrency))


def send_bare(rig: Rig, events: list[Ranking]) -> None:
    """The floor's own producer loop, to ``rlhf.feedback``: what ``rlhf ingest`` alone
    costs against the floor's consumer (a diagnostic, not an API path)."""
    rig.floor.send(events, rig.kafka.topics.feedback)


PATHS: dict[str, Send] = {
    "bare-send": send_bare,
    "publisher": send_publisher,
    "http-single": send_http_single,
    "http-batch": send_http_batch,
}


def label(path: str, args: argparse.Namespace) -> str:
    return {"floor": "floor: kafka-python → bulk INSERT",
            "bare-send": "kafka-python send → rlhf ingest",
            "publisher": f"FeedbackPublisher ({args.concurrency} in flight)",
            "http-single": f"POST /v1/feedback ({args.http_concurrency} in flight)",
            "http-batch": f"POST /v1/feedback/batch ({args.batch_concurrency}×"
                          f"{args.batch_size})"}[path]


# ---------------------------------------------------------------------------------------
# One round of a path, and of the floor
# ---------------------------------------------------------------------------------------

def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _run(path: str, events: int, started: datetime, rows: list, cpu_ms: dict) -> Run:
    """Throughput over first send → last commit; delay per row: created → stored."""
    stored = [_utc(s) for _, s in rows]
    delays = [(_utc(s) - _utc(c)).total_seconds() for c, s in rows]
    return Run(path, events, (max(stored) - started).total_seconds(), delays, cpu_ms)


def run_ours(rig: Rig, path: str) -> Run:
    """Send ``--events`` through ``path`` and wait until ``rlhf ingest`` stored every row."""
    from sqlalchemy import select

    from feedback.store.models import FeedbackTable

    n = rig.args.events
    mark = rig.store.high_water_mark()
    events = [labeler_ranking(i) for i in range(n)]
    before = rig.meter.snapshot()
    started, cpu = datetime.now(UTC), time.process_time()
    PATHS[path](rig, events)
    sending = (time.process_time() - cpu) * 1000 / n
    wait_until(lambda: rig.store.high_water_mark() >= mark + n, 600, f"{path}'s rows")
    names = ["serve", "ingest", "broker"] if path.startswith("http") else ["ingest", "broker"]
    cpu_ms = {"client": sending, **rig.meter.since(before, n, names)}
    with rig.store.engine.connect() as conn:
        rows = conn.execute(select(FeedbackTable.created_at, FeedbackTable.stored_at)
                            .where(FeedbackTable.seq > mark)).all()
    if len(rows) != n:
        raise RuntimeError(f"{path}: {len(rows)} rows stored for {n} events sent")
    return _run(path, n, started, rows, cpu_ms)


def run_floor(rig: Rig, tag: str) -> Run:
    n = rig.args.events
    events = [labeler_ranking(i, event_id=f"{tag}-{i}") for i in range(n)]
    before = rig.meter.snapshot()
    started, cpu = datetime.now(UTC), time.process_time()
    rig.floor.send(events)
    sending = (time.process_time() - cpu) * 1000 / n
    wait_until(lambda: rig.floor.stored(tag) == n, 600, "the floor's rows")
    cpu_ms = {"client": sending, **rig.meter.since(before, n, ["floor", "broker"])}
    return _run("floor", n, started, rig.floor.rows(tag), cpu_ms)


@dataclass
class Pair:
    """A round of a path and the floor round next to it, in the order they ran."""

    ours: Run
    floor: Run
    floor_first: bool

    @property
    def rate_ratio(self) -> float:
        return self.ours.rate / self.floor.rate

    @property
    def p99_ratio(self) -> float:
        return self.floor.p99_ms / self.ours.p99_ms


def run_pairs(rig: Rig) -> list[Pair]:
    """Rounds × paths, each path next to a floor round; the order alternates per pair
    (F O, O F, F O …) and the path order reverses every round."""
    pairs: list[Pair] = []
    for r in range(rig.args.rounds):
        order = rig.args.paths if r % 2 == 0 else list(reversed(rig.args.paths))
        for path in order:
            floor_first = len(pairs) % 2 == 0
            tag = f"r{len(pairs)}"
            if floor_first:
                f = run_floor(rig, tag)
                o = run_ours(rig, path)
            else:
                o = run_ours(rig, path)
                f = run_floor(rig, tag)
            pair = Pair(o, f, floor_first)
            pairs.append(pair)
            first, second = (f, o) if floor_first else (o, f)
            print(f"round {r + 1} {path}: {first.path} {first.rate:.0f}/s p99 "
                  f"{first.p99_ms:.0f} ms, then {second.path} {second.rate:.0f}/s p99 "
                  f"{second.p99_ms:.0f} ms; ours/floor {pair.rate_ratio:.2f}x", flush=True)
    return pairs


# ---------------------------------------------------------------------------------------
# Report: medians and spread over rounds
# ---------------------------------------------------------------------------------------

def spread(values: list[float], fmt: str = "{:.0f}", suffix: str = "") -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med) + suffix
    return (f"{fmt.format(med)}{suffix} ({fmt.format(min(values))}–"
            f"{fmt.format(max(values))})")


def report(pairs: list[Pair], args: argparse.Namespace) -> None:
    floors = [p.floor for p in pairs]
    print(f"\n{args.rounds} rounds of {args.events} events; medians (min–max). Ratios are "
          "same-run pairs: events/s ours/floor, p99 floor/ours (higher is better).\n")
    print("| path | runs | events/s | p50 ms | p99 ms | events/s vs floor | p99 vs floor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {label('floor', args)} | {len(floors)} | {spread([r.rate for r in floors])} | "
          f"{spread([r.p50_ms for r in floors])} | {spread([r.p99_ms for r in floors])} | "
          f"1.00x | 1.00x |")
    for path in args.paths:
        mine = [p for p in pairs if p.ours.path == path]
        runs = [p.ours for p in mine]
        print(f"| {label(path, args)} | {len(runs)} | {spread([r.rate for r in runs])} | "
              f"{spread([r.p50_ms for r in runs])} | {spread([r.p99_ms for r in runs])} | "
              f"{spread([p.rate_ratio for p in mine], '{:.2f}', 'x')} | "
              f"{spread([p.p99_ratio for p in mine], '{:.2f}', 'x')} |")
    print("\nCPU ms per event over the rounds alone (medians):\n")
    names = ["client", "serve", "ingest", "floor", "broker"]
    print("| path | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for path in ["floor", *args.paths]:
        runs = floors if path == "floor" else [p.ours for p in pairs if p.ours.path == path]
        cells = [f"{statistics.median([r.cpu_ms[n] for r in runs]):.2f}"
                 if n in runs[0].cpu_ms else "—" for n in names]
        print(f"| {label(path, args)} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=3000, help="events per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per path, each paired "
                   "with a floor round")
    p.add_argument("--concurrency", type=int, default=64, help="publishes in flight")
    p.add_argument("--http-concurrency", type=int, default=8, help="single POSTs in flight")
    p.add_argument("--batch-size", type=int, default=250, help="items per batch POST "
                   "(the API takes up to 1000)")
    p.add_argument("--batch-concurrency", type=int, default=4, help="batch POSTs in flight")
    p.add_argument("--db-url", default=None, help="store URL (default: a fresh SQLite file; "
                   "a PostgreSQL URL must point at an empty schema)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of "
                   + ", ".join(PATHS))
    p.add_argument("--json", type=Path, default=None, help="also write every run here")
    args = p.parse_args()
    args.paths = args.paths.split(",")
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown paths: {', '.join(sorted(unknown))}")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {psutil.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp, ExitStack() as stack:
        rig = build_rig(args, Path(tmp), stack)
        pairs = run_pairs(rig)
    report(pairs, args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([{
            "path": x.path, "events": x.events, "seconds": x.seconds, "rate": x.rate,
            "p50_ms": x.p50_ms, "p99_ms": x.p99_ms, "cpu_ms": x.cpu_ms,
            "pair": i, "floor_first": pair.floor_first}
            for i, pair in enumerate(pairs) for x in (pair.ours, pair.floor)], indent=1))


if __name__ == "__main__":
    main()
