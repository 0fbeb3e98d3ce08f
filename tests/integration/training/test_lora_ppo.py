"""PPO with LoRA adapters on the tiny model: real vLLM rollouts, store and registry."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.registry import Registry
from feedback.store import FeedbackStore
from tests.integration.training.test_ppo import home, trained_home  # noqa: F401
from training import lora
from training.config import DEMO_CONFIG_DIR, LoraSettings, load_config
from training.recipes import ppo

pytestmark = pytest.mark.engine
TARGETS = ["q_proj", "v_proj"]


def test_reference_is_the_base_with_adapters_disabled(home):  # noqa: F811
    path = Registry(home / "registry").path("policy-0001")
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = lora.wrap(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                      LoraSettings(r=4, target_modules=TARGETS))
    with torch.no_grad():  # a trained adapter (peft starts B at 0, i.e. a no-op)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    ref = lora.AdaptersDisabled(model)
    assert list(ref.parameters()) == []  # no second copy
    assert torch.equal(ref(input_ids=ids).logits, base(input_ids=ids).logits)
    assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_ppo_with_lora_moves_only_adapted_weights_and_keeps_the_engine_in_sync(home):  # noqa: F811
    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    registry = Registry(home / "registry")
    cfg = load_config(ppo.PPOConfig, DEMO_CONFIG_DIR / "ppo.yaml", "ppo.yaml", {
        "lr": 5e-3, "max_steps": 3, "batch_size": 8, "minibatch_size": 4, "max_len": 96,
        "max_new_tokens": 24, "eval_max_prompts": 8, "ptx_coef": 0.1, "episodes": 64,
        "lora": {"r": 8, "alpha": 16, "target_modules": TARGETS},
        "value_backbone": "shared", "sync_bucket_mb": 1})
    m = ppo.train(cfg, store=store, registry=registry)
    assert m.parent == "policy-0001" and m.config["reference"] == "policy-0001"
    assert registry.verify(m.version) == []

    train = [r for r in (json.loads(x) for x in (registry.path(m.version) / "metrics.jsonl"
                                                 ).read_text().splitlines())
             if r["split"] == "train"]
    assert len(train) == 3
    # first rollout: π = base = π_ref (the reference is the adapters-disabled base)
    assert train[0]["kl_to_ref"] == pytest.approx(0.0, abs=1e-4)
    # the partial merged sync kept vLLM equal to the trainer at every step
    assert max(r["engine_logprob_gap"] for r in train) < 1e-3
    # a sync sends q, k, v of each layer only (k rides along: vLLM fuses qkv)
    full_mb = sum(t.numel() * 4 for t in load_file(
        registry.path("policy-0001") / "model.safetensors").values()) / 2**20
    assert all(0 < r["weight_sync_mb"] < full_mb / 3 for r in train)

    # the saved version is a full checkpoint with the adapters merged: only q/v moved
    before = load_file(registry.path("policy-0001") / "model.safetensors")
    after = load_file(registry.path(m.version) / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.split(".")[-2] in TARGETS for k in moved)

    # what the optimiser holds: adapters + the value head, a few % of the weights held
    assert m.metrics["trainable_params"] < 0.1 * m.metrics["total_params"]


def test_reward_model_with_lora_saves_a_merged_full_checkpoint(home):  # noqa: F811
    from training.recipes import reward
    from training.reward_model import RewardModel

    store = FeedbackStore(f"sqlite:///{home / 'feedback.db'}")
    registry = Registry(home / "registry")
    cfg = load_config(reward.RewardConfig, DEMO_CONFIG_DIR / "reward.yaml", "reward.yaml",
                      {"lr": 1e-2, "max_steps": 3, "max_len": 64, "base": "policy-0001",
                       "lora": {"r": 4, "target_modules": TARGETS}})
    m = reward.train(cfg, store=store, registry=registry)
    path = registry.path(m.version)
    assert registry.verify(m.version) == []
    RewardModel.from_pretrained(path)  # loads as an ordinary RM
    base = load_file(registry.path("policy-0001") / "model.safetensors")
    saved = load_file(path / "model.safetensors")
    assert not any("lora" in k for k in saved)
    moved = {k for k in saved if not torch.equal(saved[k], base[f"model.{k}"])}
    assert moved and all(k.split(".")[-2] in TARGETS for k in moved)
