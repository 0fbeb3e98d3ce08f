"""Step 1 of InstructGPT: supervised fine-tuning on labeler demonstrations.

The loss is on response tokens only (prompt labels are −100). Batches group examples of
similar length (``LengthGroupedSampler``) so padding is not most of the compute. The
learning rate decays on a cosine to 10 % of its peak with no warm-up, as in the paper.
The result is a new policy version in the registry, announced as a candidate.

Data: only labeler and admin demonstrations train, unless ``train_on_user_feedback``.
The held-out demonstrations are a fixed slice of prompts picked by a hash of their
normalised text (``eval_fraction``, :func:`split_demonstrations`): the same prompts for
every SFT version, so no SFT trains on a later one's held-out prompts and the SFT gates
(``deploy.gates.evaluate_sft``) can compare two SFT versions' LM loss on them fairly.

Run: ``rlhf train sft --config training/configs/sft.yaml`` (or ``accelerate launch -m
training.cli sft …`` for several processes).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from core.registry import Manifest, Registry
from core.settings import KafkaSettings
from training.checkpoint import Checkpointer, epoch_batches
from training.config import RunConfig
from training.datasets import (
    TrainingDataError,
    in_slice,
    is_gate_prompt,
    sft_example,
    split_by_prompt,
)
from training.formatting import render_prompt, stop_token_ids
from training.logprobs import lm_loss_sum, micro_slices
from training.metrics import MetricsLog
from training.runs import (
    cosine_optimizer,
    enable_gradient_checkpointing,
    make_accelerator,
    publish,
    resolve_base,
    save_model,
    shared_result,
    snapshot,
)


class SFTConfig(RunConfig):
    """``training/configs/sft.yaml``."""

    batch_size: int = Field(8, ge=1, description="Demonstrations per update (global).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (paper: 9.65e-6 at 1.3B).")
    epochs: int = Field(2, ge=1, description="Passes over the demonstrations (paper: 16).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to this × lr.")
    train_on_user_feedback: bool = Field(
        False, description="Train on demonstrations from `user` keys too; by default only "
                           "labeler and admin demonstrations train.")
    select_epoch: Literal["reward", "last"] = Field(
        "reward", description="Which epoch's weights to keep: `reward` = once an accepted "
                              "reward model exists, the epoch whose answers to the held-out "
                              "prompts it scores highest (as the paper chose its SFT), else "
                              "the last; `last` = always the last.")
    select_prompts: int = Field(
        32, ge=1, description="Held-out prompts sampled after each epoch for select_epoch.")
    select_max_new_tokens: int = Field(
        48, ge=1, description="Most tokens per answer sampled for select_epoch.")


SFT_EVAL_SALT = "sft-eval"
"""Salt of the held-out demonstration slice (no SFT trains on it; the SFT gates use it)."""

TRAINING_SOURCES = ("labeler", "admin")
"""Demonstration sources that train by default; ``user`` ones only when enabled."""


def trainable(demos: list, train_on_user_feedback: bool, gate_holdout_share: float = 0.0
              ) -> list:
    """The demonstrations SFT may learn from (and be judged on): labeler/admin ones, and
    user ones too when ``train_on_user_feedback``; never a prompt of the deploy gates'
    held-out slice (``gate_holdout_share``)."""
    return [d for d in demos
            if (train_on_user_feedback or getattr(d, "source", "labeler") in TRAINING_SOURCES)
            and not is_gate_prompt(d.prompt, gate_holdout_share)]


def split_demonstrations(demos: list, eval_fraction: float, seed: int = 0
                         ) -> tuple[list, list]:
    """(train, held out): held out = prompts in the ``eval_fraction`` hash slice.

    The slice does not depend on the data, so it is stable as demonstrations arrive. When
    it is empty or holds every prompt (a handful of prompts), the seeded split by prompt
    is used instead (``training.datasets.split_by_prompt``).
    """
    held = [d for d in demos if in_slice(d.prompt, eval_fraction, SFT_EVAL_SALT)]
    if eval_fraction > 0 and (not held or len(held) == len(demos)):
        return split_by_prompt(demos, lambda d: d.prompt, eval_fraction, seed)
    return [d for d in demos if not in_slice(d.prompt, eval_fraction, SFT_EVAL_SALT)], held


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                   stop_ids: list[int]) -> list[str]:
    """One seeded answer per prompt (temperature 1), decoded without special tokens."""
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer([render_prompt(tokenizer, p) for p in prompts], return_tensors="pt",
                        padding=True, add_special_tokens=False).to(next(model.parameters()).device)
        torch.manual_seed(seed)
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop_ids)
    finally:
        tokenizer.padding_side = side
        model.train()
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def epoch_scorer(registry: Registry, cfg: SFTConfig):
    """The accepted reward model that picks the SFT epoch, or None (no RM yet, `last`,
    or FSDP, whose sharded weights cannot generate here)."""
    from training.lineage import accepted_reward
    from training.reward_model import RewardScorer

    rm = accepted_reward(registry) if cfg.select_epoch == "reward" and not cfg.fsdp else None
    return None if rm is None else RewardScorer.from_registry(registry, rm.version)


@torch.no_grad()
def heldout_loss(model, loader, accelerator, cfg: SFTConfig) -> float:
    """Token-weighted LM loss on the held-out demonstrations' response tokens."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        for part in micro_slices(batch["input_ids"].size(0), cfg.micro_batch_size):
            nll, n = lm_loss_sum(model, {k: v[part] for k, v in batch.items()},
                                 cfg.logits_chunk_tokens)
            total += nll.item()
            tokens += n
    model.train()
    return total / max(tokens, 1)


