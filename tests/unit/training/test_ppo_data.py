"""PPO's data: the prompt pool, PPO-ptx sources, truncated answers and stop ids."""

import json

import pytest
from transformers import AutoTokenizer, GenerationConfig

from core.registry import Registry
from training.datasets import TrainingDataError, is_gate_prompt
from training.formatting import stop_token_ids
from training.recipes.ppo import (
    VALUE_DIR,
    PPOConfig,
    load_ptx,
    read_ptx_file,
    scored_sequence,
    select_prompts,
    truncation_adjustment,
    value_start,
)
from training.rollout import Sample

EOS = 2


def test_prompt_pool_dedupes_caps_per_user_and_drops_gate_prompts():
    cfg = PPOConfig(max_prompts_per_user=2, gate_holdout_share=0.0, prompt_limit=10)
    rows = [("Hello  there", "u1"), ("hello there", "u2"),  # near-duplicate of the first
            ("a", "u1"), ("b", "u1"),  # u1's third distinct prompt is over the cap of 2
            ("c", None), ("d", None), ("e", None)]  # no user id: no cap
    assert select_prompts(rows, cfg) == ["Hello  there", "a", "c", "d", "e"]
    assert select_prompts(rows, cfg.model_copy(update={"prompt_limit": 2})) == [
        "Hello  there", "a"]
    # the gate slice is never trained on
    many = [(f"prompt {i}", None) for i in range(100)]
    held = {p for p, _ in many if is_gate_prompt(p, 0.1)}
    pool = select_prompts(many, PPOConfig(gate_holdout_share=0.1))
    assert held and not held & set(pool) and len(pool) == 100 - len(held)


def test_truncated_answers_are_scored_as_configured():
    done = Sample([1], [5, EOS], [0.0, 0.0], True)  # sampled EOS
    done_no_id = Sample([1], [5], [0.0], True)  # finished, engine dropped the stop id
    cut = Sample([1], [5, 6], [0.0, 0.0], False)  # hit max_new_tokens
    stops = [EOS, 9]
    assert scored_sequence(done, stops, "penalty") == [1, 5, EOS]
    assert scored_sequence(done_no_id, stops, "no_eos") == [1, 5, EOS]
    # "penalty": the RM judges the content as it was trained (closed by EOS), minus the
    # penalty below; "no_eos": as it stands; "append_eos": as if finished (the old way)
    assert scored_sequence(cut, stops, "penalty") == [1, 5, 6, EOS]
    assert scored_sequence(cut, stops, "no_eos") == [1, 5, 6]
    assert scored_sequence(cut, stops, "append_eos") == [1, 5, 6, EOS]
    assert scored_sequence(Sample([1], [5, 9], [0.0, 0.0], True), stops, "penalty") == [1, 5, 9]
    # only truncated answers under "penalty" lose truncation_penalty
    assert truncation_adjustment([done, cut], "penalty", 1.5).tolist() == [0.0, -1.5]
    assert truncation_adjustment([done, cut], "no_eos", 1.5).tolist() == [0.0, 0.0]
    assert PPOConfig().truncation == "penalty" and PPOConfig().truncation_penalty > 0


def test_stop_ids_come_from_the_generation_config_too(tiny_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert stop_token_ids(tiny_model, tok)[0] == tok.eos_token_id
    model = tmp_path / "m"
    tok.save_pretrained(model)
    GenerationConfig(eos_token_id=[tok.eos_token_id, 7, 11]).save_pretrained(model)
    assert stop_token_ids(model, tok) == [tok.eos_token_id, 7, 11]


class Demos:
    def __init__(self, demos):
        self.demos = demos

    def demonstrations(self, until=None):
        return self.demos


def test_ptx_needs_its_own_source_and_never_falls_back_to_the_toy_corpus(tiny_model,
                                                                         tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = PPOConfig(max_len=16)
    assert (cfg.ptx_source, cfg.ptx_coef, cfg.ptx_ratio) == ("file", 27.8, 8.0)  # the paper
    with pytest.raises(TrainingDataError, match="set ptx_file"):
        load_ptx(cfg, Demos([]), 0, tok)
    with pytest.raises(TrainingDataError, match="ptx_source is demonstrations"):
        load_ptx(cfg.model_copy(update={"ptx_source": "demonstrations"}), Demos([]), 0, tok)
    assert load_ptx(cfg.model_copy(update={"ptx_coef": 0.0}), Demos([]), 0, tok) == ([], "none")
    examples, source = load_ptx(cfg.model_copy(update={"ptx_source": "corpus"}), Demos([]),
                                0, tok)
    assert source == "corpus" and examples

    text = tmp_path / "books.txt"
    text.write_text("one two three\n\n" + "word " * 40)
    cut = read_ptx_file(text, tok, max_len=16)
    # document 2: 40 words + EOS → windows of 16 tokens; every window ≤ 16, labels = ids
    assert all(len(x["input_ids"]) <= 16 and x["labels"] == x["input_ids"] for x in cut)
    assert cut[0]["input_ids"][-1] == tok.eos_token_id and len(cut) >= 3
    jsonl = tmp_path / "mix.jsonl"
    jsonl.write_text(json.dumps({"text": "hello world"}) + "\n" +
                     json.dumps({"prompt": "Hi", "response": "there"}) + "\n")
    rows = read_ptx_file(jsonl, tok, max_len=32)
    assert len(rows) == 2 and -100 in rows[0]["labels"]  # prompt masked in the pair
    examples, source = load_ptx(cfg.model_copy(update={"ptx_file": jsonl}), Demos([]), 0, tok)
    assert source == f"file:{jsonl}" and len(examples) == 2
    jsonl.write_text('{"title": 1}\n')
    with pytest.raises(TrainingDataError, match="line 1"):
        read_ptx_file(jsonl, tok, 32)


def test_value_model_warm_starts_only_when_the_reward_model_is_unchanged(tmp_path):
    registry = Registry(tmp_path / "registry")
    src = tmp_path / "w"
    (src / VALUE_DIR).mkdir(parents=True)
    (src / "w.bin").write_bytes(b"x")
    registry.create_version("reward", src, {})
    registry.create_version("reward", src, {})
    registry.create_version("policy", src, {"config": {"recipe": "ppo",
                                                       "reward_model": "reward-0001"}},
                            number=1)
    assert value_start(registry, "policy-0001", "reward-0001", True) == (
        registry.path("policy-0001") / VALUE_DIR, "policy-0001/value")
    assert value_start(registry, "policy-0001", "reward-0002", True)[1] == "reward-0002"
    assert value_start(registry, "policy-0001", "reward-0001", False)[1] == "reward-0001"
    assert value_start(registry, None, "reward-0001", True)[1] == "reward-0001"

