"""PPO rollouts and weight sync: vLLM in place against the alternatives, on one model.

    python benchmarks/ppo.py [--model DIR] [--batch 32] [--max-tokens 64] [--syncs 10]
                             [--ppo-steps 4]

1. Rollout tokens/s: the recipe's ``RolloutEngine`` (vLLM ``AsyncLLM``) against
   ``transformers`` ``generate`` on the same model, prompts and length (sampling, T = 1,
   no early stop, so both produce batch × max_tokens tokens).
2. Weight sync seconds: ``RolloutEngine.sync_weights`` (in place, no disk) against writing
   a checkpoint and starting a new engine on it.
3. One PPO iteration broken into rollout, scoring, update and sync (the recipe's own
   per-step timings), on the tiny model with a reward model trained on synthetic rankings.

Prints one JSON object per measurement and a Markdown table at the end. Without
``--model`` it builds the tiny model in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from training.formatting import render_prompt  # noqa: E402
from training.rollout import RolloutEngine  # noqa: E402

PROMPTS = ["Describe the ocean.", "Tell me about music.", "Explain a rainy day.",
           "List three facts about the stars."]


def prompt_ids(tokenizer, batch: int) -> list[list[int]]:
    return [tokenizer(render_prompt(tokenizer, PROMPTS[i % len(PROMPTS)]),
                      add_special_tokens=False)["input_ids"] for i in range(batch)]


def vllm_rollout(engine: RolloutEngine, ids, max_tokens: int) -> float:
    engine.generate(ids[:2], max_tokens=4)  # warm-up
    t0 = time.perf_counter()
    samples = engine.generate(ids, max_tokens=max_tokens)
    return sum(len(s.response_ids) for s in samples) / (time.perf_counter() - t0)


@torch.no_grad()
def hf_rollout(model, tokenizer, ids, max_tokens: int) -> float:
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
    mask = (torch.arange(width) >= torch.tensor([width - len(x) for x in ids])[:, None]).long()
    t0 = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                         temperature=1.0, top_k=0, max_new_tokens=max_tokens,
                         min_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id)
    return (out.size(1) - width) * len(ids) / (time.perf_counter() - t0)


def restart_sync(engine_args: dict, model, tokenizer, workdir: Path) -> tuple[float, RolloutEngine]:
    """The alternative: write a checkpoint, start a fresh engine on it."""
    t0 = time.perf_counter()
    model.save_pretrained(workdir / "ckpt", safe_serialization=True)
    tokenizer.save_pretrained(workdir / "ckpt")
    engine = RolloutEngine(workdir / "ckpt", **engine_args)
    return time.perf_counter() - t0, engine


def ppo_iteration(model_dir: Path, workdir: Path, steps: int) -> dict[str, float]:
    """Median per-step timings of a short PPO run (reward model on synthetic rankings)."""
    from core.registry import Registry
    from feedback.store import FeedbackStore
    from training.config import load_config
    from training.recipes import ppo, reward
    from training.synthetic import synthetic_demonstrations, synthetic_rankings

    store = FeedbackStore(f"sqlite:///{workdir / 'feedback.db'}")
    store.migrate()
    store.persist(synthetic_rankings(40, seed=1))
    store.persist(synthetic_demonstrations(16, seed=2))
    registry = Registry(workdir / "registry")
    registry.register_base(model_dir)
    reward.train(load_config(reward.RewardConfig, None, "reward.yaml",
                             {"max_steps": 2, "max_len": 64, "progress": False}),
                 store=store, registry=registry)
    m = ppo.train(load_config(ppo.PPOConfig, None, "ppo.yaml",
                              {"max_steps": steps, "progress": False, "max_len": 128}),
                  store=store, registry=registry)
    rows = [json.loads(x) for x in (registry.path(m.version) / "metrics.jsonl").read_text()
            .splitlines()]
    train = [r for r in rows if r["split"] == "train"][1:] or rows  # skip the first step
    keys = ("rollout_s", "score_s", "update_s", "weight_sync_s", "rollout_tokens_per_s")
    return {k: statistics.median(r[k] for r in train if k in r) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--syncs", type=int, default=10)
    ap.add_argument("--ppo-steps", type=int, default=4)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    if args.model is None:
        from training.tiny_model import build_tiny_model

        args.model = build_tiny_model(workdir / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = prompt_ids(tokenizer, args.batch)
    engine_args = {"max_model_len": 256, "seed": 0, "max_num_seqs": args.batch}
    results: dict[str, float] = {}

    t0 = time.perf_counter()
    engine = RolloutEngine(args.model, **engine_args)
    results["engine_start_s"] = time.perf_counter() - t0
    results["vllm_tokens_per_s"] = vllm_rollout(engine, ids, args.max_tokens)
    results["hf_generate_tokens_per_s"] = hf_rollout(model, tokenizer, ids, args.max_tokens)
    state = model.state_dict()
    syncs = [engine.sync_weights(state.items()) for _ in range(args.syncs)]
    results["sync_in_place_s"] = statistics.median(syncs)
    engine.shutdown()
    restart_s, engine = restart_sync(engine_args, model, tokenizer, workdir)
    results["sync_checkpoint_restart_s"] = restart_s
    engine.shutdown()
    if args.ppo_steps:
        results.update({f"ppo_{k}": v for k, v in
                        ppo_iteration(args.model, workdir, args.ppo_steps).items()})
    print(json.dumps(results))
    print(f"\n| measurement (batch {args.batch}, {args.max_tokens} tokens) | value |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.4g} |")


if __name__ == "__main__":
    main()
