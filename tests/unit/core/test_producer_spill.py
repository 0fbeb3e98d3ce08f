"""The completion log spills instead of dropping, with no broker at all (the replay
against a real broker is in tests/integration/feedback/test_feedback_producers.py)."""

from __future__ import annotations

import logging
import re
import socket
from collections import Counter

from prometheus_client import CollectorRegistry

from core.events import decode_event
from core.producer import CompletionLogPublisher
from core.settings import KafkaSettings
from tests.fixtures.events import completion


def _nowhere() -> KafkaSettings:
    """Kafka settings pointing at a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=200)


def _spilled_ids(directory) -> Counter:
    return Counter(decode_event(line).event_id for f in directory.glob("*.jsonl")
                   for line in f.read_bytes().splitlines())


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"topic": "rlhf.completions", **labels}) or 0.0


def test_overflow_and_shutdown_spill_every_event_exactly_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="core.producer")
    registry = CollectorRegistry()
    log = CompletionLogPublisher(_nowhere(), buffer_size=3, registry=registry,
                                 retry_backoff_s=0.05, spill_dir=tmp_path,
                                 replay_interval_s=3600)
    events = [completion(f"r{i}") for i in range(5)]
    for e in events:
        log.publish_nowait(e)
    # 5 events, room for 3: the two oldest went to disk at once, nothing was dropped
    assert log.buffered == 3 and log.spilled == 2
    assert _sample(registry, "rlhf:events_spilled_total", reason="buffer_full") == 2
    # logged with its request id (which two depends on what the sender had taken)
    assert re.search(r"spilled r[0-4] \(event [0-9a-f]{32}\)", caplog.text)

    log.close(timeout=0.1)  # the broker never answered: the rest is spilled, not lost
    assert _spilled_ids(tmp_path) == Counter(e.event_id for e in events)
    assert _sample(registry, "rlhf:events_spilled_total", reason="shutdown") == 3
    assert _sample(registry, "rlhf:events_dropped_total", reason="no_spill") == 0
    assert _sample(registry, "rlhf:events_buffered") == 0


def test_without_a_spill_directory_the_overflow_is_dropped_and_counted(caplog):
    registry = CollectorRegistry()
    log = CompletionLogPublisher(_nowhere(), buffer_size=1, registry=registry,
                                 retry_backoff_s=0.05)
    log.publish_nowait(completion("first"))
    log.publish_nowait(completion("second"))
    assert _sample(registry, "rlhf:events_dropped_total", reason="no_spill") == 1
    # the one not yet taken by the sender, named by its request id
    assert re.search(r"LOST (first|second) \(event [0-9a-f]{32}\) \(no_spill\)", caplog.text)
    log.close(timeout=0.1)
