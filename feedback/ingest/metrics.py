"""Prometheus metrics of the ingester (``rlhf:ingest_…``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry or REGISTRY
        self.consumed = Counter("rlhf:ingest_consumed", "Records read from Kafka.",
                                ["topic"], registry=r)
        self.persisted = Counter("rlhf:ingest_persisted", "Events written to the store "
                                 "(stored, parked as pending, or resolved).", ["kind"],
                                 registry=r)
        self.duplicates = Counter("rlhf:ingest_duplicates", "Events skipped as already "
                                  "stored (replays).", registry=r)
        self.dead_lettered = Counter("rlhf:ingest_dead_lettered", "Records sent to the "
                                     "dead-letter topic.", ["topic"], registry=r)
        self.lag = Gauge("rlhf:ingest_lag", "Records behind the partition's high-water mark.",
                         ["topic", "partition"], registry=r)
        self.batch_seconds = Histogram("rlhf:ingest_batch_seconds", "Time to parse, persist "
                                       "and commit one batch.", registry=r)
        self.poisoned_batches = Counter(
            "rlhf:ingest_poisoned_batches", "Batches the store refused for their contents "
            "and wrote one event at a time.", registry=r)
        self.expired = Counter("rlhf:ingest_expired", "Parked feedback dead-lettered "
                               "because its completion did not arrive in time.", registry=r)
        self.db_retries = Counter("rlhf:ingest_db_retries", "Store writes retried after a "
                                  "database error.", registry=r)
