"""Gates, promote and rollback on a real registry, reward model, broker and controller.

One world per module (the reward model takes the longest to build): the tiny base, a
reward model trained on synthetic rankings (higher reward for the marker word), a live
policy, and candidates steered to pass or fail particular gates (deploy_policies.py).
Each test works on its own copy of the registry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer
from typer.testing import CliRunner

from core.auth import KeyRing
from core.events import CompletionChoice, CompletionRecord
from core.registry import Registry
from deploy.api import create_app
from deploy.cli import deploy_app
from deploy.controller import DeployController
from deploy.gates import evaluate_and_record
from deploy.notices import decode_policy_event
from deploy.settings import DeploySettings, GateSettings
from feedback.store import FeedbackStore
from tests.fixtures.kafka import produce_raw, read_topic, wait_for
from tests.integration.deploy.deploy_policies import HACK, add_policy, marker_token_ids
from tests.integration.deploy.rollout_outcomes import rollout_outcomes
from training.announce import announce
from training.config import DEMO_CONFIG_DIR, load_config
from training.recipes import reward
from training.synthetic import MARKER, synthetic_demonstrations, synthetic_rankings

TRAFFIC = ["Say something nice.", "Describe your day.", "What is a cat?"]
GATES = {"num_prompts": 12, "max_new_tokens": 24, "batch_size": 24, "samples_per_prompt": 2,
         "holdout_share": 1.0}  # every traffic prompt is a gate prompt here
LIVE, BETTER, COPY, TERSE, WILD, HACKED = (f"policy-000{i}" for i in range(1, 7))
HONEST_RM, FLAWED_RM = "reward-0001", "reward-0002"


def traffic(prompts: list[str]) -> list[CompletionRecord]:
    return [CompletionRecord(request_id=f"req-{i}", policy_version=LIVE, model="tiny",
                             endpoint="completions", prompt=p,
                             choices=[CompletionChoice(index=0, text="ok")])
            for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_base) -> Path:
    """registry/ and feedback.db: base, reward-0001 (the hidden rule), reward-0002 (flawed:
    it also rewards HACK), live policy-0001, candidates 2…6 (PPO-like manifests anchored
    to the live policy as their SFT reference)."""
    root = tmp_path_factory.mktemp("deploy-world")
    registry = Registry(root / "registry")
    registry.register_base(tiny_base)
    store = FeedbackStore(f"sqlite:///{root / 'feedback.db'}")
    store.migrate()
    store.persist(synthetic_rankings(80, k_min=2, k_max=5, seed=1))
    store.persist(synthetic_demonstrations(24, seed=2))
    store.persist(traffic(TRAFFIC))
    cfg = load_config(reward.RewardConfig, DEMO_CONFIG_DIR / "reward.yaml", "reward.yaml",
                      {"lr": 1e-3, "epochs": 2, "max_len": 64})
    reward.train(cfg, store=store, registry=registry)
    store.close()
    flawed = FeedbackStore(f"sqlite:///{root / 'flawed.db'}")
    flawed.migrate()
    flawed.persist(synthetic_rankings(80, k_min=2, k_max=5, seed=3, words=(MARKER, HACK)))
    flawed.persist(synthetic_demonstrations(24, seed=2))
    reward.train(cfg, store=flawed, registry=registry)
    flawed.close()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    marker, eos = marker_token_ids(tok), tok.eos_token_id
    hack = marker_token_ids(tok, HACK)
    work = root / "work"
    ppo_like = {"recipe": "ppo", "reference": LIVE, "reward_model": HONEST_RM}
    for name, parent, boost, config in [
            ("live", "policy-0000", {}, {}),
            ("better", LIVE, {t: 1.5 for t in marker}, ppo_like),
            ("copy", LIVE, {}, ppo_like),
            ("terse", LIVE, {eos: 3.0}, ppo_like),
            ("wild", LIVE, {t: 4.0 for t in marker}, ppo_like),
            ("hacked", LIVE, {t: 1.5 for t in hack}, {**ppo_like, "reward_model": FLAWED_RM})]:
        add_policy(registry, tiny_base, work, name, parent, boost, config)
    registry.set_live(LIVE, "bootstrap")
    return root


@pytest.fixture
def home(world, tmp_path) -> Path:
    """This test's copy of the world."""
    shutil.copytree(world / "registry", tmp_path / "registry")
    shutil.copy(world / "feedback.db", tmp_path / "feedback.db")
    return tmp_path


