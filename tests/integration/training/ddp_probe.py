"""Run under torchrun: how many gradient all-reduces one optimiser step of each recipe's
accumulation makes under DDP, and whether micro-batches change the synced gradient.
Prints JSON from rank 0 (``test_ddp_no_sync.py``).

A DDP comm hook counts the buckets each backward all-reduces (then all-reduces them as
DDP's default hook does). For SFT (``accumulate_lm_loss``) and PPO (``minibatch_step``,
policy + value model + ptx) it runs the same rows once whole and once in micro-batches of
one row: the micro-batched step must all-reduce as often as the whole one (``no_sync`` on
every backward but the last) and give the same gradient.
"""

import itertools
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from transformers import AutoModelForCausalLM

from training.recipes.ppo import (
    PPOConfig,
    Scored,
    ValueModel,
    minibatch_step,
    pack_episodes,
    ptx_batches,
)
from training.recipes.sft import SFTConfig, accumulate_lm_loss
from training.reward_model import RewardModel
from training.rollout import Sample


def counted(model, calls: list[int]) -> None:
    def hook(state, bucket):
        calls[0] += 1
        return allreduce_hook(None, bucket)  # type: ignore[arg-type]

    model.register_comm_hook(None, hook)


def sft(acc: Accelerator, path: Path, rank: int) -> dict:
    out = {}
    for micro in (None, 1):
        torch.manual_seed(0)
        model = acc.prepare(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
        calls = [0]
        counted(model, calls)
        g = torch.Generator().manual_seed(10 + rank)
        ids = torch.randint(5, model.module.config.vocab_size, (4, 12), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        accumulate_lm_loss(model, batch, acc, SFTConfig(micro_batch_size=micro))
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        out[str(micro)] = {"allreduces": calls[0], "grad": grad}
    return {"whole_allreduces": out["None"]["allreduces"],
            "micro_allreduces": out["1"]["allreduces"],
            "grad_diff": (out["None"]["grad"] - out["1"]["grad"]).abs().max().item()}


def ppo(acc: Accelerator, path: Path, rank: int) -> dict:
    out = {}
    for micro in (None, 1):
        torch.manual_seed(0)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        value = ValueModel(RewardModel.from_causal_lm(path, head_seed=0))
        opt = torch.optim.SGD([*policy.parameters(), *value.parameters()], lr=0.0)
        policy, value, opt = acc.prepare(policy, value, opt)
        calls = [[0], [0]]
        counted(policy, calls[0])
        counted(value, calls[1])
        g = torch.Generator().manual_seed(20 + rank)
        vocab = policy.module.config.vocab_size
        samples = [Sample(torch.randint(5, vocab, (4,), generator=g).tolist(),
                          torch.randint(5, vocab, (3,), generator=g).tolist(), [-1.0] * 3,
                          True) for _ in range(3)]
        ep = pack_episodes(samples, pad_id=0)
        shape = ep.mask.shape
        batch = Scored(ep, torch.zeros(3), torch.full(shape, -7.0), torch.zeros(shape),
                       torch.zeros(shape), torch.randn(shape, generator=g),
                       torch.randn(shape, generator=g), torch.zeros(shape))
        ptx = next(ptx_batches([{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}] * 2, 2,
                               pad_id=0, seed=0))
        grads: list[torch.Tensor] = []
        params = [*policy.parameters(), *value.parameters()]

        def capture(grads=grads, params=params) -> None:  # instead of the optimiser step
            grads.extend(p.grad.flatten().clone() for p in params if p.grad is not None)

        opt.step = capture  # type: ignore[method-assign]
        minibatch_step(batch, torch.arange(3), policy, value, opt, itertools.repeat(ptx), acc,
                       PPOConfig(micro_batch_size=micro, grad_clip=1e9, ptx_coef=1.0))
        out[str(micro)] = {"policy": calls[0][0], "value": calls[1][0],
                           "grad": torch.cat(grads)}
    return {"whole_allreduces": [out["None"]["policy"], out["None"]["value"]],
            "micro_allreduces": [out["1"]["policy"], out["1"]["value"]],
            "grad_diff": (out["None"]["grad"] - out["1"]["grad"]).abs().max().item()}


def main() -> None:
    path = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    result = {"processes": acc.num_processes, "sft": sft(acc, path, acc.process_index),
              "ppo": ppo(acc, path, acc.process_index)}
    if acc.is_main_process:
        print(json.dumps(result))
    # leave the gloo group before exit: without it a rank can abort in teardown
    # ("terminate called without an active exception", exit -6; seen once in a full run)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
