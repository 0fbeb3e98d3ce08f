"""``core.consumer.consumer_lag``: the arithmetic of rlhf:ingest_lag, on a consumer's state.

The consumer here is a stand-in for kafka-python's state (assignment, the high watermark
of its last fetch, its position); the real broker case is
tests/integration/feedback/test_end_offsets.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka import TopicPartition

from core.consumer import consumer_lag
from feedback.ingest.steps import Record

A, B, C = (TopicPartition("rlhf.feedback", p) for p in range(3))


@dataclass
class ConsumerState:
    highwaters: dict[TopicPartition, int | None]
    positions: dict[TopicPartition, int]

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


def test_lag_is_high_watermark_minus_position():
    # A: 50 − 10 = 40; B: fully read, 7 − 7 = 0; C: never fetched, unknown → left out
    state = ConsumerState({A: 50, B: 7, C: None}, {A: 10, B: 7, C: 0})
    assert consumer_lag(state) == {A: 40, B: 0}


def test_a_batch_still_waiting_counts_from_its_first_offset():
    # the batch holds A@20…29 (position already 30) and B@3: A 50 − 20 = 30, B 7 − 3 = 4
    waiting = [Record("rlhf.feedback", 0, o, b"") for o in range(29, 19, -1)]
    waiting.append(Record("rlhf.feedback", 1, 3, b""))
    state = ConsumerState({A: 50, B: 7, C: None}, {A: 30, B: 4, C: 0})
    assert consumer_lag(state, waiting) == {A: 30, B: 4}


def test_lag_is_never_negative():
    # a position past a stale high watermark (records arrived since the last fetch): 0
    assert consumer_lag(ConsumerState({A: 5}, {A: 9})) == {A: 0}
