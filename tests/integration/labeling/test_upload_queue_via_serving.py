"""An uploaded-prompt queue answered by a real ``rlhf serve`` (vLLM, n = K), judged through
the serving API's /v1/feedback with the labeler's own key, stored by the real ingester."""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from core.auth import KeyRing
from feedback.store import FeedbackStore
from labeling.api import create_app
from labeling.settings import LabelingSettings
from labeling.submit import ServingSink
from tests.fixtures.kafka import IngesterProcess, wait_for
from tests.fixtures.server import RemoteServer

pytestmark = [pytest.mark.engine, pytest.mark.kafka]

KEYS = {"sk-ann": "labeler", "sk-lead": "admin"}


def test_upload_queue_answers_come_from_serving_and_judgments_go_back_through_it(
        tiny_model, kafka_broker, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'fb.db'}"
    store = FeedbackStore(db_url)
    store.migrate()
    with ExitStack() as started:  # the ingester stops even if the server never gets ready
        started.callback(store.close)
        started.enter_context(IngesterProcess(kafka_broker.kafka, db_url,
                                              tmp_path / "ingest.log"))
        server = started.enter_context(RemoteServer(
            tiny_model, log_path=tmp_path / "server.log", env={
                "RLHF_PUBLISH_EVENTS": "true",
                "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
                "RLHF_AUTH__KEYS": json.dumps(KEYS)}))
        settings = LabelingSettings(auth={"keys": KEYS}, serving_url=server.url,
                                    serving_model="tiny", submit_via="serving")
        app = create_app(settings, store.engine,
                         ServingSink(server.url, settings.serving_timeout_s))
        lead, ann = {"Authorization": "Bearer sk-lead"}, {"Authorization": "Bearer sk-ann"}
        with TestClient(app) as client:
            r = client.post("/v1/labeling/queues", headers=lead, json={
                "name": "uploaded", "source": "upload", "task": "ranking", "k": 3,
                "prompts": ["Describe a rainy day."], "sampling": {"max_tokens": 6}})
            assert r.status_code == 201, r.text
            item = client.get(f"/v1/labeling/queues/{r.json()['id']}/next",
                              headers=ann).json()
            assert len(item["answers"]) == 3
            r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                            headers=ann, json={"ranks": [1, 1, 2]})
            assert r.status_code == 200, r.text
        (group,) = wait_for(lambda: store.preference_groups(), 60, what="the ranking")
        assert group.source == "labeler" and group.policy_version == "base"
        assert group.prompt.endswith("Describe a rainy day.") or "rainy" in group.prompt
        assert sorted(group.ranks) == [1, 1, 2]
        labeler = KeyRing(KEYS).identify("sk-ann").name
        with store.engine.connect() as c:
            from sqlalchemy import text

            who = c.execute(text("select submitted_by from feedback")).scalar_one()
        assert who == labeler  # identity from the forwarded key
