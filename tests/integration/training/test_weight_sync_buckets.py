"""Bucketed and partial weight sync into the running vLLM engine (CPU transport)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.formatting import render_prompt
from training.rollout import RolloutEngine
from training.weight_sync import expand_to_modules

pytestmark = pytest.mark.engine


@torch.no_grad()
def hf_logprobs(model, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + response_ids])
    logits = model(ids).logits[0, len(prompt_ids) - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


@torch.no_grad()
def perturb(model, seed: int, names: set[str] | None = None) -> None:
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if names is None or name in names:
            p.add_(torch.randn_like(p) * 0.05)


def test_bucketed_sync_equals_one_message_sync_and_skips_unchanged(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
               for p in ("Describe the ocean.", "Tell me about music.")]
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    limit = 1 << 20
    with RolloutEngine(tiny_model, max_model_len=128, seed=0, sync_bucket_mb=1) as engine:
        assert engine.transport == "rpc"
        perturb(policy, 0)
        first = {k: v.clone() for k, v in policy.state_dict().items()}

        engine.bucket_bytes = None  # the old path: the whole model in one message
        engine.sync_weights(policy.state_dict().items())
        assert engine.last_sync["buckets"] == 1
        one_message = engine.generate(prompts, max_tokens=16, temperature=0.0)

        perturb(policy, 1)  # move away, so the next sync has something to undo
        engine.bucket_bytes = limit
        engine.sync_weights(policy.state_dict().items())
        moved = engine.generate(prompts, max_tokens=16, temperature=0.0)
        assert [s.response_ids for s in moved] != [s.response_ids for s in one_message]

        policy.load_state_dict(first)
        engine.sync_weights(policy.state_dict().items())
        stats = dict(engine.last_sync)
        bucketed = engine.generate(prompts, max_tokens=16, temperature=0.0)

        # only two tensors of one layer move (LoRA on q/v): only the fused qkv module goes
        layer = "model.layers.1.self_attn"
        changed = {f"{layer}.q_proj.weight", f"{layer}.v_proj.weight"}
        perturb(policy, 2, changed)
        engine.sync_weights(policy.state_dict().items(),
                            changed=expand_to_modules(changed, policy.state_dict()))
        partial = dict(engine.last_sync)
        after_partial = engine.generate(prompts, max_tokens=16, temperature=0.0)

    assert stats["buckets"] > 1 and stats["tensors"] == len(first)
    assert stats["max_bucket_bytes"] <= limit
    for a, b in zip(one_message, bucketed, strict=True):
        assert a.response_ids == b.response_ids
        assert a.engine_logprobs == b.engine_logprobs  # bit-identical weights

    assert partial["tensors"] == 3  # q, k, v
    assert partial["bytes"] < stats["bytes"] / 10
    for prompt, sample in zip(prompts, after_partial, strict=True):
        expected = hf_logprobs(policy, prompt, sample.response_ids)
        assert torch.allclose(torch.tensor(sample.engine_logprobs), expected, atol=1e-4)
