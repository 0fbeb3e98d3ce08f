"""From the public API to rows in the store: a real server (HTTP and gRPC), the real
broker, a real ``rlhf ingest`` subprocess and SQLite."""

from __future__ import annotations

import json
import uuid
from contextlib import ExitStack

import grpc
import httpx
import pytest

from core.settings import KafkaSettings
from feedback.broker import EmbeddedBroker
from feedback.store import FeedbackStore
from protos.rlhf.v1 import feedback_pb2 as fpb
from protos.rlhf.v1 import feedback_pb2_grpc
from tests.fixtures.kafka import IngesterProcess, wait_for
from tests.fixtures.server import RemoteServer

pytestmark = [pytest.mark.engine, pytest.mark.kafka]

KEYS = {"sk-user": "user", "sk-labeler": "labeler", "sk-admin": "admin"}


@pytest.fixture(scope="module")
def stack(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    with ExitStack() as started:  # whatever started is stopped, even if a later step fails
        broker = started.enter_context(
            EmbeddedBroker(KafkaSettings(request_timeout_ms=2000), log_path=tmp / "tansu.log"))
        db_url = f"sqlite:///{tmp / 'feedback.db'}"
        store = FeedbackStore(db_url)
        store.migrate()
        started.enter_context(IngesterProcess(broker.kafka, db_url, tmp / "ingest.log"))
        server = started.enter_context(RemoteServer(tiny_model, log_path=tmp / "server.log", env={
            "RLHF_PUBLISH_EVENTS": "true",
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "RLHF_KAFKA__REQUEST_TIMEOUT_MS": "2000",
            "RLHF_AUTH__KEYS": json.dumps(KEYS)}))
        yield broker, server, store


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _complete(server, key="sk-user", n=4) -> dict:
    r = httpx.post(server.url + "/v1/completions", headers=_auth(key), json={
        "model": "tiny", "prompt": f"Describe a rainy day {uuid.uuid4().hex[:6]}",
        "n": n, "max_tokens": 6})
    assert r.status_code == 200, r.text
    return r.json()


def test_api_requires_a_key_when_keys_are_configured(stack):
    _, server, _ = stack
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 401
    r = httpx.post(server.url + "/v1/completions", headers=_auth("sk-wrong"),
                   json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 401


def test_labeler_ranking_of_4_choices_is_stored_as_one_group(stack):
    _, server, store = stack
    completion = _complete(server, n=4)
    r = httpx.post(server.url + "/v1/feedback", headers=_auth("sk-labeler"), json={
        "type": "ranking", "request_id": completion["id"], "choices": [0, 1, 2, 3],
        "ranks": [2, 1, 4, 2], "source": "user"})
    assert r.status_code == 202, r.text
    event_id = r.json()["event_id"]

    groups = wait_for(lambda: [g for g in store.preference_groups()
                               if g.request_id == completion["id"]], 30, what="ranking row")
    (group,) = groups
    texts = [c["text"] for c in completion["choices"]]
    assert group.responses == texts
    assert group.ranks == [2, 1, 4, 2]
    assert group.policy_version == completion["policy_version"] == "base"
    assert group.source == "labeler"  # from the key, not the body's "user"
    stored = store.get_completion(completion["id"])
    assert stored is not None and len(stored.choices) == 4
    assert stored.user is not None and stored.user.startswith("key-")
    assert event_id


def test_resubmitting_an_event_id_is_stored_once(stack):
    _, server, store = stack
    completion = _complete(server, n=2)
    body = {"type": "comparison", "request_id": completion["id"], "choice_a": 0,
            "choice_b": 1, "preferred": "b", "event_id": f"evt-{uuid.uuid4().hex}"}
    for _ in range(3):
        assert httpx.post(server.url + "/v1/feedback", headers=_auth("sk-user"),
                          json=body).status_code == 202
    marker = _complete(server, n=2)  # a later event: once it is stored, so are the above
    httpx.post(server.url + "/v1/feedback", headers=_auth("sk-user"), json={
        "type": "rating", "request_id": marker["id"], "choice": 0, "score": 1.0})
    wait_for(lambda: store.get_completion(marker["id"]), 30, what="marker completion")
    wait_for(lambda: [g for g in store.preference_groups()
                      if g.request_id == completion["id"]], 30, what="comparison")
    assert len([g for g in store.preference_groups()
                if g.request_id == completion["id"]]) == 1


def test_batch_and_grpc_feedback_reach_the_store(stack):
    _, server, store = stack
    completion = _complete(server, n=3)
    before = store.counts()
    r = httpx.post(server.url + "/v1/feedback/batch", headers=_auth("sk-labeler"), json={
        "items": [
            {"type": "rating", "request_id": completion["id"], "choice": 2, "score": 0.5},
            {"type": "demonstration", "prompt": "Say hi.", "response": "Hi!"}]})
    assert r.status_code == 202 and len(r.json()["acks"]) == 2
    with grpc.insecure_channel(server.grpc_target) as ch:
        ack = feedback_pb2_grpc.FeedbackStub(ch).SubmitFeedback(
            fpb.FeedbackItem(ranking=fpb.Ranking(request_id=completion["id"],
                                                 choices=[0, 1, 2], ranks=[3, 2, 1])),
            metadata=(("authorization", "Bearer sk-labeler"),))
    assert ack.status == "accepted"
    wait_for(lambda: [g for g in store.preference_groups()
                      if g.request_id == completion["id"] and len(g.responses) == 3],
             30, what="grpc ranking")
    after = wait_for(lambda: (c := store.counts())["demonstration"] > before["demonstration"]
                     and c["rating"] > before["rating"] and c, 30, what="batch rows")
    assert after["demonstration"] == before["demonstration"] + 1


@pytest.mark.parametrize("body,field", [
    ({"type": "ranking", "choices": [0, 1], "ranks": [1, 2, 3]}, "ranks"),
    ({"type": "ranking", "choices": [0, 9], "ranks": [1, 2]}, "choices"),
    ({"type": "comparison", "choice_a": 0, "choice_b": 1, "preferred": "c"}, "preferred"),
    ({"type": "opinion", "text": "meh"}, "type"),
    ({"type": "rating", "choice": 0}, "score"),
])
def test_bad_feedback_is_422_naming_the_field(stack, body, field):
    _, server, _ = stack
    completion = _complete(server, n=2)
    r = httpx.post(server.url + "/v1/feedback", headers=_auth("sk-user"),
                   json={"request_id": completion["id"], **body})
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


def test_broker_down_feedback_is_503_and_generation_goes_on(stack):
    broker, server, _ = stack
    broker.stop()
    try:
        completion = _complete(server, n=2)  # serving does not depend on the broker
        r = httpx.post(server.url + "/v1/feedback", headers=_auth("sk-user"), json={
            "type": "comparison", "request_id": completion["id"], "choice_a": 0,
            "choice_b": 1, "preferred": "a"}, timeout=30)
        assert r.status_code == 503
        assert "retry" in r.json()["error"]["message"]
        metrics = httpx.get(server.url + "/metrics").text
        assert "rlhf:events_buffered" in metrics
    finally:
        broker.start()
