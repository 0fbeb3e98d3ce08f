"""No single request can make the server answer 5xx, block it, or corrupt feedback.

A real ``rlhf serve`` with API keys, the real broker and a real ingester into SQLite.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from contextlib import ExitStack

import httpx
import pytest

from core.events import decode_event
from core.settings import KafkaSettings
from feedback.broker import EmbeddedBroker
from feedback.store import FeedbackStore
from tests.fixtures.kafka import IngesterProcess, read_topic, wait_for
from tests.fixtures.server import RemoteServer

pytestmark = [pytest.mark.engine, pytest.mark.kafka]

KEYS = {"sk-user": "user", "sk-labeler": "labeler", "sk-admin": "admin"}
MiB = 1 << 20


@pytest.fixture(scope="module")
def stack(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    with ExitStack() as started:  # each process stopped, also when a later one fails
        broker = started.enter_context(EmbeddedBroker(KafkaSettings(request_timeout_ms=2000),
                                                      log_path=tmp / "tansu.log"))
        db_url = f"sqlite:///{tmp / 'feedback.db'}"
        store = FeedbackStore(db_url)
        started.callback(store.close)
        store.migrate()
        started.enter_context(IngesterProcess(broker.kafka, db_url, tmp / "ingest.log"))
        server = started.enter_context(RemoteServer(tiny_model, log_path=tmp / "server.log", env={
            "RLHF_PUBLISH_EVENTS": "true",
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "RLHF_KAFKA__REQUEST_TIMEOUT_MS": "2000",
            "RLHF_AUTH__KEYS": json.dumps(KEYS)}))
        yield broker, server, store


def _auth(key: str = "sk-user") -> dict:
    return {"Authorization": f"Bearer {key}"}


def _post(server, path: str, key: str = "sk-user", timeout: float = 60, **kw) -> httpx.Response:
    headers = {**_auth(key), **kw.pop("headers", {})}
    return httpx.post(server.url + path, headers=headers, timeout=timeout, **kw)


def _complete(server, key: str = "sk-user", headers: dict | None = None, **body) -> httpx.Response:
    return _post(server, "/v1/completions", key, headers=headers or {}, json={
        "model": "tiny", "prompt": f"Describe a rainy day {uuid.uuid4().hex[:6]}",
        "max_tokens": 4, **body})


def _logged(broker, request_id: str):
    """The completion record logged for ``request_id``, or None (one second of reading)."""
    kafka = broker.kafka
    for record in read_topic(kafka, kafka.topics.completions, expected=10**9, timeout=1):
        event = decode_event(record.value)
        if event.request_id == request_id:
            return event
    return None


def _assert_error(r: httpx.Response, status: int, param: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["code"] == status
    return err


# -- item 1: input that used to be a 5xx is a 4xx naming the field ------------------------

@pytest.mark.parametrize("body,param", [
    ({"min_tokens": 8, "max_tokens": 2}, "min_tokens"),
    ({"min_tokens": 20}, "min_tokens"),  # more than the default max_tokens
    ({"seed": 2**64}, "seed"),
    ({"seed": 2**63}, "seed"),
])
def test_out_of_range_sampling_values_are_400_naming_the_field(stack, body, param):
    _, server, _ = stack
    _assert_error(_complete(server, **body), 400, param)
    assert _complete(server).status_code == 200  # and the engine is still fine


def test_a_nan_score_is_422_with_a_json_body(stack):
    _, server, _ = stack
    r = _post(server, "/v1/feedback", content=b'{"type": "rating", "prompt": "p", '
              b'"response": "r", "score": NaN}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]  # a JSON body: the NaN input is not echoed back
    assert err["param"].endswith("score") and "finite" in err["message"]


def test_feedback_too_large_for_kafka_is_413_naming_the_field(stack):
    _, server, _ = stack
    # Each field within the event limits, together over Kafka's 1 MiB per record.
    r = _post(server, "/v1/feedback", "sk-labeler", json={
        "type": "demonstration", "prompt": "p" * 550_000, "response": "x" * 600_000})
    _assert_error(r, 413, "response")
    r = _post(server, "/v1/feedback/batch", "sk-labeler", json={"items": [
        {"type": "demonstration", "prompt": "p", "response": "ok"},
        {"type": "demonstration", "prompt": "y" * 600_000, "response": "r" * 550_000}]})
    _assert_error(r, 413, "items.1.prompt")


def test_a_20_mb_body_is_413(stack):
    _, server, _ = stack
    r = _post(server, "/v1/feedback", "sk-labeler",
              json={"type": "demonstration", "prompt": "p", "response": "x" * (20 * MiB)})
    _assert_error(r, 413, "body")


# -- item 2: sizes are checked before expensive work, off the event loop -------------------

def _health_latencies_while(server, work) -> tuple[httpx.Response, list[float]]:
    """Run ``work`` in a thread and time /health calls until it ends."""
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    latencies = []
    while thread.is_alive():
        started = time.monotonic()
        try:
            assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        except httpx.TimeoutException:
            pass
        latencies.append(time.monotonic() - started)
    thread.join()
    return result[0], latencies


@pytest.mark.parametrize("chars,status,param", [
    (20 * MiB, 413, "body"),       # over the body limit
    (6 * MiB, 413, "prompt"),      # under the body limit, over the prompt limit
    (400_000, 400, "prompt"),      # tokenised (off the loop), too long for the context
])
def test_huge_prompts_are_refused_while_health_answers_within_a_second(stack, chars, status,
                                                                        param):
    _, server, _ = stack
    r, latencies = _health_latencies_while(server, lambda: _complete(
        server, prompt="The cat walks in the park. " * (chars // 27)))
    _assert_error(r, status, param)
    assert max(latencies) < 1.0, latencies


def test_huge_chat_messages_are_refused_while_health_answers(stack):
    _, server, _ = stack
    body = {"model": "tiny", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hello there " * 40_000}]}
    r, latencies = _health_latencies_while(
        server, lambda: _post(server, "/v1/chat/completions", json=body))
    _assert_error(r, 400, "messages")
    assert max(latencies) < 1.0, latencies


def test_too_many_stop_strings_or_messages_are_refused(stack):
    _, server, _ = stack
    _assert_error(_complete(server, stop=["s" * 5000]), 400, "stop")
    r = _post(server, "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}] * 5000})
    _assert_error(r, 400, "messages")


# -- item 4: completion ids are the server's; the client's id is a correlation id ----------

def test_same_client_request_id_gets_distinct_ids_and_feedback_joins_the_right_one(stack):
    broker, server, store = stack
    shared = {"X-Request-Id": "client-42"}
    a = _complete(server, "sk-user", headers=shared, n=2, max_tokens=6)
    b = _complete(server, "sk-labeler", headers=shared, n=2, max_tokens=6)
    assert a.status_code == b.status_code == 200
    assert a.headers["x-request-id"] == b.headers["x-request-id"] == "client-42"
    a_id, b_id = a.json()["id"], b.json()["id"]
    assert a_id != b_id and "client-42" not in (a_id, b_id)

    r = _post(server, "/v1/feedback", "sk-labeler", json={
        "type": "ranking", "request_id": b_id, "choices": [0, 1], "ranks": [2, 1]})
    assert r.status_code == 202, r.text
    (group,) = wait_for(lambda: [g for g in store.preference_groups()
                                 if g.request_id == b_id], 30, what="the ranking row")
    assert group.responses == [c["text"] for c in b.json()["choices"]]
    record = wait_for(lambda: _logged(broker, b_id), 20, what="b's completion record")
    assert record.client_request_id == "client-42"


# -- item 5: attribution comes from the key -----------------------------------------------

def test_submitted_by_is_the_key_not_the_body(stack):
    broker, server, _ = stack
    r = _post(server, "/v1/feedback", "sk-labeler", json={
        "type": "rating", "prompt": "p", "response": "r", "score": 3,
        "submitted_by": "someone-else", "source": "admin"})
    assert r.status_code == 202, r.text
    event_id = r.json()["event_id"]
    kafka = broker.kafka

    def sent():
        return [e for e in (decode_event(m.value) for m in read_topic(
            kafka, kafka.topics.feedback, expected=10**9, timeout=1)) if e.event_id == event_id]

    (event,) = wait_for(sent, 20, what="the rating on the feedback topic")
    assert event.submitted_by == "key-" + hashlib.sha256(b"sk-labeler").hexdigest()[:12]
    assert event.source == "labeler"


# -- item 7: store=false and the eval marker ----------------------------------------------

def test_store_false_is_served_but_not_logged(stack):
    broker, server, _ = stack
    unlogged = _complete(server, store=False, metadata={"suite": "smoke"})
    assert unlogged.status_code == 200, unlogged.text
    logged = _complete(server)
    wait_for(lambda: _logged(broker, logged.json()["id"]), 20, what="the stored completion")
    assert _logged(broker, unlogged.json()["id"]) is None


def test_the_eval_header_logs_purpose_eval(stack):
    broker, server, _ = stack
    ev = _complete(server, headers={"X-RLHF-Eval": "1"})
    train = _complete(server)
    chat = _post(server, "/v1/chat/completions", headers={"X-RLHF-Eval": "true"}, json={
        "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    for r, purpose in ((ev, "eval"), (train, "train"), (chat, "eval")):
        assert r.status_code == 200, r.text
        record = wait_for(lambda r=r: _logged(broker, r.json()["id"]), 20, what="the record")
        assert record.purpose == purpose


# -- the completion log of what vLLM's serving layer answers ---------------------------------

def test_a_completion_with_characters_the_store_cannot_hold_is_logged_sanitised(stack):
    """A NUL in what was served (here the prompt and the chat message; the tiny model
    generates NUL itself now and then) is replaced by U+FFFD in the logged completion,
    which the ingester stores, instead of the completion being dropped."""
    broker, server, store = stack
    tag = uuid.uuid4().hex[:6]
    r = _complete(server, prompt=f"nul\x00here {tag}", max_tokens=3)
    assert r.status_code == 200, r.text
    chat = _post(server, "/v1/chat/completions", json={
        "model": "tiny", "max_tokens": 2,
        "messages": [{"role": "user", "content": f"nul\x00chat {tag}"}]})
    assert chat.status_code == 200, chat.text

    record = wait_for(lambda: _logged(broker, r.json()["id"]), 20, what="the completion")
    assert record.prompt == f"nul\ufffdhere {tag}"
    chat_record = wait_for(lambda: _logged(broker, chat.json()["id"]), 20, what="the chat")
    assert chat_record.messages[0]["content"] == f"nul\ufffdchat {tag}"
    stored = wait_for(lambda: store.get_completion(r.json()["id"]), 30, what="the stored one")
    assert stored.prompt == record.prompt


def test_a_batch_of_prompts_is_logged_one_record_per_prompt(stack):
    broker, server, _ = stack
    prompts = [f"A sunny day {uuid.uuid4().hex[:6]}", f"A long night {uuid.uuid4().hex[:6]}"]
    r = _post(server, "/v1/completions", json={"model": "tiny", "prompt": prompts, "n": 2,
                                               "max_tokens": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    texts = {c["index"]: c["text"] for c in body["choices"]}
    for i, prompt in enumerate(prompts):
        record = wait_for(lambda i=i: _logged(broker, f"{body['id']}-{i}"), 30,
                          what=f"the record of prompt {i}")
        assert record.prompt == prompt
        assert record.policy_version == body["policy_version"]
        assert [c.text for c in record.choices] == [texts[2 * i], texts[2 * i + 1]]


def test_a_streamed_chat_with_content_parts_is_logged_with_every_choice(stack):
    broker, server, _ = stack
    body = {"model": "tiny", "n": 2, "max_tokens": 4, "stream": True, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Rain"},
                                     {"type": "text", "text": f" {uuid.uuid4().hex[:6]}"}]}]}
    streamed: dict[int, str] = {}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers=_auth(), timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                completion_id = chunk["id"]
                for c in chunk["choices"]:
                    streamed[c["index"]] = streamed.get(c["index"], "") + \
                        (c["delta"].get("content") or "")
    record = wait_for(lambda: _logged(broker, completion_id), 30, what="the chat record")
    assert record.endpoint == "chat.completions"
    assert {c.index: c.text for c in record.choices} == streamed
    assert record.messages[0]["content"][0]["text"] == "Rain"
