"""The rollout engine (vLLM AsyncLLM) takes the trainer's weights in place, exactly."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.formatting import render_prompt
from training.rollout import RolloutEngine

pytestmark = pytest.mark.engine


@torch.no_grad()
def hf_logprobs(model, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """(R,) log π of each response token under the transformers model."""
    ids = torch.tensor([prompt_ids + response_ids])
    logits = model(ids).logits[0, len(prompt_ids) - 1:-1]  # (R, V)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def test_sync_makes_engine_match_the_trainer(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
               for p in ("Describe the ocean.", "Tell me about music.")]
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with RolloutEngine(tiny_model, max_model_len=128, seed=0) as engine:
        before = engine.generate(prompts, max_tokens=16, temperature=0.0)
        # the trainer takes a step: every weight moves
        torch.manual_seed(0)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        stale = hf_logprobs(policy, prompts[0], before[0].response_ids)
        assert (stale - torch.tensor(before[0].engine_logprobs)).abs().max() > 0.05

        seconds = engine.sync_weights(policy.state_dict().items())
        after = engine.generate(prompts, max_tokens=16, temperature=0.0)

    assert 0 < seconds < 5  # ~0.03 s measured for the tiny model on 2 CPU cores
    assert [s.response_ids for s in after] != [s.response_ids for s in before]
    for prompt, sample in zip(prompts, after, strict=True):
        expected = hf_logprobs(policy, prompt, sample.response_ids)
        # greedy decoding under the synced engine = argmax of the trainer's model
        ids = torch.tensor([prompt + sample.response_ids])
        with torch.no_grad():
            argmax = policy(ids).logits[0, len(prompt) - 1:-1].argmax(-1).tolist()
        assert sample.response_ids == argmax
        assert torch.allclose(torch.tensor(sample.engine_logprobs), expected, atol=1e-4)
