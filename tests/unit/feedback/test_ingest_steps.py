"""The ingester's pure steps and its dead letters: parse → validate → route, and headers."""

from __future__ import annotations

import json

from core.events import Demonstration, Rating, encode_event
from core.settings import TopicSettings
from feedback.ingest.dlq import MAX_ERROR_BYTES, DeadLetter, dlq_headers
from feedback.ingest.steps import Record, route
from tests.fixtures.events import completion

TOPICS = TopicSettings()


def _rec(value: bytes | None, offset: int = 0, topic: str = TOPICS.feedback,
         key: bytes | None = b"k") -> Record:
    return Record(topic, 2, offset, value, key)


def test_good_records_become_events_in_order_with_their_origin():
    demo = Demonstration(prompt="p", response="r")
    c = completion("req-1")
    routed = route([_rec(encode_event(demo), 5),
                    _rec(encode_event(c), 6, topic=TOPICS.completions)], TOPICS)
    assert routed.events == [demo, c] and routed.dead == {}
    assert routed.origins() == {demo.event_id: (2, 5), c.event_id: (2, 6)}
    assert routed.outcomes(set()) == [False, False]


def test_every_bad_record_is_a_dead_letter_with_its_bytes_key_and_origin():
    rating = Rating(prompt="p", response="r", score=1)
    no_id = {k: v for k, v in json.loads(encode_event(rating)).items() if k != "event_id"}
    records = [_rec(b"", 0), _rec(b"{not json", 1), _rec(json.dumps(no_id).encode(), 2),
               _rec(encode_event(completion("c")), 3),  # completion on the feedback topic
               _rec(encode_event(rating), 4, topic=TOPICS.completions),
               _rec(encode_event(rating), 5)]
    routed = route(records, TOPICS)
    assert routed.events == [rating]
    reasons = {i: d.reason for i, d in routed.dead.items()}
    assert reasons[0] == "empty message"
    assert "not JSON" in reasons[1]
    assert reasons[2] == "missing event_id"
    assert "completion event on the feedback topic" in reasons[3]
    assert "'rating' event on the completions topic" in reasons[4]
    assert routed.dead[1] == DeadLetter(b"{not json", b"k", reasons[1], TOPICS.feedback, 2, 1)
    assert routed.outcomes(set()) == [True] * 5 + [False]


def test_a_store_rejection_marks_the_first_record_of_its_event():
    rating = Rating(prompt="p", response="r", score=1)
    routed = route([_rec(encode_event(rating), 0), _rec(encode_event(rating), 1)], TOPICS)
    assert routed.first == {rating.event_id: 0}  # the replayed copy is the store's to skip
    assert routed.outcomes({rating.event_id}) == [True, False]


def test_record_of_reads_a_consumer_record_like_object():
    class ConsumerRecord:
        topic, partition, offset, value, key = "t", 1, 9, b"v", b"k"

    assert Record.of(ConsumerRecord()) == Record("t", 1, 9, b"v", b"k")


def test_dlq_headers_name_the_error_and_origin():
    letter = DeadLetter(b"x", None, "ranks: too short", "rlhf.feedback", 0, 17)
    assert dict(letter.headers()) == {"error": b"ranks: too short",
                                      "source_topic": b"rlhf.feedback",
                                      "source_partition": b"0", "source_offset": b"17"}


def test_unknown_origin_is_empty_headers_and_long_errors_are_cut():
    headers = dict(dlq_headers("é" * 10_000, "rlhf.feedback", None, None))
    assert headers["source_partition"] == b"" and headers["source_offset"] == b""
    assert len(headers["error"]) == MAX_ERROR_BYTES


def test_headers_of_a_reason_with_unencodable_text_do_not_raise():
    headers = dict(DeadLetter(None, None, "bad \udcff surrogate", "t").headers())
    assert headers["error"].startswith(b"bad ")
