"""A candidate-vs-live queue generated with the real tiny models from the registry.

Both versions answer with the same seeds (transformers on CPU); the labeler sees the two
answers shuffled and without their origin; the human win rate counts the verdicts.
The sink persists with the store's write path in place of broker + ingester (that path
is covered by test_workbench_browser.py).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.registry import Registry
from feedback.store import FeedbackStore
from labeling.api import create_app
from labeling.settings import LabelingSettings
from labeling.sources import generate
from training.tiny_model import build_tiny_model

KEYS = {"sk-ann": "labeler", "sk-lead": "admin"}


class StoreSink:
    def __init__(self, store):
        self.store = store

    async def submit(self, events, caller, key):
        self.store.persist([e.model_copy(update={"source": caller.feedback_source,
                                                 "submitted_by": caller.name})
                            for e in events])

    def close(self):
        pass


@pytest.fixture
def registry(tmp_path, tiny_model) -> Registry:
    reg = Registry(tmp_path / "registry")
    base = reg.register_base(tiny_model)
    reg.set_live(base.version, "test")
    other = build_tiny_model(tmp_path / "other", seed=1)
    reg.create_version("policy", other, {"parent": base.version})
    return reg


def test_candidate_queue_is_blind_and_yields_a_human_win_rate(tmp_path, registry):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    store.migrate()
    live = registry.live_policy()
    candidate = next(m.version for m in registry.list("policy") if m.version != live)
    app = create_app(LabelingSettings(auth={"keys": KEYS}), store.engine, StoreSink(store),
                     registry)
    lead, ann = {"Authorization": "Bearer sk-lead"}, {"Authorization": "Bearer sk-ann"}
    with TestClient(app) as client:
        r = client.post("/v1/labeling/queues", headers=lead, json={
            "name": "cand", "source": "candidate", "task": "comparison",
            "candidate": candidate, "prompts": ["Say hi.", "Name a fruit."],
            "samples_per_prompt": 2, "sampling": {"max_tokens": 8}})
        assert r.status_code == 201, r.text
        assert r.json()["items"] == 4
        bad = client.post("/v1/labeling/queues", headers=lead, json={
            "name": "bad", "source": "candidate", "candidate": "policy-999999",
            "task": "comparison", "prompts": ["x"]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "candidate"
        queue = r.json()["id"]
        (q,) = [x for x in client.get("/v1/labeling/queues", headers=lead).json()["queues"]]
        assert q["live"] == live and q["candidate"] == candidate

        cand_answers = generate(registry.path(candidate), ["Say hi.", "Name a fruit."],
                                samples_per_prompt=2, sampling={"max_tokens": 8},
                                device="cpu", seed=0)
        mine = {a for answers in cand_answers for a in answers}
        for _ in range(4):
            item = client.get(f"/v1/labeling/queues/{queue}/next", headers=ann).json()
            assert all(set(a) == {"slot", "text"} for a in item["answers"])
            texts = [a["text"] for a in item["answers"]]
            if texts[0] == texts[1]:
                preferred = "tie"
            else:
                preferred = "a" if texts[0] in mine else "b"
            assert client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                               headers=ann, json={"preferred": preferred}).status_code == 200
        w = client.get(f"/v1/labeling/queues/{queue}/winrate", headers=lead).json()
        assert w["n"] == 4 and w["losses"] == 0 and w["wins"] + w["ties"] == 4
    store.close()
