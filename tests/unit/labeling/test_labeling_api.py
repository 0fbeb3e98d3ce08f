"""The workbench's API on a real store (SQLite and PostgreSQL).

The sink here stands in for broker + ingester: it stamps the events the way the broker
sink does and persists them with the store's own write path, so judgments are read back
from the feedback tables exactly as in production. The real path (Kafka, the ingester
process, a browser) is tests/integration/labeling/test_workbench_browser.py.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from core.events import CompletionChoice, CompletionRecord
from deploy.gates import GateResult, human_eval_gates, make_report
from deploy.settings import GateSettings
from labeling.api import create_app
from labeling.queues import NewItem, create_queue
from labeling.settings import HumanEvalSettings, LabelingSettings

KEYS = {"sk-ann": "labeler", "sk-bob": "labeler", "sk-cy": "labeler", "sk-lead": "admin",
        "sk-user": "user"}


class StoreSink:
    """Stamps like BrokerSink, then persists like the ingester (see the module docstring)."""

    def __init__(self, store):
        self.store, self.sent = store, []

    async def submit(self, events, caller, key):
        stamped = [e.model_copy(update={"source": caller.feedback_source,
                                        "submitted_by": caller.name}) for e in events]
        self.sent += stamped
        result = self.store.persist(stamped)
        assert not result.rejected

    def close(self):
        pass


def completion(request_id: str, prompt: str, n: int, purpose: str = "train"):
    return CompletionRecord(
        request_id=request_id, policy_version="policy-000001", model="m",
        endpoint="completions", prompt=prompt, purpose=purpose,
        choices=[CompletionChoice(index=i, text=f"{prompt} answer {i}") for i in range(n)])


@pytest.fixture
def bench(feedback_store):
    settings = LabelingSettings(auth={"keys": KEYS})
    sink = StoreSink(feedback_store)
    app = create_app(settings, feedback_store.engine, sink)
    with TestClient(app) as client:
        yield client, feedback_store, sink


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def traffic_queue(client, store, *, overlap=2, k=4, task="ranking") -> int:
    store.persist([completion("r1", "Tell a joke", 4), completion("r2", "Tell a joke", 4),
                   completion("r3", "Name a colour", 4),
                   completion("r4", "Secret eval prompt", 4, purpose="eval"),
                   completion("r5", "Too few", 1)])
    r = client.post("/v1/labeling/queues", headers=auth("sk-lead"), json={
        "name": "traffic", "source": "traffic", "task": task, "k": k, "overlap": overlap})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_traffic_queue_has_one_item_per_prompt_without_eval_traffic(bench):
    client, store, _ = bench
    queue = traffic_queue(client, store)
    (q,) = client.get("/v1/labeling/queues", headers=auth("sk-lead")).json()["queues"]
    assert q["id"] == queue and q["items"] == 2 and q["judgments_needed"] == 4


def test_items_reach_overlap_first_and_nobody_sees_one_twice(bench):
    client, store, _ = bench
    queue = traffic_queue(client, store, overlap=2)
    first = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-ann")).json()
    again = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-ann")).json()
    assert again["assignment_id"] == first["assignment_id"]  # held items come back
    bob = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-bob")).json()
    assert bob["prompt"] == first["prompt"]  # the same item until it reaches its overlap
    cy = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-cy")).json()
    assert cy["prompt"] != first["prompt"]  # that one is full: the next item starts
    ranks = {"ranks": [1, 2, 3, 4]}
    for key, item in (("sk-ann", first), ("sk-bob", bob)):
        r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                        headers=auth(key), json=ranks)
        assert r.status_code == 200, r.text
    nxt = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-ann")).json()
    assert nxt["prompt"] == cy["prompt"]
    r = client.post(f"/v1/labeling/assignments/{nxt['assignment_id']}/skip",
                    headers=auth("sk-ann"))
    assert r.status_code == 200
    r = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-ann"))
    assert r.status_code == 204  # done one, skipped the other: nothing left for ann


def test_answers_are_shuffled_and_blind_and_ranks_map_back(bench):
    client, store, sink = bench
    queue = traffic_queue(client, store, overlap=1)
    item = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-ann")).json()
    assert set(item) == {"assignment_id", "queue_id", "task", "instructions", "prompt",
                         "answers"}
    assert all(set(a) == {"slot", "text"} for a in item["answers"])
    assert "policy-000001" not in json.dumps(item)
    # rank the shown slots best-first by their answer number, with slots 3 and 4 tied
    shown = [int(a["text"].rsplit(" ", 1)[1]) for a in item["answers"]]
    slot_ranks = [[1, 2, 3, 3][answer] for answer in shown]
    r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                    headers=auth("sk-ann"), json={"ranks": slot_ranks,
                                                  "flags": {"1": ["hallucination"]},
                                                  "note": "fine"})
    assert r.status_code == 200, r.text
    (event,) = sink.sent
    assert event.choices == [0, 1, 2, 3] and event.ranks == [1, 2, 3, 3]
    assert event.source == "labeler" and event.submitted_by.startswith("key-")
    (group,) = store.preference_groups()
    assert group.ranks == [1, 2, 3, 3] and group.request_id in ("r2", "r3")
    r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                    headers=auth("sk-ann"), json={"ranks": slot_ranks})
    assert r.status_code == 409  # submitted once


@pytest.mark.parametrize(("body", "field"), [
    ({"ranks": [1, 2]}, "ranks"), ({"ranks": [1, 2, 3, 9]}, "ranks"),
    ({"ranks": [1, 2, 3, 4], "flags": {"7": ["harmful"]}}, "flags.7"),
    ({"ranks": [1, 2, 3, 4], "flags": {"1": ["nonsense"]}}, "flags.1")])
def test_bad_submissions_answer_400_naming_the_field(bench, body, field):
    client, store, sink = bench
    queue = traffic_queue(client, store)
    item = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth("sk-ann")).json()
    r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                    headers=auth("sk-ann"), json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    assert sink.sent == []


def test_roles(bench):
    client, store, _ = bench
    assert client.get("/v1/labeling/queues").status_code == 401
    assert client.get("/v1/labeling/queues", headers=auth("sk-user")).status_code == 403
    r = client.post("/v1/labeling/queues", headers=auth("sk-ann"),
                    json={"name": "x", "source": "traffic"})
    assert r.status_code == 403
    r = client.post("/v1/labeling/queues", headers=auth("sk-lead"),
                    json={"name": "x", "source": "upload"})
    assert r.status_code == 422 and "prompts" in r.json()["error"]["message"]
    assert client.get("/").status_code == 200 and "Sign in" in client.get("/lead").text


def test_agreement_and_progress_of_two_labelers(bench):
    client, store, _ = bench
    queue = traffic_queue(client, store, overlap=2, k=3)
    for key, ranks_by_answer in (("sk-ann", [1, 2, 3]), ("sk-bob", [1, 3, 2])):
        item = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth(key)).json()
        shown = [int(a["text"].rsplit(" ", 1)[1]) for a in item["answers"]]
        r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                        headers=auth(key), json={"ranks": [ranks_by_answer[a] for a in shown]})
        assert r.status_code == 200, r.text
    report = client.get(f"/v1/labeling/queues/{queue}/agreement",
                        headers=auth("sk-lead")).json()
    assert report["items_with_overlap"] == 1
    assert report["pairwise_agreement"] == pytest.approx(2 / 3)
    assert [x["agreement"] for x in report["labelers"]] == [pytest.approx(2 / 3)] * 2
    progress = client.get(f"/v1/labeling/queues/{queue}/progress",
                          headers=auth("sk-lead")).json()
    assert progress["judgments_done"] == 2 and progress["items_complete"] == 1
    assert [p["done"] for p in progress["labelers"]] == [1, 1]
    assert client.get(f"/v1/labeling/queues/{queue}/agreement",
                      headers=auth("sk-ann")).status_code == 403


def candidate_queue(store, n_items: int) -> int:
    return create_queue(store.engine, {
        "name": "cand", "source": "candidate", "task": "comparison", "k": 2,
        "samples_per_prompt": 1, "overlap": 1, "sampling": {}, "candidate": "policy-000002",
        "live": "policy-000001", "created_by": "lead"},
        [NewItem(prompt=f"p{i}", answers=[{"text": f"cand {i}", "origin": "candidate"},
                                          {"text": f"live {i}", "origin": "live"}])
         for i in range(n_items)])


def judge_all(client, queue: int, prefer: str, n: int, key: str = "sk-ann") -> None:
    """Prefer the candidate's (or the live) answer on every item, whichever slot it is in."""
    for _ in range(n):
        item = client.get(f"/v1/labeling/queues/{queue}/next", headers=auth(key)).json()
        slot = next(a["slot"] for a in item["answers"] if a["text"].startswith(prefer))
        r = client.post(f"/v1/labeling/assignments/{item['assignment_id']}/submit",
                        headers=auth(key), json={"preferred": "ab"[slot - 1]})
        assert r.status_code == 200, r.text


