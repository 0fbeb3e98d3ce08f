"""SFT and reward-model recipes on the tiny model, a real SQLite store and a registry."""

import pytest
import torch
from safetensors.torch import load_file

from core.events import Comparison
from training.config import DEMO_CONFIG_DIR, load_config
from training.datasets import TrainingDataError
from training.recipes import reward, sft
from training.reward_model import RewardScorer
from training.synthetic import MARKER


def backbone_weights(path) -> dict[str, torch.Tensor]:
    """Transformer weights keyed without the causal LM's ``model.`` prefix."""
    return {k.removeprefix("model."): v for k, v in load_file(path / "model.safetensors").items()
            if not k.startswith("lm_head")}


def assert_every_tensor_changed(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_reward_recipe_learns_hidden_rule_and_records_everything(store, registry, tiny_base):
    cfg = load_config(reward.RewardConfig, DEMO_CONFIG_DIR / "reward.yaml", "reward.yaml",
                      {"lr": 1e-3, "epochs": 2, "max_len": 64})
    m = reward.train(cfg, store=store, registry=registry)

    assert (m.version, m.kind, m.parent) == ("reward-0001", "reward", "policy-0000")
    assert m.data_mark == store.high_water_mark() == 104
    assert m.row_counts["ranking"] == 80 and m.row_counts["demonstration"] == 24
    assert m.config["recipe"] == "reward" and m.config["lr"] == 1e-3
    assert m.timing["train_s"] > 0 and m.metrics["comparisons_per_s"] > 0
    # Chance is 0.5; the rule (count of the marker word) is deterministic and visible at the
    # end of each response, and this run reaches 1.0; 0.85 leaves room for seed noise.
    assert m.metrics["eval_accuracy"] >= 0.85
    assert {"eval_accuracy_k2", "eval_accuracy_k5"} <= m.metrics.keys()
    # 80 ranked prompts less the gold slice and the deploy gates' slice (no recipe trains
    # on either): 70, split 80/20 by prompt
    assert m.metrics["eval_groups"] >= 1 and m.metrics["train_groups"] >= 50
    assert m.metrics["train_groups"] + m.metrics["eval_groups"] == 70
    version_dir = registry.path(m.version)
    assert registry.verify(m.version) == []
    assert (version_dir / "curves.png").stat().st_size > 1000
    assert (version_dir / "metrics.jsonl").read_text().count('"split": "eval"') >= 2

    # every backbone tensor moved away from the base policy's
    assert_every_tensor_changed(backbone_weights(tiny_base), backbone_weights(version_dir))

    # the bias centres the demonstrations on 0, and the scorer applies it
    scorer = RewardScorer.from_registry(registry, m.version)
    demos = store.demonstrations()
    scores = scorer.score([(d.prompt, d.response) for d in demos])
    assert m.metrics["bias_source"] == "demonstrations" and abs(scorer.bias) > 1e-3
    assert abs(sum(scores) / len(scores)) < 1e-3
    good, bad = scorer.score([("Tell me.", f"The {MARKER} cat {MARKER} sleeps."),
                              ("Tell me.", "The cat sleeps.")])
    assert good > bad


def test_sft_recipe_lowers_heldout_loss_and_changes_every_weight(store, registry, tiny_base):
    cfg = load_config(sft.SFTConfig, DEMO_CONFIG_DIR / "sft.yaml", "sft.yaml",
                      {"lr": 2e-3, "epochs": 2, "eval_fraction": 0.25, "max_len": 512,
                       "batch_size": 8})
    m = sft.train(cfg, store=store, registry=registry)
    assert (m.version, m.kind, m.parent) == ("policy-0001", "policy", "policy-0000")
    # held out: the prompts in the 25 % hash slice (a fixed set, not exactly a quarter)
    assert m.row_counts["demonstration"] == 24 and 0 < m.metrics["eval_examples"] < 24
    assert m.metrics["train_examples"] + m.metrics["eval_examples"] == 24
    assert m.metrics["eval_loss"] < m.metrics["eval_loss_start"] - 0.5
    before, after = load_file(tiny_base / "model.safetensors"), load_file(
        registry.path(m.version) / "model.safetensors")
    assert_every_tensor_changed(before, after)
    assert (registry.path(m.version) / "tokenizer.json").is_file()
    # the reward model starts from the live policy by default, else the newest one
    assert reward.resolve_base(registry, None)[1] == "policy-0001"


def test_empty_store_is_a_clear_error_and_leaves_registry_alone(empty_store, registry):
    with pytest.raises(TrainingDataError, match="no demonstrations"):
        sft.train(sft.SFTConfig(progress=False), store=empty_store, registry=registry)
    with pytest.raises(TrainingDataError, match="no ranking or comparison"):
        reward.train(reward.RewardConfig(progress=False), store=empty_store, registry=registry)
    assert [v.version for v in registry.list()] == ["policy-0000"]


def test_comparisons_are_k2_groups_and_ties_are_dropped(empty_store, registry):
    empty_store.persist([Comparison(prompt="p2", text_a="a", text_b="b", preferred="tie",
                                    source="labeler")])
    with pytest.raises(TrainingDataError, match="all ties"):
        reward.train(reward.RewardConfig(progress=False), store=empty_store, registry=registry)
    empty_store.persist([Comparison(prompt="p1", text_a="a", text_b="b", preferred="b",
                                    source="labeler"),
                         Comparison(prompt="p3", text_a="a", text_b="b", preferred="a")])
    tokenizer = reward.AutoTokenizer.from_pretrained(registry.path("policy-0000"))
    cfg = reward.RewardConfig(max_len=64, gold_share=0.0)
    groups, gold = reward.load_groups(empty_store, reward.snapshot(empty_store), tokenizer, cfg)
    # p3 came from a user key: recorded, but trains only with train_on_user_feedback
    assert [(g.prompt, g.k, g.ranks) for g in groups] == [("p1", 2, [2, 1])] and gold == []
    with_users = cfg.model_copy(update={"train_on_user_feedback": True})
    groups, _ = reward.load_groups(empty_store, reward.snapshot(empty_store), tokenizer,
                                   with_users)
    assert [g.prompt for g in groups] == ["p1", "p3"]
