"""Reward model save/load, SFT label masking and prompt rendering on the tiny tokenizer."""

import pytest
import torch
from transformers import AutoTokenizer

from training.datasets import sft_example
from training.formatting import render_prompt
from training.reward_model import RewardModel, score_pairs


def test_sft_example_masks_prompt_tokens(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    ex = sft_example(tok, "Say hi.", "hi there", max_len=64)
    prompt_len = len(tok(render_prompt(tok, "Say hi."), add_special_tokens=False)["input_ids"])
    assert ex["labels"][:prompt_len] == [-100] * prompt_len
    assert ex["labels"][prompt_len:] == ex["input_ids"][prompt_len:]
    assert ex["labels"][-1] == tok.eos_token_id
    assert tok.decode(ex["labels"][prompt_len:-1]) == "hi there"
    # an already rendered prompt (from the completion log) is not wrapped twice
    assert render_prompt(tok, render_prompt(tok, "Say hi.")) == render_prompt(tok, "Say hi.")


def test_reward_model_round_trips_with_its_bias(tiny_base, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = RewardModel.from_causal_lm(tiny_base)
    pairs = [("a", "b"), ("longer prompt here", "and a longer response")]
    raw = score_pairs(model, tok, pairs)
    bias = model.set_bias_from(torch.tensor(raw), "demonstrations")
    assert bias == pytest.approx(-sum(raw) / 2)  # float32 buffer
    model.save_pretrained(tmp_path)
    loaded = RewardModel.from_pretrained(tmp_path)
    again = score_pairs(loaded, tok, pairs)
    assert again == pytest.approx([r + bias for r in raw], abs=1e-5)
    assert loaded.bias_info["normalised_on"] == "demonstrations"
    # padding does not change a score: batch of one equals batch of two
    assert abs(score_pairs(loaded, tok, pairs[:1])[0] - again[0]) < 1e-5
