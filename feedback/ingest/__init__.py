"""The ingester: Kafka → parse → validate → persist → commit, with a dead-letter topic."""

from feedback.ingest.consumer import Ingester, make_consumer, serve_metrics

__all__ = ["Ingester", "make_consumer", "serve_metrics"]
