"""Memory follows the micro-batch, and the update does not change.

Each recipe's step is run twice on the tiny model: once with the whole batch in one
forward, once in micro-batches with gradient accumulation and chunked log-probs; the
gradients (or the weights after one SGD step) must agree to float rounding. The oracle is
independent of ``training.logprobs``: transformers' own loss, or full logits.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.datasets import RankedGroup, collate_groups
from training.logprobs import label_positions, lm_loss_sum, micro_slices, token_logprobs
from training.losses import kway_ranking_loss
from training.recipes.ppo import (
    PPOConfig,
    Scored,
    ValueModel,
    minibatch_step,
    pack_episodes,
    ptx_batches,
)
from training.recipes.reward import accumulate_ranking_loss, group_part
from training.recipes.sft import SFTConfig, accumulate_lm_loss
from training.reward_model import RewardModel
from training.rollout import Sample


@pytest.fixture
def policy(tiny_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < tol, worst


def lm_batch(vocab: int, rows: int = 5, width: int = 14) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths; the first 4 tokens of each are a prompt."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    for i in range(rows):
        mask[i, width - 2 * i:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_chunked_log_probs_equal_the_full_logits_values_and_gradients(policy):
    g = torch.Generator().manual_seed(0)
    vocab = policy.config.vocab_size
    ids = torch.randint(0, vocab, (4, 20), generator=g)
    attention = torch.ones(4, 20, dtype=torch.long)
    attention[0, -3:] = 0
    positions = torch.randint(0, 16, (4, 6), generator=g)
    targets = torch.randint(0, vocab, (4, 6), generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.3

    results, gradients = [], []
    for chunk in (0, 3, 1024):  # 0 = the full (B, T, V) logits, as before
        out = token_logprobs(policy, ids, attention, positions, targets, mask,
                             temperature=0.7, with_entropy=True, chunk_tokens=chunk)
        (out.logprobs.sum() + out.entropy.sum()).backward()
        results.append(out)
        gradients.append(grads(policy))
    for out, g_ in zip(results[1:], gradients[1:], strict=True):
        assert torch.allclose(out.logprobs, results[0].logprobs, atol=1e-5)
        assert torch.allclose(out.entropy, results[0].entropy, atol=1e-5)
        assert_close(g_, gradients[0], 1e-5)
    assert (results[1].logprobs[~mask] == 0).all()


def test_label_positions_point_at_the_logits_that_predict_each_label():
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    positions, targets, mask = label_positions(labels)
    # logits at t predict the label at t + 1 (transformers' shift)
    assert positions.tolist() == [[1, 2], [0, 0]]
    assert targets.tolist() == [[7, 8], [5, 0]]
    assert mask.tolist() == [[True, True], [True, False]]


def test_micro_slices_cover_the_rows_once():
    assert micro_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_slices(5, None) == [slice(0, 5)]
    assert micro_slices(3, 8) == [slice(0, 3)]


def test_the_chunked_lm_loss_is_transformers_loss(policy):
    batch = lm_batch(policy.config.vocab_size)
    reference = policy(**batch).loss
    reference.backward()
    expected = grads(policy)
    nll, tokens = lm_loss_sum(policy, batch, chunk_tokens=4)
    (nll / tokens).backward()
    assert (nll / tokens).item() == pytest.approx(reference.item(), rel=1e-5)
    assert_close(grads(policy), expected, 1e-5)


@pytest.mark.parametrize("micro", [1, 2])
def test_sft_micro_batches_accumulate_the_whole_batch_gradient(policy, micro):
    accelerator = Accelerator(cpu=True)
    batch = lm_batch(policy.config.vocab_size)
    policy(**batch).loss.backward()  # transformers' token mean over the whole batch
    expected = grads(policy)
    loss = accumulate_lm_loss(policy, batch, accelerator,
                              SFTConfig(micro_batch_size=micro, logits_chunk_tokens=8))
    assert_close(grads(policy), expected, 1e-5)
    assert loss == pytest.approx(policy(**batch).loss.item(), rel=1e-5)


@pytest.mark.parametrize("micro", [1, 2])
def test_reward_micro_batches_accumulate_the_whole_batch_gradient(tiny_model, micro):
    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(tiny_model, head_seed=0)
    tok = AutoTokenizer.from_pretrained(tiny_model)

    def ids(text: str) -> list[int]:
        return tok(text).input_ids

    groups = [RankedGroup("a", [ids("one two"), ids("three"), ids("four five six")], [1, 2, 3]),
              RankedGroup("b", [ids("seven"), ids("eight nine")], [1, 1]),  # a tie: no pair
              RankedGroup("c", [ids("ten"), ids("eleven twelve"), ids("x"), ids("y z")],
                          [2, 1, 2, 4])]
    batch = collate_groups(groups, tok.pad_token_id)
    whole = kway_ranking_loss(rm(batch["input_ids"], batch["attention_mask"])[batch["index"]],
                              batch["ranks"], batch["group_mask"])
    whole.loss.backward()
    expected = grads(rm)
    out = accumulate_ranking_loss(rm, batch, Accelerator(cpu=True), micro)
    assert_close(grads(rm), expected, 1e-5)
    assert out.loss.item() == pytest.approx(whole.loss.item(), rel=1e-5)
    assert out.accuracy.item() == pytest.approx(whole.accuracy.item())
    # a part holds only its own responses, re-indexed from 0
    part = group_part(batch, slice(2, 3))
    assert part["input_ids"].size(0) == 4 and part["index"].tolist() == [[0, 1, 2, 3]]


def ppo_step(tiny_model, micro: int | None, chunk: int) -> dict[str, torch.Tensor]:
    """One minibatch step (SGD, so the new weights are linear in the gradient)."""
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    value = ValueModel(RewardModel.from_causal_lm(tiny_model, head_seed=0))
    g = torch.Generator().manual_seed(3)
    vocab = policy.config.vocab_size
    samples = [Sample(torch.randint(5, vocab, (3 + i % 3,), generator=g).tolist(),
                      torch.randint(5, vocab, (2 + i,), generator=g).tolist(),
                      [-1.0] * (2 + i), True) for i in range(6)]
    ep = pack_episodes(samples, pad_id=0)
    shape = ep.mask.shape
    noise = torch.randn(shape, generator=g)
    batch = Scored(ep, torch.zeros(shape[0]), old_logprobs=-5.0 + 0.1 * noise,
                   ref_logprobs=torch.zeros(shape), old_values=0.1 * noise,
                   advantages=torch.randn(shape, generator=g),
                   returns=torch.randn(shape, generator=g), engine_gap=torch.zeros(shape))
    ptx = next(ptx_batches([{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
                            {"input_ids": [10, 11, 12], "labels": [10, 11, 12]},
                            {"input_ids": [13, 14, 15, 16], "labels": [-100, 14, 15, 16]}],
                           3, pad_id=0, seed=0))
    cfg = PPOConfig(micro_batch_size=micro, logits_chunk_tokens=chunk, ptx_coef=2.0,
                    grad_clip=1e9)
    optimizer = torch.optim.SGD([*policy.parameters(), *value.parameters()], lr=1.0)
    stats = minibatch_step(batch, torch.arange(6), policy, value, optimizer,
                           itertools.repeat(ptx), Accelerator(cpu=True), cfg)
    assert set(stats) >= {"policy_loss", "value_loss", "ptx_loss", "entropy"}
    return {**{f"p.{k}": v.detach() for k, v in policy.state_dict().items()},
            **{f"v.{k}": v.detach() for k, v in value.state_dict().items()},
            **{f"s.{k}": torch.tensor(v) for k, v in stats.items()}}


@pytest.mark.parametrize("micro", [1, 4])
def test_ppo_micro_batches_give_the_whole_minibatch_update(tiny_model, micro):
    whole = ppo_step(tiny_model, None, chunk=0)  # one forward, full logits: the old path
    assert_close(ppo_step(tiny_model, micro, chunk=5), whole, 1e-4)
