"""Settings trees of the feedback pipeline's processes: ``rlhf ingest`` and ``rlhf broker``."""

from __future__ import annotations

from pydantic import Field

from core.settings import DatabaseSettings, KafkaSettings, ProcessSettings


class IngestSettings(ProcessSettings):
    """Everything ``rlhf ingest`` reads."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    group_id: str = Field("rlhf-ingest", description="Kafka consumer group of the ingesters.")
    batch_size: int = Field(500, ge=1, description="Most events persisted in one transaction.")
    poll_timeout_ms: int = Field(500, ge=1, description="How long one poll waits for events.")
    session_timeout_ms: int = Field(10000, ge=1000, description="Consumer group session timeout.")
    max_poll_interval_ms: int = Field(
        60000, ge=1000, description="Longest gap between polls before the group rebalances.")
    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus /metrics port.")


class BrokerSettings(ProcessSettings):
    """``rlhf broker``: the embedded Kafka-protocol broker used locally and in tests."""

    host: str = Field("127.0.0.1", description="Interface the embedded broker listens on.")
    port: int = Field(9092, ge=0, le=65535, description="Broker port (0 picks a free one).")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