def settings_for(home: Path, kafka=None, **fields) -> DeploySettings:
    s = DeploySettings(gates=GateSettings(**GATES), **fields)
    s.registry.root = home / "registry"
    s.database.url = f"sqlite:///{home / 'feedback.db'}"
    if kafka is not None:
        s.kafka = kafka
    return s


def gates_env(monkeypatch, home: Path, kafka) -> None:
    """What a CLI process reads: the same settings as settings_for, from RLHF_ variables."""
    for key, value in GATES.items():
        monkeypatch.setenv(f"RLHF_GATES__{key.upper()}", str(value))
    monkeypatch.setenv("RLHF_DATABASE__URL", f"sqlite:///{home / 'feedback.db'}")
    monkeypatch.setenv("RLHF_KAFKA__REQUEST_TIMEOUT_MS", str(kafka.request_timeout_ms))


def policy_events(kafka, expected: int) -> list:
    """Events on rlhf.policy; promote/rollback share one partition, so they are in order."""
    return [decode_policy_event(r.value).event
            for r in read_topic(kafka, kafka.topics.policy, expected)]


def live_changes(events) -> list[tuple[str, str]]:
    return [(e.type, e.version) for e in events if e.type in ("promote", "rollback")]


# -- gates --------------------------------------------------------------------------------

