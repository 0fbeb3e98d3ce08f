"""``rlhf train cycle`` on a real SQLite store and registry: nothing due, due, idempotent;
SFT on new demonstrations, judged by the SFT gates before PPO may start from it."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from tests.fixtures.kafka import read_topic
from training.cli import train_app
from training.config import DEMO_CONFIG_DIR
from training.cycle import LOCK_FILE, cycle_lock, cycle_parent, ppo_due, reward_due

FAST = {"sft": {"epochs": 2, "progress": False},
        "reward": {"lr": 1e-3, "max_len": 64, "max_steps": 4, "progress": False,
                   "judge_share": 0.2},
        "ppo": {"max_steps": 2, "batch_size": 8, "minibatch_size": 8, "max_len": 96,
                "max_new_tokens": 16, "eval_max_prompts": 8, "progress": False}}


def run_cycle(tmp_path, registry, *extra: str, config_dir=None, kafka=None, env=None):
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    # The packaged paper configs need a ptx_file, so a cycle on them stops at start.
    env = {"RLHF_TRAIN__CONFIG_DIR": str(config_dir or DEMO_CONFIG_DIR), **(env or {})}
    if kafka is not None:
        env["RLHF_KAFKA__BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
    announce = "--announce" if kafka is not None else "--no-announce"
    result = CliRunner().invoke(train_app, [
        "cycle", "--database-url", db, "--registry", str(registry.root), announce,
        *extra], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def fast_configs(tmp_path):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    for name, overrides in FAST.items():
        cfg = yaml.safe_load((DEMO_CONFIG_DIR / f"{name}.yaml").read_text())
        (config_dir / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, **overrides}))
    return config_dir


def test_nothing_due_on_an_empty_store_exits_zero_and_says_why(empty_store, registry,
                                                               tmp_path):
    out = run_cycle(tmp_path, registry)
    assert out["versions"] == []
    assert out["reasons"] == [
        "sft: only 0 new labeler/admin demonstrations since data mark 0, 100 needed",
        "reward: only 0 new trainable rankings/comparisons since data mark 0, 50 needed",
        "ppo: no accepted reward model in the registry yet"]
    assert [v.version for v in registry.list()] == ["policy-0000"]


def test_below_threshold_nothing_due(store, registry, tmp_path):
    # 80 rankings, 10 of them gold or in the gates' slice: 70 can train a reward model
    out = run_cycle(tmp_path, registry, "--min-new-rankings", "71")
    assert out["versions"] == []
    assert "only 70 new trainable rankings" in out["reasons"][1]


def test_a_held_lock_means_the_cycle_does_nothing(store, registry, tmp_path):
    with cycle_lock(registry) as acquired:
        assert acquired
        out = run_cycle(tmp_path, registry)
    assert out == {"versions": [], "reasons": [
        f"another cycle holds {registry.root / LOCK_FILE}"]}


def test_ppo_due_follows_the_newest_reward_model_and_the_live_policy(registry, tmp_path):
    src = tmp_path / "weights"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    assert not ppo_due(registry).due
    registry.create_version("reward", src, {"parent": "policy-0000", "data_mark": 10})
    assert ppo_due(registry).reason == "ppo: train policy-0000 against reward-0001"
    candidate = {"recipe": "ppo", "reward_model": "reward-0001"}
    registry.create_version("policy", src, {"parent": "policy-0000", "config": candidate})
    assert ppo_due(registry).reason == ("ppo: candidate policy-0001 from policy-0000 against "
                                        "reward-0001 exists already")
    registry.set_live("policy-0001", "promote")
    assert ppo_due(registry).reason == "ppo: policy policy-0001 was trained against " \
                                       "reward-0001"
    registry.create_version("reward", src, {"parent": "policy-0001", "data_mark": 200})
    assert ppo_due(registry).due


def test_reward_due_counts_groups_after_the_reward_models_mark(store, registry, tmp_path):
    assert reward_due(store, registry, 80).due  # 80 rankings, no reward model yet
    src = tmp_path / "weights"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    registry.create_version("reward", src, {"data_mark": store.high_water_mark()})
    assert reward_due(store, registry, 1).reason.startswith("reward: only 0 new")


@pytest.mark.engine
@pytest.mark.kafka
def test_due_cycle_trains_reward_then_ppo_and_the_rerun_does_nothing(store, registry,
                                                                      tmp_path, kafka_broker):
    config_dir = fast_configs(tmp_path)
    kafka = kafka_broker.kafka
    out = run_cycle(tmp_path, registry, config_dir=config_dir, kafka=kafka)
    # the optimised RM, the held-out judge (judge_share 0.2), PPO against the optimised one
    assert out["versions"] == ["reward-0001", "reward-0002", "policy-0001"]
    assert registry.get("reward-0002").config["role"] == "judge"
    events = [json.loads(r.value) for r in read_topic(kafka, kafka.topics.policy, expected=3)]
    # one announcement each (partitions do not keep order across keys)
    assert sorted((e["type"], e["kind"], e["version"]) for e in events) == [
        ("candidate", "policy", "policy-0001"), ("candidate", "reward", "reward-0001"),
        ("candidate", "reward", "reward-0002")]
    rm, candidate = registry.get("reward-0001"), registry.get("policy-0001")
    assert rm.data_mark == 104 and rm.config["max_steps"] == 4
    assert candidate.parent == "policy-0000" and candidate.config["reward_model"] == "reward-0001"
    assert candidate.config["max_steps"] == 2 and "kl_to_ref" in candidate.metrics
    assert registry.live_policy() is None  # a candidate waits for the deploy gates

    again = run_cycle(tmp_path, registry, config_dir=config_dir, kafka=kafka)
    assert again["versions"] == []
    assert len(read_topic(kafka, kafka.topics.policy, expected=4, timeout=3)) == 3
    assert [v.version for v in registry.list()] == ["policy-0000", "policy-0001", "reward-0001",
                                                    "reward-0002"]
    assert not list((registry.root / ".tmp").iterdir())  # no half-written version left
    shutil.rmtree(config_dir)


@pytest.mark.engine
def test_sft_on_new_demonstrations_passes_its_gates_and_becomes_the_ppo_parent(
        store, registry, tmp_path):
    from deploy.gates import evaluate_and_record
    from deploy.settings import GateSettings

    config_dir = fast_configs(tmp_path)
    env = {"RLHF_TRAIN__MIN_NEW_DEMONSTRATIONS": "20"}  # the store holds 24 labeler demonstrations
    out = run_cycle(tmp_path, registry, "--min-new-rankings", "1000", config_dir=config_dir,
                    env=env)
    assert out["versions"] == ["policy-0001"]
    # none of these 24 prompts falls in the gates' 10 % hash slice (no recipe trains on
    # those; tests/unit/training/test_sft_cycle.py checks the exclusion)
    assert out["reasons"][0].startswith("sft: 24 new labeler/admin demonstrations")
    sft = registry.get("policy-0001")
    assert sft.config["recipe"] == "sft" and sft.parent == "policy-0000"

    # The SFT gates (what the deploy controller runs on the candidate): no reward model
    # yet, so held-out LM loss must beat the pretrained base's.
    report = evaluate_and_record(registry, "policy-0001",
                                 GateSettings(num_prompts=4, samples_per_prompt=2), store)
    lm = report.gates["lm_loss"]
    assert report.against == "policy-0000" and "reward_not_worse" not in report.gates
    assert lm.detail["candidate_loss"] < lm.detail["current_loss"] and report.status == "passed"
    assert registry.get("policy-0001").gates["gates"]["lm_loss"]["passed"]
    assert cycle_parent(registry) == "policy-0001"  # PPO starts from it, the base stays live

    again = run_cycle(tmp_path, registry, "--min-new-rankings", "1000", config_dir=config_dir,
                      env=env)
    assert again["versions"] == []
    assert again["reasons"][0].startswith("sft: only 0 new")


def test_a_reward_model_worse_on_unseen_rankings_is_refused_and_ppo_keeps_the_accepted(
        store, registry):
    """The RM quality gate on two real reward models: a trained one, then one whose head
    barely moved from its random start; the gold slice (40 % here) is the unseen set."""
    from training import rm_gate
    from training.config import load_config
    from training.recipes.reward import RewardConfig, train

    def rm(**overrides):
        cfg = load_config(RewardConfig, DEMO_CONFIG_DIR / "reward.yaml", "reward.yaml", {
            "base": "policy-0000", "gold_share": 0.4, "max_len": 64, "progress": False,
            **overrides})
        return train(cfg, store=store, registry=registry)

    good = rm(lr=1e-3, epochs=4)
    first = rm_gate.gate(registry, store, good)
    assert first["status"] == "accepted" and first["reason"] == "the first reward model"
    bad = rm(lr=1e-9, max_steps=1)
    verdict = rm_gate.gate(registry, store, bad)
    assert verdict["against"] == good.version and verdict["groups"] >= 20
    assert verdict["status"] == "refused", verdict["reason"]
    assert verdict["accuracy"] < verdict["current_accuracy"] and verdict["upper"] < 0
    assert registry.get(bad.version).gates["status"] == "refused"  # recorded with the reason
    # PPO keeps optimising the accepted RM, and the refused one does not make PPO due again
    assert ppo_due(registry).reason == f"ppo: train policy-0000 against {good.version}"

    # Once an accepted RM exists, SFT keeps the epoch whose held-out answers it scores best
    from training.recipes.sft import SFTConfig
    from training.recipes.sft import train as train_sft

    cfg = load_config(SFTConfig, DEMO_CONFIG_DIR / "sft.yaml", "sft.yaml", {
        "base": "policy-0000", "epochs": 3, "eval_fraction": 0.3, "select_prompts": 6,
        "select_max_new_tokens": 12, "progress": False})
    sft = train_sft(cfg, store=store, registry=registry)
    picks = [r for r in (registry.path(sft.version) / "metrics.jsonl").read_text().splitlines()
             if '"select"' in r]
    rewards = [json.loads(r)["reward"] for r in picks]
    assert len(rewards) == 3  # one score per epoch
    assert sft.metrics["selected_by"] == f"reward {good.version}"
    assert sft.metrics["selected_reward"] == max(rewards)
    assert sft.metrics["selected_epoch"] == rewards.index(max(rewards)) + 1
