"""How long the feedback pipeline stalls after an ingester is SIGKILLed and restarted.

    python benchmarks/recovery.py [--rounds 3] [--storage memory|durable]

A real embedded broker, a SQLite store and `rlhf ingest` as a child process (as `rlhf up`
runs it). Each round SIGKILLs the ingester, starts a new one at once, produces one
completion event and times until it is stored. Configurations compared in the same run:
dynamic group membership with the session timeout `rlhf up` used (6 s) and a short one
(3 s), and static membership (`RLHF_INGEST__GROUP_INSTANCE_ID`, KIP-345), where the
restarted member takes its partitions back without waiting for the dead one's session to
expire. (In benchmarks/soak.py, under `rlhf up` and load, a static member restarted a
second time on Tansu 0.6 stalled without consuming, so `rlhf up` uses dynamic membership
with a 3 s session.) Prints a table of median and max seconds per configuration; the cold
start of an ingester on a new group (process start and first join, nobody to wait for) is
the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kafka import KafkaProducer  # noqa: E402

from core.events import CompletionChoice, CompletionRecord, encode_event, event_key  # noqa: E402
from core.settings import KafkaSettings  # noqa: E402
from feedback.broker import DURABLE_STORAGE, MEMORY_STORAGE, EmbeddedBroker  # noqa: E402
from feedback.store import FeedbackStore  # noqa: E402

CONFIGS = {
    "dynamic, session 6 s": {"RLHF_INGEST__SESSION_TIMEOUT_MS": "6000"},
    "dynamic, session 3 s": {"RLHF_INGEST__SESSION_TIMEOUT_MS": "3000"},
    "static member, session 6 s": {"RLHF_INGEST__SESSION_TIMEOUT_MS": "6000",
                                   "RLHF_INGEST__GROUP_INSTANCE_ID": "ingest-0"},
    "static member, session 3 s": {"RLHF_INGEST__SESSION_TIMEOUT_MS": "3000",
                                   "RLHF_INGEST__GROUP_INSTANCE_ID": "ingest-0"},
}


def event(request_id: str) -> CompletionRecord:
    return CompletionRecord(
        request_id=request_id, policy_version="policy-0000", model="tiny",
        endpoint="completions", prompt="Describe the sea.",
        choices=[CompletionChoice(index=0, text="Blue.", finish_reason="stop",
                                  completion_tokens=2)],
        sampling_params={"n": 1}, prompt_tokens=3, completion_tokens=2)


def ingester(kafka: KafkaSettings, db_url: str, group: str, extra: dict[str, str],
             log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLHF_LOG_LEVEL": "warning",
           "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "RLHF_DATABASE__URL": db_url, "RLHF_INGEST__METRICS_PORT": "0",
           "RLHF_INGEST__GROUP_ID": group, "RLHF_INGEST__MAX_POLL_INTERVAL_MS": "10000",
           "RLHF_INGEST__POLL_TIMEOUT_MS": "200", **extra}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "feedback.cli", "ingest"], env=env,
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def time_to_store(producer: KafkaProducer, topic: str, store: FeedbackStore,
                  timeout_s: float = 90.0) -> float:
    """Produce one completion now; seconds until the store holds it."""
    record = event(f"probe-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    producer.send(topic, key=event_key(record), value=encode_event(record)).get(10)
    while time.monotonic() - started < timeout_s:
        if store.get_completion(record.request_id) is not None:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{record.request_id} was not stored within {timeout_s:g} s")


def measure(name: str, extra: dict[str, str], rounds: int, broker: EmbeddedBroker,
            tmp: Path) -> list[float]:
    db_url = f"sqlite:///{tmp / (uuid.uuid4().hex[:6] + '.db')}"
    store = FeedbackStore(db_url)
    store.migrate()
    group = f"recovery-{uuid.uuid4().hex[:6]}"
    producer = KafkaProducer(**broker.kafka.client_kwargs(), acks="all")
    topic = broker.kafka.topics.completions
    proc = ingester(broker.kafka, db_url, group, extra, tmp / "ingest.log")
    took = []
    try:
        cold = time_to_store(producer, topic, store)  # a new group: nobody to wait for
        print(f"  {name}: cold start {cold:.1f} s (process start + first join)", flush=True)
        for _ in range(rounds):
            proc.kill()
            proc.wait(10)
            proc = ingester(broker.kafka, db_url, group, extra, tmp / "ingest.log")
            took.append(time_to_store(producer, topic, store))
            print(f"  {name}: {took[-1]:.1f} s", flush=True)
    finally:
        proc.kill()
        proc.wait(10)
        producer.close()
        store.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--storage", choices=["memory", "durable"], default="durable")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-recovery-"))
    storage = DURABLE_STORAGE if args.storage == "durable" else MEMORY_STORAGE
    with EmbeddedBroker(KafkaSettings(request_timeout_ms=5000), storage_url=storage,
                        data_dir=tmp / "broker", log_path=tmp / "tansu.log") as broker:
        results = {name: measure(name, extra, args.rounds, broker, tmp)
                   for name, extra in CONFIGS.items()}
    print(f"\ningester SIGKILL → restart → next event stored ({args.storage} broker, "
          f"{args.rounds} rounds)")
    print(f"| {'configuration':<28} | median s | max s |")
    print(f"|{'-' * 30}|----------|-------|")
    for name, took in results.items():
        print(f"| {name:<28} | {statistics.median(took):8.1f} | {max(took):5.1f} |")


if __name__ == "__main__":
    main()
