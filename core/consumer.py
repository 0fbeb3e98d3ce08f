"""A group-less consumer of every partition of one topic (followers of ``rlhf.policy``).

Serving replicas and the deploy controller's fleet watcher both read the whole topic
without a consumer group (every reader sees every event); each then seeks where it needs.
"""

from __future__ import annotations

from typing import Any

from core.settings import KafkaSettings


def assign_all_partitions(kafka: KafkaSettings, topic: str) -> tuple[Any, list[Any]]:
    """(consumer, partitions) assigned to every partition of ``topic``, not yet positioned.

    Raises RuntimeError while the topic does not exist (the caller retries).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    if not parts:
        consumer.close()
        raise RuntimeError(f"topic {topic} does not exist yet")
    consumer.assign(parts)
    return consumer, parts
