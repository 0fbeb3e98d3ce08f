"""Peak memory of one training step per recipe, across micro-batch sizes.

    python benchmarks/memory.py [--model DIR] [--only sft,reward,ppo] [--out benchmarks/out]

Each row is a fresh child process that loads the models of a recipe (the small
Qwen-shaped model by default: real 151,936-token vocabulary, ``rlhf model small``), takes
its RSS, then runs one optimiser step of the recipe's own code (``accumulate_lm_loss``,
``accumulate_ranking_loss``, PPO's ``minibatch_step`` with its ptx term) on random tokens
of the shapes below, and reports the step's peak RSS above that baseline (``ru_maxrss``)
and its seconds. The comparison that matters is within a recipe: the same batch, the same
update, in one piece or in micro-batches; and ``chunk 0`` (the full (B, T, V) logits, the
code before ``training.logprobs``) against chunked log-probs.

Shapes (random token ids, so the work is the real work):
* sft: 16 sequences × 128 tokens, loss on the last 96 of each.
* reward: 64 prompt groups × K = 9 responses × 128 tokens (the paper's RM batch).
* ppo: a minibatch of 16 episodes (64-token prompt + 64-token response) and ptx 8:1 =
  128 sequences × 64 tokens (``training/configs/ppo.yaml``'s ratio), policy, value model,
  AdamW. The full-logits row is left out: its ptx logits alone would be 4.6 GiB of fp32.

CPU-heavy; on a shared machine run it under the heavy-jobs lock. Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS = [("sft", None, 0), ("sft", None, 1024), ("sft", None, 256), ("sft", 4, 256),
        ("sft", 1, 256), ("reward", None, 0), ("reward", 16, 0), ("reward", 4, 0),
        ("ppo", None, 256), ("ppo", 8, 256), ("ppo", 2, 256), ("ppo", 2, 64)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(recipe: str, micro: int | None, chunk: int, model: Path) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    acc = Accelerator(cpu=True)
    if recipe == "sft":
        from training.recipes.sft import SFTConfig, accumulate_lm_loss

        policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        vocab = policy.config.vocab_size
        ids = torch.randint(0, 151_000, (16, 128), generator=g)
        labels = ids.clone()
        labels[:, :32] = -100
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        cfg = SFTConfig(micro_batch_size=micro, logits_chunk_tokens=chunk)
        base = current_rss_mb()
        t0 = time.perf_counter()
        accumulate_lm_loss(policy, batch, acc, cfg)
        opt.step()
    elif recipe == "reward":
        from training.datasets import RankedGroup, collate_groups
        from training.recipes.reward import accumulate_ranking_loss
        from training.reward_model import RewardModel

        rm = RewardModel.from_causal_lm(model, head_seed=0)
        vocab = rm.backbone.config.vocab_size
        groups = [RankedGroup(f"p{i}", torch.randint(0, 151_000, (9, 128), generator=g).tolist(),
                              list(range(1, 10))) for i in range(64)]
        batch = collate_groups(groups, pad_id=0)
        opt = torch.optim.AdamW(rm.parameters(), lr=1e-5)
        base = current_rss_mb()
        t0 = time.perf_counter()
        accumulate_ranking_loss(rm, batch, acc, micro)
        opt.step()
    else:
        from training.recipes.ppo import (
            PPOConfig,
            Scored,
            ValueModel,
            minibatch_step,
            pack_episodes,
            ptx_batches,
        )
        from training.reward_model import RewardModel
        from training.rollout import Sample

        policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        vocab = policy.config.vocab_size
        value = ValueModel(RewardModel.from_causal_lm(model, head_seed=0))
        samples = [Sample(torch.randint(0, 151_000, (64,), generator=g).tolist(),
                          torch.randint(0, 151_000, (64,), generator=g).tolist(),
                          [-1.0] * 64, True) for _ in range(16)]
        ep = pack_episodes(samples, pad_id=0)
        shape = ep.mask.shape
        batch_ = Scored(ep, torch.zeros(16), torch.full(shape, -12.0), torch.zeros(shape),
                        torch.zeros(shape), torch.randn(shape, generator=g),
                        torch.randn(shape, generator=g), torch.zeros(shape))
        ptx = next(ptx_batches([{"input_ids": r, "labels": r} for r in
                                torch.randint(0, 151_000, (128, 64), generator=g).tolist()],
                               128, pad_id=0, seed=0))
        opt = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-5)
        cfg = PPOConfig(micro_batch_size=micro, logits_chunk_tokens=chunk, ptx_coef=1.0)
        base = current_rss_mb()
        t0 = time.perf_counter()
        minibatch_step(batch_, torch.arange(16), policy, value, opt, itertools.repeat(ptx),
                       acc, cfg)
    seconds = time.perf_counter() - t0
    return {"recipe": recipe, "micro_batch_size": micro or "whole", "chunk": chunk,
            "vocab": vocab, "baseline_mb": round(base), "step_peak_mb": round(rss_mb() - base),
            "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="checkpoint dir; default: build the small one")
    ap.add_argument("--only", default="sft,reward,ppo")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        recipe, micro, chunk = args.child
        print(json.dumps(child(recipe, int(micro) or None, int(chunk), args.model)))
        return
    model = args.model
    if model is None:
        from training.small_model import build_small_model

        model = build_small_model(Path(tempfile.mkdtemp(prefix="rlhf-small-")) / "small")
    wanted = args.only.split(",")
    results = []
    print(f"{'recipe':8} {'micro':>6} {'chunk':>6} {'base MB':>8} {'step peak MB':>13} "
          f"{'s':>6}")
    for recipe, micro, chunk in ROWS:
        if recipe not in wanted:
            continue
        proc = subprocess.run([sys.executable, __file__, "--model", str(model), "--child",
                               recipe, str(micro or 0), str(chunk)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            row = {"recipe": recipe, "micro_batch_size": micro or "whole", "chunk": chunk,
                   "error": proc.stderr.strip().splitlines()[-1][:120]}
            print(f"{recipe:8} {micro or 'whole':>6} {chunk:>6}  failed: {row['error']}")
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{recipe:8} {row['micro_batch_size']:>6} {chunk:>6} {row['baseline_mb']:>8} "
                  f"{row['step_peak_mb']:>13} {row['seconds']:>6}", flush=True)
        results.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