def accumulate_lm_loss(model, batch: dict[str, torch.Tensor], accelerator, cfg: SFTConfig
                       ) -> float:
    """Backward of the batch's mean LM loss, one micro-batch at a time (each weighted by
    its share of the batch's labelled tokens; DDP all-reduces on the last only); returns
    the loss."""
    tokens = max(int((batch["labels"][:, 1:] != -100).sum()), 1)
    parts = micro_slices(batch["input_ids"].size(0), cfg.micro_batch_size)
    total = 0.0
    for i, part in enumerate(parts):
        sync = contextlib.nullcontext() if i == len(parts) - 1 else accelerator.no_sync(model)
        with sync:
            nll, _ = lm_loss_sum(model, {k: v[part] for k, v in batch.items()},
                                 cfg.logits_chunk_tokens)
            loss = nll / tokens
            accelerator.backward(loss)
        total += loss.item()
    return total


def train(cfg: SFTConfig, *, store, registry: Registry,
          kafka: KafkaSettings | None = None) -> Manifest:
    """Fine-tune the base policy on the store's demonstrations; returns the new version."""
    t0 = time.monotonic()
    accelerator = make_accelerator(cfg)

    # 1. Snapshot the store: everything below reads up to this high-water mark (a resumed
    #    run reads up to the interrupted run's mark).
    ckpt = Checkpointer(registry, "sft", cfg, accelerator)
    snap = snapshot(store, ckpt.data_mark)
    stored = store.demonstrations(until=snap.data_mark)
    demos = trainable(stored, cfg.train_on_user_feedback, cfg.gate_holdout_share)
    if not demos:
        raise TrainingDataError(
            f"no demonstrations that may train in the feedback store up to mark "
            f"{snap.data_mark} ({len(stored)} stored; user ones train only with "
            f"train_on_user_feedback; prompts of the gates' {cfg.gate_holdout_share:.0%} "
            "slice never train); submit some (kind=demonstration) first")

    # 2. Split by prompt and tokenise; the loss sees response tokens only.
    base_path, parent = resolve_base(registry, cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_rows, eval_rows = split_demonstrations(demos, cfg.eval_fraction, cfg.seed)
    train_set = [sft_example(tokenizer, d.prompt, d.response, cfg.max_len) for d in train_rows]
    eval_set = [sft_example(tokenizer, d.prompt, d.response, cfg.max_len) for d in eval_rows]

    # 3. Batches of similar length; model, optimiser and cosine schedule to 10 %.
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    per_process = max(cfg.batch_size // accelerator.num_processes, 1)
    sampler = LengthGroupedSampler(per_process, lengths=[len(x["input_ids"]) for x in train_set],
                                   generator=torch.Generator().manual_seed(cfg.seed))
    train_loader: DataLoader = DataLoader(train_set, batch_size=per_process,  # type: ignore[arg-type]
                                          sampler=sampler, collate_fn=collate)
    eval_loader: DataLoader = DataLoader(eval_set, batch_size=per_process,  # type: ignore[arg-type]
                                         collate_fn=collate)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    enable_gradient_checkpointing(model, cfg)
    optimizer, scheduler, steps = cosine_optimizer(model, cfg, len(train_set), cfg.batch_size,
                                                   accelerator.num_processes)
    # Every process evaluates the whole held-out set, so eval_loader is not sharded.
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler)

    # 4. Train; held-out loss every eval_every updates and after each epoch.
    staging = Path(tempfile.mkdtemp(prefix="rlhf-sft-"))
    metrics = MetricsLog(staging / "metrics.jsonl", enabled=False)
    if eval_set:
        metrics.log(0, "eval", loss=heldout_loss(model, eval_loader, accelerator, cfg))
    step, t_train = 0, time.monotonic()
    scorer = epoch_scorer(registry, cfg) if eval_rows else None
    select = [d.prompt for d in eval_rows[:cfg.select_prompts]]
    stops = stop_token_ids(base_path, tokenizer)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def select_epoch(epoch: int) -> None:
        """Score this epoch's answers to the held-out prompts; keep the best weights."""
        nonlocal best
        if scorer is None:
            return
        policy = accelerator.unwrap_model(model)
        answers = sample_answers(policy, tokenizer, select, cfg.select_max_new_tokens,
                                 cfg.seed, stops)
        reward = sum(scorer.score(list(zip(select, answers, strict=True)))) / len(select)
        metrics.log(step, "select", reward=reward, epoch=epoch)
        if best is None or reward > best[0]:
            best = (reward, epoch, {k: v.detach().cpu().clone()
                                    for k, v in policy.state_dict().items()})

    start_epoch, skip = 1, 0
    resumed = ckpt.restore()
    if resumed is not None:
        step, start_epoch, skip = resumed["step"], resumed["epoch"], resumed["batch"]
        metrics.records[:] = resumed["records"]
        if resumed.get("best") is not None:
            best = (resumed["best"]["reward"], resumed["best"]["epoch"],
                    load_file(ckpt.state / "best.safetensors"))

    def save_checkpoint(epoch: int, batch_in_epoch: int) -> None:
        kept = None
        if best is not None:
            kept = {"reward": best[0], "epoch": best[1]}
            if accelerator.is_main_process:
                ckpt.dir.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in best[2].items()},
                          ckpt.dir / "best.safetensors")
        ckpt.save(step, epoch=epoch, batch=batch_in_epoch, data_mark=snap.data_mark,
                  records=metrics.records, best=kept)
        if best is not None and accelerator.is_main_process:
            os.replace(ckpt.dir / "best.safetensors", ckpt.state / "best.safetensors")

    bar = tqdm(total=steps, initial=step, desc="sft",
               disable=not (cfg.progress and accelerator.is_main_process))
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        batches = epoch_batches(accelerator, train_loader, epoch, start_epoch, skip)
        if batches is None:  # done before the interruption
            continue
        for batch_in_epoch, batch in batches:
            if step >= steps:
                break
            loss = accumulate_lm_loss(model, batch, accelerator, cfg)
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            metrics.log(step, "train", loss=loss, lr=scheduler.get_last_lr()[0])
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
            if eval_set and cfg.eval_every and step % cfg.eval_every == 0:
                metrics.log(step, "eval", loss=heldout_loss(model, eval_loader, accelerator, cfg))
            if ckpt.due(step) and step < steps:
                save_checkpoint(epoch, batch_in_epoch)
            if step >= steps:
                break
        if eval_set and not cfg.eval_every:
            metrics.log(step, "eval", loss=heldout_loss(model, eval_loader, accelerator, cfg))
        select_epoch(epoch)
        if step >= steps:
            break
    bar.close()
    train_s = time.monotonic() - t_train
    selected: dict[str, Any] = {"selected_epoch": None, "selected_by": "last"}
    if best is not None:
        accelerator.unwrap_model(model).load_state_dict(best[2])
        selected = {"selected_epoch": best[1], "selected_by": f"reward {scorer.version}",
                    "selected_reward": best[0]}

    # 5. Save the policy with its tokenizer, register it and announce the candidate.
    if not save_model(accelerator, model, staging):
        return shared_result(accelerator, registry, None, "policy", staging)
    tokenizer.save_pretrained(staging)
    final = {"train_loss": metrics.last("train").get("loss"), "steps": step,
             "eval_loss": metrics.last("eval").get("loss"),
             "eval_loss_start": next((r["loss"] for r in metrics.records
                                      if r["split"] == "eval"), None),
             "train_examples": len(train_set), "eval_examples": len(eval_set), **selected}
    manifest = publish(
        registry, "policy", staging, parent=parent, snap=snap,
        config={"recipe": "sft", **cfg.model_dump(mode="json")}, metrics=final,
        timing={"train_s": train_s, "total_s": time.monotonic() - t0},
        records=metrics.records, plot_keys=["loss"], kafka=kafka)
    ckpt.finish()
    return shared_result(accelerator, registry, manifest, "policy", staging)
