"""Step 2 of InstructGPT: the reward model, trained on K-way rankings grouped per prompt.

Each batch element is one prompt group: its K responses are scored once and every score
is reused in all C(K,2) pairs of the group (``kway_ranking_loss``); comparisons are
groups with K = 2 and ties give no pair. Dropout is off while training (``dropout``): a
response scored once carries one dropout mask into all K − 1 of its pairs (see the reward
section of benchmarks/README.md). Train and eval are split by prompt. After training, a
bias makes labeler demonstrations score 0 on average (or, without demonstrations, the
policy's samples: the ranked responses). The result is a reward version in the registry,
announced as a candidate.

Run: ``rlhf train reward --config training/configs/reward.yaml``.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import AutoTokenizer

from core.registry import Manifest, Registry
from core.settings import KafkaSettings
from feedback.store.store import PreferenceGroup
from training import lora
from training.checkpoint import Checkpointer, epoch_batches
from training.config import LoraSettings, RunConfig
from training.datasets import (
    GOLD_SALT,
    JUDGE_SALT,
    GroupCollator,
    RankedGroup,
    TrainingDataError,
    in_slice,
    is_gate_prompt,
    ranked_group,
    split_by_prompt,
)
from training.logprobs import micro_slices
from training.losses import RankingLoss, kway_ranking_loss, pairwise_preferences
from training.metrics import MetricsLog
from training.reward_model import RewardModel, disable_dropout, score_pairs
from training.runs import (
    Snapshot,
    cosine_optimizer,
    enable_gradient_checkpointing,
    make_accelerator,
    publish,
    resolve_base,
    shared_result,
    snapshot,
)


class RewardConfig(RunConfig):
    """``training/configs/reward.yaml``."""

    groups_per_batch: int = Field(8, ge=1, description="Prompt groups per update (paper: 64).")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (paper: 9e-6).")
    min_lr_ratio: float = Field(1.0, ge=0, le=1, description="Cosine decays to this × lr.")
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="Prompts held out for eval.")
    bias_max_samples: int = Field(512, ge=1, description="Most samples used for the bias.")
    gold_share: float = Field(
        0.05, ge=0, lt=1, description="Share of ranked prompts (hash of the normalised text) "
                                      "no reward model trains on; the RM's pairwise accuracy "
                                      "on them is recorded as metrics.gold_accuracy.")
    role: Literal["optimised", "judge"] = Field(
        "optimised", description="`optimised`: the RM PPO optimises, trained outside the judge "
                                 "slice; `judge`: a held-out judge for the deploy gates, "
                                 "trained only on the judge slice.")
    judge_share: float = Field(
        0.0, ge=0, lt=1, description="Share of ranked prompts (hash) reserved for the judge "
                                     "RM; 0 = no judge slice (optimised RMs use all).")
    lora: LoraSettings | None = Field(
        None, description="Train LoRA adapters on the backbone (and the full head) instead "
                          "of the whole RM; merged into a full checkpoint when saved.")
    dropout: bool = Field(
        False, description="Train with the backbone's dropout; by default every dropout is "
                           "switched off (as TRL's RewardTrainer does), so a response's "
                           "reward does not depend on a random mask.")
    train_on_user_feedback: bool = Field(
        False, description="Train on rankings/comparisons from `user` keys too; by default "
                           "only labeler and admin feedback trains, user feedback is kept "
                           "for evaluation.")


TRAINING_SOURCES = ("labeler", "admin")
"""Feedback sources that train by default; ``user`` feedback only when enabled."""


def partition(rows: Sequence[PreferenceGroup], cfg: RewardConfig
              ) -> tuple[list[PreferenceGroup], list[PreferenceGroup]]:
    """(rows this RM may train on, gold rows).

    Gold = prompts of the fixed gold slice, whatever their source: never trained on.
    The rest must come from a training source (``train_on_user_feedback``), lie outside
    the deploy gates' held-out slice (``gate_holdout_share``) and sit on this RM's side of
    the judge slice (``role``, ``judge_share``).
    """
    gold = [g for g in rows if in_slice(g.prompt, cfg.gold_share, GOLD_SALT)]
    usable = []
    for g in rows:
        if in_slice(g.prompt, cfg.gold_share, GOLD_SALT):
            continue
        if is_gate_prompt(g.prompt, cfg.gate_holdout_share):
            continue
        if g.source not in TRAINING_SOURCES and not cfg.train_on_user_feedback:
            continue
        if in_slice(g.prompt, cfg.judge_share, JUDGE_SALT) != (cfg.role == "judge"):
            continue
        usable.append(g)
    return usable, gold


def tokenise_groups(tokenizer, rows: Sequence[PreferenceGroup], max_len: int
                    ) -> list[RankedGroup]:
    groups = [ranked_group(tokenizer, g.prompt, g.responses, g.ranks, max_len) for g in rows]
    return [g for g in groups if g is not None]


def load_groups(store, snap: Snapshot, tokenizer, cfg: RewardConfig
                ) -> tuple[list[RankedGroup], list[RankedGroup]]:
    """(training groups, gold groups) up to the mark, tokenised; ties-only groups dropped."""
    rows = store.preference_groups(until=snap.data_mark)
    trainable, gold = partition(rows, cfg)
    if rows and not trainable:
        users = sum(g.source not in TRAINING_SOURCES for g in rows)
        raise TrainingDataError(
            f"none of the {len(rows)} rankings/comparisons up to mark {snap.data_mark} may "
            f"train this reward model: {len(gold)} are gold (gold_share), {users} come from "
            f"user keys (train_on_user_feedback: false), the rest sit outside this role's "
            f"side of the judge slice (role {cfg.role}, judge_share {cfg.judge_share})")
    usable = tokenise_groups(tokenizer, trainable, cfg.max_len)
    if not usable:
        raise TrainingDataError(
            f"no ranking or comparison with an untied pair in the feedback store up to mark "
            f"{snap.data_mark} ({len(rows)} groups, all ties); submit rankings first")
    return usable, tokenise_groups(tokenizer, gold, cfg.max_len)


def forward_groups(model, batch: dict[str, torch.Tensor]):
    """Score each response once, gather scores into (G, K) and apply the K-way loss."""
    rewards = model(batch["input_ids"], batch["attention_mask"])  # (N,)
    grouped = rewards[batch["index"]]  # (G, K)
    return kway_ranking_loss(grouped, batch["ranks"], batch["group_mask"]), grouped


def group_part(batch: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    """The groups ``part`` of a ``collate_groups`` batch with only their responses (a
    group's responses are contiguous rows, in group order)."""
    mask, index = batch["group_mask"][part], batch["index"][part]
    lo, hi = int(index[0, 0]), int(index[mask].max()) + 1
    return {"input_ids": batch["input_ids"][lo:hi],
            "attention_mask": batch["attention_mask"][lo:hi],
            "index": (index - lo) * mask, "ranks": batch["ranks"][part], "group_mask": mask}


def accumulate_ranking_loss(model, batch: dict[str, torch.Tensor], accelerator,
                            micro_batch_size: int | None) -> RankingLoss:
    """Backward of the batch's K-way loss ``micro_batch_size`` groups at a time.

    The loss is a mean over the groups that have an untied pair, so each micro-batch's
    loss is weighted by its share of those groups: the gradient equals the whole batch's.
    DDP all-reduces on the last backward only. Returns the batch's loss, accuracy, pairs.
    """
    pairs = pairwise_preferences(batch["ranks"], batch["group_mask"]).sum((1, 2))  # (G,)
    scored = int((pairs > 0).sum())
    if scored == 0:
        raise ValueError("kway_ranking_loss: batch has no untied pair (all ties or K<2)")
    parts = [p for p in micro_slices(pairs.numel(), micro_batch_size) if pairs[p].sum() > 0]
    loss = accuracy = 0.0
    for i, part in enumerate(parts):
        sync = contextlib.nullcontext() if i == len(parts) - 1 else accelerator.no_sync(model)
        with sync:
            out, _ = forward_groups(model, group_part(batch, part))
            share = int((pairs[part] > 0).sum()) / scored
            accelerator.backward(out.loss * share)
        loss += out.loss.item() * share
        accuracy += out.accuracy.item() * int(out.num_pairs) / int(pairs.sum())
    return RankingLoss(torch.tensor(loss), torch.tensor(accuracy), pairs.sum())


@torch.no_grad()
def evaluate(model, loader, device) -> dict[str, float]:
    """Held-out loss and pairwise accuracy, overall and by K (``accuracy_k4`` …)."""
    model.eval()
    correct: dict[int, int] = defaultdict(int)
    pairs: dict[int, int] = defaultdict(int)
    losses = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out, grouped = forward_groups(model, batch)
        losses.append(out.loss.item())
        prefs = pairwise_preferences(batch["ranks"], batch["group_mask"])  # (G, K, K)
        wins = prefs & (grouped.unsqueeze(2) > grouped.unsqueeze(1))
        for k, c, p in zip(batch["group_mask"].sum(1).tolist(), wins.sum((1, 2)).tolist(),
                           prefs.sum((1, 2)).tolist(), strict=True):
            correct[k] += c
            pairs[k] += p
    model.train()
    result = {"loss": sum(losses) / len(losses),
              "accuracy": sum(correct.values()) / max(sum(pairs.values()), 1)}
    result.update({f"accuracy_k{k}": correct[k] / pairs[k] for k in sorted(pairs) if pairs[k]})
    return result


def bias_samples(store, snap: Snapshot, limit: int, seed: int
                 ) -> tuple[list[tuple[str, str]], str]:
    """(prompt, response) pairs the bias centres: demonstrations, else policy samples."""
    demos = store.demonstrations(until=snap.data_mark)
    if demos:
        pairs, source = [(d.prompt, d.response) for d in demos], "demonstrations"
    else:
        rows = store.preference_groups(until=snap.data_mark)
        pairs = [(g.prompt, r) for g in rows for r in g.responses]
        source = "policy_samples"
    random.Random(seed).shuffle(pairs)
    return pairs[:limit], source


def train(cfg: RewardConfig, *, store, registry: Registry,
          kafka: KafkaSettings | None = None) -> Manifest:
    """Train a reward model on the store's rankings; returns the new reward version."""
    t0 = time.monotonic()
    accelerator = make_accelerator(cfg)

    # 1. Snapshot the store and load the prompt groups (ties-only groups dropped); a
    #    resumed run reads up to the interrupted run's mark.
    ckpt = Checkpointer(registry, "reward", cfg, accelerator)
    snap = snapshot(store, ckpt.data_mark)
    base_path, parent = resolve_base(registry, cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    groups, gold_groups = load_groups(store, snap, tokenizer, cfg)

    # 2. Split by prompt: no prompt is in both train and eval.
    train_groups, eval_groups = split_by_prompt(groups, lambda g: g.prompt, cfg.eval_fraction,
                                                cfg.seed)
    per_process = max(cfg.groups_per_batch // accelerator.num_processes, 1)
    collate = GroupCollator(tokenizer.pad_token_id)
    train_loader = DataLoader(train_groups, batch_size=per_process, shuffle=True,
                              collate_fn=collate,
                              generator=torch.Generator().manual_seed(cfg.seed))
    eval_loader = DataLoader(eval_groups, batch_size=per_process, collate_fn=collate)

    # 3. The base policy's transformer plus a scalar head; optimiser and schedule.
    model = RewardModel.from_causal_lm(base_path, head_seed=cfg.seed)
    enable_gradient_checkpointing(model.backbone, cfg)
    if not cfg.dropout:
        disable_dropout(model)
    if cfg.lora is not None:
        if cfg.fsdp:
            raise ValueError("lora with fsdp is not supported; set one of them")
        model.backbone = lora.wrap(model.backbone, cfg.lora)
    optimizer, scheduler, steps = cosine_optimizer(model, cfg, len(train_groups),
                                                   cfg.groups_per_batch,
                                                   accelerator.num_processes)
    # Every process evaluates the whole held-out set, so eval_loader is not sharded.
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler)

    # 4. Train on grouped batches: each response scored once, reused in all its pairs.
    staging = Path(tempfile.mkdtemp(prefix="rlhf-reward-"))
    metrics = MetricsLog(staging / "metrics.jsonl", enabled=False)
    if eval_groups:
        metrics.log(0, "eval", **evaluate(model, eval_loader, accelerator.device))
    step, comparisons, t_train = 0, 0, time.monotonic()
    bar = tqdm(total=steps, desc="reward",
               disable=not (cfg.progress and accelerator.is_main_process))
    start_epoch, skip = 0, 0
    resumed = ckpt.restore()
    if resumed is not None:
        step, comparisons = resumed["step"], resumed["comparisons"]
        start_epoch, skip = resumed["epoch"], resumed["batch"]
        metrics.records[:] = resumed["records"]
        bar.update(step)
    model.train()
    for epoch in range(cfg.epochs):
        batches = epoch_batches(accelerator, train_loader, epoch, start_epoch, skip)
        if batches is None:  # done before the interruption
            continue
        for batch_in_epoch, batch in batches:
            if step >= steps:
                break
            out = accumulate_ranking_loss(model, batch, accelerator, cfg.micro_batch_size)
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            comparisons += int(out.num_pairs)
            metrics.log(step, "train", loss=out.loss.item(), accuracy=out.accuracy.item())
            bar.update()
            bar.set_postfix(loss=f"{out.loss.item():.3f}", acc=f"{out.accuracy.item():.2f}")
            if eval_groups and cfg.eval_every and step % cfg.eval_every == 0:
                metrics.log(step, "eval", **evaluate(model, eval_loader, accelerator.device))
            if ckpt.due(step) and step < steps:
                ckpt.save(step, epoch=epoch, batch=batch_in_epoch, comparisons=comparisons,
                          data_mark=snap.data_mark, records=metrics.records)
            if step >= steps:
                break
        if eval_groups and not cfg.eval_every:
            metrics.log(step, "eval", **evaluate(model, eval_loader, accelerator.device))
        if step >= steps:
            break
    bar.close()
    train_s = time.monotonic() - t_train

    gold = (evaluate(model, DataLoader(gold_groups, batch_size=per_process, collate_fn=collate),
                     accelerator.device) if gold_groups else {})

    # 5. Normalise: the bias makes demonstrations (else policy samples) average 0.
    rm = accelerator.unwrap_model(model)
    if cfg.lora is not None:  # fold the adapters in: the version is an ordinary RM
        rm.backbone = lora.merge(rm.backbone)
    samples, source = bias_samples(store, snap, cfg.bias_max_samples, cfg.seed)
    rm.bias.zero_()
    bias = rm.set_bias_from(torch.tensor(score_pairs(rm, tokenizer, samples, cfg.max_len)),
                            source)

    # 6. Save backbone, head and bias with the tokenizer; register and announce.
    if not accelerator.is_main_process:
        return shared_result(accelerator, registry, None, "reward", staging)
    rm.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    final = {**{f"eval_{k}": v for k, v in metrics.last("eval").items()
                if k not in ("step", "split", "elapsed_s")},
             "train_loss": metrics.last("train").get("loss"), "steps": step, "bias": bias,
             "bias_source": source, "train_groups": len(train_groups),
             "eval_groups": len(eval_groups), "comparisons_per_s": comparisons / train_s,
             "gold_groups": len(gold_groups), "gold_accuracy": gold.get("accuracy"),
             "role": cfg.role}
    manifest = publish(
        registry, "reward", staging, parent=parent, snap=snap,
        config={"recipe": "reward", **cfg.model_dump(mode="json")}, metrics=final,
        timing={"train_s": train_s, "total_s": time.monotonic() - t0},
        records=metrics.records, plot_keys=["loss", "accuracy"], kafka=kafka)
    ckpt.finish()
    return shared_result(accelerator, registry, manifest, "reward", staging)
