"""Reading Kafka without a group, and where a partition really ends.

Serving replicas and the deploy controller's fleet watcher both read the whole topic
without a consumer group (every reader sees every event); each then seeks where it needs.

Where a partition ends comes from Fetch responses, never from ListOffsets: the embedded
broker (Tansu 0.6.0) answers ListOffsets "latest" — ``KafkaConsumer.end_offsets()``,
``seek_to_end()``, the admin client's ``OffsetSpec.LATEST`` — with the newest record
batch's base offset + 1 instead of the high watermark, so 50 records produced in 5
batches of 10 read as 41 (in the soak run, 50 dead letters read as 3;
docs/tansu-end-offsets.md). Every Fetch response carries the true high watermark,
which kafka-python keeps as ``consumer.highwater(tp)``; :func:`high_watermarks` and
:func:`consumer_lag` read it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
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


def high_watermarks(consumer: Any, partitions: Sequence[Any],
                    timeout_s: float = 10.0) -> dict[Any, int]:
    """Each partition's end (the offset its next record will get); ``consumer`` is left there.

    ``consumer`` is group-less, assigned ``partitions``, and has fetched nothing from them
    yet (``highwater()`` would otherwise answer from an older fetch: ValueError). It seeks
    each partition to its ListOffsets end — the true end on Kafka, at most one batch
    before it on Tansu — and polls until a Fetch response has given every partition's
    high watermark, reading (and dropping) at most that last batch. Raises kafka's
    KafkaTimeoutError when a partition has not answered within ``timeout_s``.
    """
    from kafka.errors import KafkaTimeoutError

    if not partitions:
        return {}
    fetched = [p for p in partitions if consumer.highwater(p) is not None]
    if fetched:
        raise ValueError(f"the consumer has fetched from {fetched} already")
    consumer.seek_to_end(*partitions)
    deadline = time.monotonic() + timeout_s
    while missing := [p for p in partitions if consumer.highwater(p) is None]:
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(f"no fetch response for {missing} within {timeout_s:g}s")
        consumer.poll(timeout_ms=100)
    ends = {p: consumer.highwater(p) for p in partitions}
    for p, end in ends.items():
        consumer.seek(p, end)
    return ends


def consumer_lag(consumer: Any, waiting: Iterable[Any] = ()) -> dict[Any, int]:
    """Records of each assigned partition not yet done with: high watermark − consumer offset.

    The high watermark is the one the consumer's own fetches reported; partitions it has
    not fetched from yet are left out (unknown, not 0). The consumer offset is the
    position, except where ``waiting`` (records with topic, partition and offset: a batch
    polled but not yet committed) has records: those partitions count from the batch's
    first offset, since its records still wait although the position has passed them.
    """
    from kafka import TopicPartition

    first: dict[Any, int] = {}
    for r in waiting:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    lag = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            offset = first[tp] if tp in first else consumer.position(tp)
            lag[tp] = max(0, high - offset)
    return lag