def test_a_candidate_below_the_human_lower_bound_is_not_promoted(bench):
    client, store, _ = bench
    queue = candidate_queue(store, 10)
    judge_all(client, queue, "cand", 8)
    judge_all(client, queue, "live", 2)
    w = client.get(f"/v1/labeling/queues/{queue}/winrate", headers=auth("sk-lead")).json()
    assert (w["wins"], w["losses"], w["n"]) == (8, 2, 10)
    assert w["lower"] == pytest.approx(0.4902, abs=1e-4)

    passing = {"reward_improvement": GateResult(value=1, threshold=0, passed=True, reason="")}
    strict = GateSettings(human_eval=HumanEvalSettings(required=True, min_items=10,
                                                       min_lower_bound=0.5))
    human = human_eval_gates("policy-000002", "policy-000001", strict, store)
    report = make_report("policy-000002", {**passing, **human}, against="policy-000001",
                         reference="policy-000001", reward_model="reward-000001",
                         prompts={}, settings={}, seconds=0.0)
    assert report.status == "failed" and report.failed == ["human_win_rate"]
    assert "lower bound 49.0% < 50.0%" in report.reasons[0]

    lenient = GateSettings(human_eval=HumanEvalSettings(required=True, min_items=10,
                                                        min_lower_bound=0.4))
    assert human_eval_gates("policy-000002", "policy-000001", lenient, store)[
        "human_win_rate"].passed
    # against another live version there are no judgments at all
    assert not human_eval_gates("policy-000002", "policy-000009", lenient, store)[
        "human_win_rate"].passed
    assert human_eval_gates("policy-000002", "policy-000001", GateSettings(), store) == {}