def test_copy_of_live_fails_only_the_improvement_gate(home):
    registry = Registry(home / "registry")
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    report = evaluate_and_record(registry, COPY, GateSettings(**GATES), store)

    assert report.status == "failed" and report.failed == ["reward_improvement"]
    g = report.gates
    # same weights, same seed → the very same answers
    assert g["reward_improvement"].value == 0.0 and g["win_rate"].value == 0.5
    assert g["kl"].value == pytest.approx(0.0, abs=1e-6) and g["length_drift"].value == 0.0
    assert (report.against, report.reference, report.reward_model) == (LIVE, LIVE,
                                                                       "reward-0001")
    # a copy cannot clear the threshold: the sequential gates stop after the first round
    assert report.prompts == {"total": 12, "traffic": 3, "eval_file": 0, "fallback": 9,
                              "used": 3}
    assert report.undecided == ["win_rate"] and g["reward_improvement"].look == 1
    assert report.samples_per_prompt == 2 and report.judge_model is None
    assert g["reward_improvement"].lower == g["reward_improvement"].upper == 0.0
    on_disk = json.loads((registry.path(COPY) / "gates.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["failed"] == ["reward_improvement"]
    assert on_disk["gates"]["reward_improvement"]["threshold"] == 0.01
    assert on_disk["gates"]["win_rate"]["lower"] == 0.5  # bounds are recorded
    assert on_disk["reasons"][0].startswith("reward_improvement: ")
    assert registry.verify(COPY) == []  # gates.json is not part of the version's files
    assert registry.live_policy() == LIVE


def test_better_candidate_passes_and_thresholds_decide(home):
    registry = Registry(home / "registry")
    # one fixed-size look, so both runs measure the same 12 prompts
    passed = evaluate_and_record(registry, BETTER, GateSettings(**GATES, sequential_looks=1))
    assert passed.status == "passed", passed.reasons
    improvement, kl = passed.gates["reward_improvement"].value, passed.gates["kl"].value
    assert improvement > 0.01 and 0 < kl < 10 and passed.gates["win_rate"].value > 0.5
    lower = passed.gates["reward_improvement"].lower
    assert lower is not None and 0.01 <= lower <= improvement

    # a threshold between the lower bound and the mean fails: the gain could be luck
    strict = GateSettings(**GATES, min_reward_improvement=(lower + improvement) / 2,
                          max_kl=kl / 2, sequential_looks=1)
    failed = evaluate_and_record(registry, BETTER, strict)
    assert failed.failed == ["reward_improvement", "kl"]
    # seeded: the same measurements, only the thresholds moved
    assert failed.gates["reward_improvement"].value == pytest.approx(improvement)
    assert failed.gates["kl"].value == pytest.approx(kl)
    assert registry.get(BETTER).gates["gates"]["kl"]["threshold"] == kl / 2


def test_gates_catch_length_drift_and_kl_blowup(home):
    registry = Registry(home / "registry")
    terse = evaluate_and_record(registry, TERSE, GateSettings(**GATES))
    assert "length_drift" in terse.failed
    assert terse.gates["length_drift"].detail["candidate_mean_tokens"] < \
        terse.gates["length_drift"].detail["live_mean_tokens"] / 2
    wild = evaluate_and_record(registry, WILD, GateSettings(**GATES))
    assert "kl" in wild.failed and wild.gates["kl"].value > 10
    assert wild.gates["reward_improvement"].passed  # the reward alone would have let it in


def test_gates_refuse_a_reward_hack_that_the_held_out_judge_sees_through(home):
    """HACKED says HACK more often: the flawed RM it was optimised against over-rewards it,
    the judge (trained on the hidden rule only) does not. BETTER says the marker word more
    often, which both reward, and passes the very same gates."""
    registry = Registry(home / "registry")
    hacking = GateSettings(**GATES, reward_model=FLAWED_RM, judge_model=HONEST_RM)
    hacked = evaluate_and_record(registry, HACKED, hacking)
    assert (hacked.reward_model, hacked.judge_model) == (FLAWED_RM, HONEST_RM)
    assert hacked.status == "failed" and "judge_reward_improvement" in hacked.failed
    assert "reward_improvement" not in hacked.failed  # its own RM does not object
    assert hacked.gates["judge_reward_improvement"].lower < 0.01
    honest = evaluate_and_record(registry, BETTER, hacking)
    assert honest.status == "passed", honest.reasons
    assert honest.gates["judge_reward_improvement"].lower >= 0.01
    # without a judge, only the optimised RM's numbers decide: the hack would pass them
    alone = evaluate_and_record(registry, HACKED, GateSettings(**GATES, judge_model="none"))
    assert "judge_reward_improvement" not in alone.gates
    assert alone.gates["reward_improvement"].passed  # its own RM would let it in


# -- the CLI --------------------------------------------------------------------------------

@pytest.mark.kafka
def test_cli_promote_rollback_status(home, kafka_broker, monkeypatch):
    kafka = kafka_broker.kafka
    gates_env(monkeypatch, home, kafka)
    runner = CliRunner()
    common = ["--registry", str(home / "registry"), "--bootstrap-servers",
              kafka.bootstrap_servers]
    registry = Registry(home / "registry")

    result = runner.invoke(deploy_app, ["promote", COPY, *common])
    assert result.exit_code == 1, result.output
    assert "failed the gates" in result.stderr and "reward_improvement" in result.stderr
    assert registry.live_policy() == LIVE and registry.get(COPY).gates["status"] == "failed"

    result = runner.invoke(deploy_app, ["promote", BETTER, "--reason", "weekly", *common])
    assert result.exit_code == 0, result.output
    promoted = json.loads(result.stdout)
    assert (promoted["version"], promoted["previous"], promoted["forced"]) == (BETTER, LIVE,
                                                                               False)
    assert promoted["gates"]["status"] == "passed" and registry.live_policy() == BETTER

    result = runner.invoke(deploy_app, ["rollback", *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"event_id": None} == {
        "version": LIVE, "rolled_back": BETTER, "event_id": None}
    assert registry.live_policy() == LIVE and "rolled_back" in registry.get(BETTER).gates

    result = runner.invoke(deploy_app, ["promote", TERSE, "--force", *common])
    assert result.exit_code == 0 and registry.live_policy() == TERSE

    events = policy_events(kafka, 3)
    assert live_changes(events) == [("promote", BETTER), ("rollback", LIVE), ("promote", TERSE)]
    assert events[0].event_id == promoted["event_id"] and "weekly" in events[0].reason

    result = runner.invoke(deploy_app, ["status", *common])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    states = {v["version"]: (v["state"], v["gates"]) for v in status["versions"]}
    assert status["live"] == TERSE and status["replicas"] == []
    assert states[COPY] == ("candidate", "failed") and states[BETTER][1] == "rolled_back"
    assert states[LIVE][0] == "retired" and states[WILD] == ("candidate", "not evaluated")
    assert [h["version"] for h in status["history"]] == [LIVE, BETTER, LIVE, TERSE]

    result = runner.invoke(deploy_app, ["promote", "policy-0042", *common])
    assert result.exit_code == 2 and "unknown version" in result.stderr


# -- the admin API ------------------------------------------------------------------------

@pytest.mark.kafka
def test_admin_api_auth_promote_rollback(home, kafka_broker):
    kafka = kafka_broker.kafka
    controller = DeployController(settings_for(home, kafka))
    keys = KeyRing({"sk-admin": "admin", "sk-user": "user"})
    admin = {"Authorization": "Bearer sk-admin"}
    with TestClient(create_app(controller, keys)) as client:
        r = client.get("/v1/deploy/status")
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
        r = client.post("/v1/deploy/promote", json={"version": BETTER},
                        headers={"Authorization": "Bearer sk-user"})
        assert r.status_code == 403 and r.json()["error"]["code"] == 403
        assert controller.registry.get(BETTER).gates == {}  # the gates never ran

        r = client.post("/v1/deploy/promote", json={"version": "policy-0042"}, headers=admin)
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
        r = client.post("/v1/deploy/promote", json={"version": "reward-0001"}, headers=admin)
        assert r.status_code == 404

        r = client.post("/v1/deploy/promote", json={"version": COPY}, headers=admin)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["failed_gates"] == ["reward_improvement"]
        assert r.json()["error"]["gates"]["gates"]["reward_improvement"]["passed"] is False

        r = client.post("/v1/deploy/promote", json={"version": BETTER}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["previous"] == LIVE and r.json()["gates"]["status"] == "passed"
        r = client.post("/v1/deploy/promote", json={"version": BETTER}, headers=admin)
        assert r.status_code == 409 and "already live" in r.json()["error"]["message"]

        r = client.post("/v1/deploy/rollback", json={"reason": "complaints"}, headers=admin)
        assert r.status_code == 200 and r.json()["version"] == LIVE

        r = client.get("/v1/deploy/status", headers={"x-api-key": "sk-admin"})
        assert r.status_code == 200 and r.json()["live"] == LIVE
        assert r.json()["history"][-1]["reason"] == "rollback: complaints"
        assert live_changes(policy_events(kafka, 2)) == [("promote", BETTER), ("rollback", LIVE)]

        kafka_broker.stop()  # the event cannot be announced: the live pointer goes back
        r = client.post("/v1/deploy/promote", json={"version": TERSE, "force": True},
                        headers=admin)
        assert r.status_code == 503 and "not announced" in r.json()["error"]["message"]
        assert controller.registry.live_policy() == LIVE

        # each promotion or rollback that ran counted once, by how it ended; the refused
        # requests (403, unknown version, already live) are not rollouts
        assert rollout_outcomes(client.get("/metrics").text) == {
            ("rejected", "gates_failed"): 1, ("promoted", "gates_passed"): 1,
            ("rolled_back", "operator"): 1, ("failed", "broker_down"): 1}


# -- the controller's event loop ------------------------------------------------------------

@pytest.mark.kafka
def test_controller_auto_promotes_and_rolls_back_a_failed_swap(home, kafka_broker):
    kafka = kafka_broker.kafka
    settings = settings_for(home, kafka, auto_promote=True, group_id="deploy-test",
                            session_timeout_ms=3000, max_poll_interval_ms=3000,
                            poll_timeout_ms=200)
    controller = DeployController(settings)
    registry = controller.registry
    app = create_app(controller, KeyRing({}), consume_events=True)
    with TestClient(app) as client:
        announce(kafka, COPY, "policy")  # fails its gates: stays a candidate
        announce(kafka, BETTER, "policy")  # passes: goes live
        wait_for(lambda: registry.live_policy() == BETTER, 120, what="auto-promotion")
        assert registry.get(COPY).gates["status"] == "failed"
        assert [h.reason for h in registry.history()][-1] == "promote: auto-promote"

        # a replica reports that it could not load BETTER
        promoted = [e for e in policy_events(kafka, 3) if e.type == "promote"][0]
        failure = json.loads(promoted.model_dump_json())
        failure.update(type="swap_failed", event_id="swap-1", reason="truncated weights",
                       replica="pod-a")
        produce_raw(kafka, kafka.topics.policy, [(b"pod-a", json.dumps(failure).encode())])
        wait_for(lambda: registry.live_policy() == LIVE, 60, what="rollback after swap_failed")
        assert registry.get(BETTER).gates["swap_failed"]["replica"] == "pod-a"

        def rollback_counted() -> dict | None:
            got = rollout_outcomes(client.get("/metrics").text)
            return got if ("rolled_back", "swap_failed") in got else None

        assert wait_for(rollback_counted, 30, what="the rollback in the metrics") == {
            ("rejected", "gates_failed"): 1, ("promoted", "gates_passed"): 1,
            ("rolled_back", "swap_failed"): 1}

        status = wait_for(lambda: client.get("/v1/deploy/status").json(), 5)
        assert status["replicas"][0]["replica"] == "pod-a"
        assert status["replicas"][0]["failed_version"] == BETTER
        states = {v["version"]: v["gates"] for v in status["versions"]}
        assert states[BETTER] == "swap_failed" and states[COPY] == "failed"

    events = policy_events(kafka, 5)
    assert live_changes(events) == [("promote", BETTER), ("rollback", LIVE)]
    assert sorted((e.type, e.version) for e in events if e.type not in ("promote", "rollback")
                  ) == sorted([("candidate", COPY), ("candidate", BETTER), ("swap_failed", BETTER)])
