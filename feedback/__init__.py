"""The feedback pipeline: Kafka broker, ingester and SQL feedback store.

* :mod:`feedback.broker` — the embedded Kafka-protocol broker (local runs and tests).
* :mod:`feedback.ingest` — ``rlhf ingest``: parse → validate → persist → commit, DLQ.
* :mod:`feedback.store` — the SQLAlchemy store (SQLite or PostgreSQL) and its queries.

The event definitions it consumes live in :mod:`core.events`.
"""
