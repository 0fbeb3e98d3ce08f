"""PPO-ptx on the tiny model with real vLLM rollouts, a real SQLite store and registry.

One module-scoped setup trains the tiny SFT policy and a reward model on the hidden rule
(``training/synthetic.py``); each test copies it. PPO then has to make the policy say the
marker word more often, which both the reward model and the hidden rule reward.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.registry import Registry
from feedback.store import FeedbackStore
from training.config import DEMO_CONFIG_DIR, load_config
from training.recipes import ppo, reward, sft
from training.synthetic import hidden_score, synthetic_demonstrations, synthetic_rankings
from training.tiny_model import build_tiny_model

pytestmark = pytest.mark.engine
REPO = Path(__file__).parents[3]

STEP_METRICS = {"reward_mean", "reward_std", "kl_to_ref", "entropy", "clip_fraction",
                "approx_kl", "value_loss", "explained_variance", "response_length",
                "rollout_tokens_per_s", "weight_sync_s", "ptx_loss", "engine_logprob_gap"}


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    """A store with ranked and demonstrated feedback, SFT policy-0001 (live), reward-0001."""
    home = tmp_path_factory.mktemp("ppo-home")
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    store.migrate()
    store.persist(synthetic_rankings(80, k_min=2, k_max=5, seed=1))
    store.persist(synthetic_demonstrations(24, seed=2))
    registry = Registry(home / "registry")
    registry.register_base(build_tiny_model(home / "tiny"))
    sft_cfg = load_config(sft.SFTConfig, DEMO_CONFIG_DIR / "sft.yaml", "sft.yaml",
                          {"lr": 2e-3, "epochs": 2, "max_len": 512, "batch_size": 8})
    registry.set_live(sft.train(sft_cfg, store=store, registry=registry).version, "bootstrap")
    rm_cfg = load_config(reward.RewardConfig, DEMO_CONFIG_DIR / "reward.yaml", "reward.yaml",
                         {"lr": 1e-3, "epochs": 2, "max_len": 64})
    reward.train(rm_cfg, store=store, registry=registry)
    store.close()
    return home


@pytest.fixture
def home(trained_home, tmp_path) -> Path:
    shutil.copytree(trained_home, tmp_path / "home")
    return tmp_path / "home"


def mean_hidden_score(rows: list[dict]) -> float:
    return sum(hidden_score(r["response"]) for r in rows) / len(rows)


def test_ppo_raises_reward_and_hidden_rule_within_kl(home):
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    registry = Registry(home / "registry")
    cfg = load_config(ppo.PPOConfig, DEMO_CONFIG_DIR / "ppo.yaml", "ppo.yaml", {
        "lr": 5e-4, "max_steps": 12, "batch_size": 16, "minibatch_size": 8, "max_len": 96,
        "max_new_tokens": 32, "eval_max_prompts": 32, "ptx_coef": 0.1, "episodes": 256})
    m = ppo.train(cfg, store=store, registry=registry)

    # the candidate: parent, reference (the SFT policy), reward model, data and prompt
    # marks, config and final metrics recorded; its value model saved beside it
    assert (m.version, m.parent) == ("policy-0002", "policy-0001")
    assert m.config["recipe"] == "ppo" and m.config["reward_model"] == "reward-0001"
    assert m.config["reference"] == "policy-0001" and m.config["prompt_mark"] == 0
    assert m.metrics["value_init"] == "reward-0001"
    assert (registry.path(m.version) / ppo.VALUE_DIR / "config.json").is_file()
    assert m.data_mark == store.high_water_mark() == 104
    assert m.metrics["steps"] == 12 and m.metrics["ptx_source"] == "demonstrations"
    assert m.metrics["prompt_source"] == "prompt_file"  # no completions in this store
    assert registry.verify(m.version) == []
    version = registry.path(m.version)
    assert (version / "curves.png").stat().st_size > 1000

    # every step logged every metric; the engine's log-probs equal the trainer's
    # (|Δ| ≈ 1e-7 measured) at every step, so each in-place sync really took effect
    steps = [json.loads(r) for r in (version / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in steps if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert all(STEP_METRICS <= r.keys() for r in train)
    assert max(r["engine_logprob_gap"] for r in train) < 1e-3
    assert all(0 < r["weight_sync_s"] < 5 and r["rollout_tokens_per_s"] > 0 for r in train)
    assert train[0]["kl_to_ref"] == pytest.approx(0.0, abs=1e-4)  # first rollout: π = π_ref

    # held-out prompts: the candidate beats its parent under the reward model and under
    # the hidden rule, and stays within a KL bound (measured: reward −2.6 → +4.9,
    # 0.35 → 1.55 markers per response, KL 4.3 nats per response)
    assert m.metrics["eval_reward"] > m.metrics["eval_reward_parent"] + 1.0
    samples = json.loads((version / "eval_samples.json").read_text())
    assert mean_hidden_score(samples["candidate"]) > mean_hidden_score(samples["parent"]) + 0.2
    assert 0 < m.metrics["kl_to_ref"] < 20.0

    # every policy weight moved
    before = load_file(registry.path("policy-0001") / "model.safetensors")
    after = load_file(version / "model.safetensors")
    assert before.keys() == after.keys()
    assert [k for k in before if torch.equal(before[k], after[k])] == []

    # PPO from that PPO result is still anchored to the SFT policy: its very first rollout
    # already pays KL (π = policy-0002 ≠ π_ref = policy-0001; against the parent it would be
    # 0), and the value model warm-starts from policy-0002's (same reward model)
    again = ppo.train(cfg.model_copy(update={"base": m.version, "max_steps": 1}), store=store,
                      registry=registry)
    assert (again.parent, again.config["reference"]) == ("policy-0002", "policy-0001")
    assert again.metrics["value_init"] == "policy-0002/value"
    first = [json.loads(r) for r in (registry.path(again.version) / "metrics.jsonl"
                                     ).read_text().splitlines()]
    assert [r for r in first if r["split"] == "train"][0]["kl_to_ref"] > 0.5


def test_two_cpu_processes_run_a_ppo_step(home):
    """torchrun with 2 gloo processes: rank 0 samples on vLLM and broadcasts, both update."""
    cfg = yaml.safe_load((DEMO_CONFIG_DIR / "ppo.yaml").read_text())
    cfg.update(max_steps=1, batch_size=8, minibatch_size=8, max_len=96, max_new_tokens=16,
               eval_max_prompts=4, lr=1e-3, warmup_steps=0, progress=False)
    (home / "ppo.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "training.cli", "ppo", "--config", str(home / "ppo.yaml"),
           "--database-url", f"sqlite:///{home / 'feedback.db'}",
           "--registry", str(home / "registry"), "--no-announce"]
    env = {**os.environ, "RLHF_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [o["version"] for o in outputs] == ["policy-0002", "policy-0002"]  # both ranks
    registry = Registry(home / "registry")
    assert registry.get("policy-0002").metrics["steps"] == 1
    before = load_file(registry.path("policy-0001") / "model.safetensors")
    after = load_file(registry.path("policy-0002") / "model.safetensors")
    assert [k for k in before if torch.equal(before[k], after[k])] == []


@pytest.mark.parametrize("algorithm,kl_penalty", [("rloo", "reward"), ("grpo", "loss")])
def test_critic_free_algorithms_train_without_a_value_model(home, algorithm, kl_penalty):
    """RLOO and GRPO: 4 answers per prompt, each judged against its group, no value model;
    the same manifest and gates as PPO. Measured (12 iterations of 4 prompts × 4 answers):
    held-out reward rose by > 1 under both, like PPO's."""
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    registry = Registry(home / "registry")
    cfg = load_config(ppo.PPOConfig, DEMO_CONFIG_DIR / "ppo.yaml", "ppo.yaml", {
        "algorithm": algorithm, "samples_per_prompt": 4, "kl_penalty": kl_penalty,
        "lr": 5e-4, "max_steps": 12, "batch_size": 16, "minibatch_size": 8, "max_len": 96,
        "max_new_tokens": 32, "eval_max_prompts": 32, "ptx_coef": 0.1, "episodes": 256})
    m = ppo.train(cfg, store=store, registry=registry)

    assert m.config["recipe"] == "ppo" and m.config["algorithm"] == algorithm
    assert m.metrics["value_init"] is None
    assert not (registry.path(m.version) / ppo.VALUE_DIR).exists()
    assert registry.verify(m.version) == []
    version = registry.path(m.version)
    train = [r for r in map(json.loads, (version / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert len(train) == 12 and all(r["value_loss"] == 0.0 for r in train)
    assert all(("kl_loss" in r) == (kl_penalty == "loss") for r in train)
    assert m.metrics["eval_reward"] > m.metrics["eval_reward_parent"] + 1.0
