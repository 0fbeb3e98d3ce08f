"""Step 3 of InstructGPT: PPO-ptx against the reward model, with rollouts on vLLM.

Each step samples a batch of prompts from real traffic (the store's completion log), has
the vLLM engine answer them, scores every response with the reward model (normalised by
its stored bias) and pays a per-token KL penalty β·(log π − log π_ref) against the frozen
*reference*: the SFT version the PPO chain started from (``training.lineage``), not the
parent, so that PPO started from an earlier PPO result is still anchored to SFT and the
KL bounds the cumulative drift. Answers cut at ``max_new_tokens`` are scored as
``truncation`` says (default: a fixed penalty). Advantages come from GAE with γ = 1; the
update is the clipped PPO policy loss, the clipped value loss of a value model
initialised from the reward model (or the previous PPO version's value model when it was
trained against the same reward model), and the PPO-ptx term γ_ptx · LM loss on
``ptx_ratio`` pretraining sequences per episode from ``ptx_source``. After every step the
new weights are loaded into the running engine in place (``RolloutEngine``). The result
is a candidate policy version in the registry; its manifest records ``reference``.

Prompts come from the completion log up to the run's prompt mark (recorded in the
manifest): near-duplicates merged, at most ``max_prompts_per_user`` per user, never a
prompt of the deploy gates' held-out slice (``gate_holdout_share``), never a completion
logged for evaluation (``purpose = "eval"``).

Run: ``rlhf train ppo --config training/configs/ppo.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, get_constant_schedule_with_warmup

from core.registry import Manifest, Registry, RegistryError
from core.settings import KafkaSettings
from training import lora
from training.advantages import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    grpo_advantages,
    kl_k3,
    kl_penalized_rewards,
    rloo_advantages,
    whiten,
)
from training.checkpoint import Checkpointer
from training.config import LoraSettings, RunConfig
from training.datasets import (
    TrainingDataError,
    is_gate_prompt,
    normalise_prompt,
    sft_example,
    split_by_prompt,
    split_corpus,
)
from training.formatting import render_prompt, stop_token_ids
from training.lineage import accepted_reward, reference_of
from training.logprobs import DEFAULT_CHUNK_TOKENS, lm_loss_sum, micro_slices, token_logprobs
from training.losses import masked_mean, ppo_policy_loss, value_loss
from training.metrics import MetricsLog
from training.reward_model import RewardModel, last_token_hidden, pad_batch
from training.rollout import RolloutEngine, Sample
from training.runs import (
    enable_gradient_checkpointing,
    frozen_dtype,
    make_accelerator,
    publish,
    resolve_base,
    save_model,
    shared_result,
    snapshot,
)
from training.tiny_model import CORPUS
from training.weight_sync import expand_to_modules

DATA_DIR = Path(__file__).parents[1] / "data"


class PPOConfig(RunConfig):
    """``training/configs/ppo.yaml``."""

    reward_model: str | None = Field(
        None, description="Reward version to optimise against; None = the newest one.")
    reference: str | None = Field(
        None, min_length=1,
        description="Frozen KL reference (version or checkpoint dir); None = the SFT version "
                    "of the base's lineage (an SFT version is its own reference).")
    episodes: int = Field(256, ge=1, description="Responses sampled in all (paper: 256k).")
    batch_size: int = Field(16, ge=1, description="Prompts per rollout (paper: 512).")
    minibatch_size: int = Field(8, ge=1, description="Episodes per update (paper: 64).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout (paper: 1).")
    lr: float = Field(1e-5, gt=0, description="Policy learning rate (constant after warm-up).")
    value_lr: float | None = Field(None, gt=0, description="Value learning rate; None = lr.")
    warmup_steps: int = Field(10, ge=0, description="Warm-up updates (paper: 10).")
    max_new_tokens: int = Field(32, ge=1, description="Longest sampled response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (paper: 1).")
    kl_coef: float = Field(0.02, ge=0, description="β of the per-token KL penalty.")
    kl_target: float | None = Field(
        None, gt=0, description="Adaptive β steering KL (nats/response) here; None = fixed.")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL controller horizon.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE λ (γ is 1: a bandit).")
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip ε (paper: 0.2).")
    value_clip_eps: float = Field(0.2, gt=0, description="Value clip around old values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ptx_coef: float = Field(27.8, ge=0, description="γ_ptx (paper 27.8; 0 = plain PPO).")
    ptx_ratio: float = Field(
        8.0, gt=0, description="Pretraining sequences per RL episode in each update (paper 8).")
    ptx_source: Literal["file", "demonstrations", "corpus"] = Field(
        "file", description="PPO-ptx data: `file` = ptx_file; `demonstrations` = the store's "
                            "demonstrations; `corpus` = the packaged toy corpus (tests, demo).")
    ptx_file: Path | None = Field(
        None, description="Text (chunked into max_len tokens) or JSONL (`text`, or `prompt` + "
                          "`response` with the loss on the response) for ptx_source=file.")
    truncation: Literal["penalty", "no_eos", "append_eos"] = Field(
        "penalty", description="Answers cut at max_new_tokens: `penalty` = RM score (closed "
                               "by EOS) minus truncation_penalty; `no_eos` = RM score of the "
                               "text as it stands, no EOS; `append_eos` = close with EOS and "
                               "score as finished.")
    truncation_penalty: float = Field(
        1.0, ge=0, description="Reward subtracted from a truncated answer (truncation=penalty).")
    max_prompts_per_user: int = Field(
        200, ge=1, description="Most prompts from one user id (paper: 200).")
    value_warm_start: bool = Field(
        True, description="Start the value model from the base PPO version's value model when "
                          "that run used the same reward model (else from the reward model).")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Publish an EMA of the weights (paper: 0.992).")
    prompt_limit: int = Field(2000, ge=1, description="Most recent distinct prompts used.")
    prompt_file: Path = Field(
        DATA_DIR / "prompts.txt",
        description="Prompts (one a line) used when the store has no completions yet.")
    eval_max_prompts: int = Field(32, ge=1, description="Held-out prompts scored per eval.")
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="Prompts held out for eval.")
    kv_cache_mib: int = Field(256, ge=16, description="vLLM KV cache on CPUs (MiB).")
    engine_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Rollout engine dtype: `auto` = the checkpoint's (bf16 for the "
                            "small model, fp32 for the tiny one); synced weights are cast.")
    offload_frozen: bool = Field(
        False, description="GPU only: keep the frozen reference and reward-model backbone in "
                           "CPU memory, each layer copied to the GPU as it runs (accelerate's "
                           "cpu_offload): less GPU memory, slower scoring. No effect on CPU.")
    engine_eager: bool | None = Field(
        None, description="Rollout engine without CUDA graphs; None = eager on CPU only.")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="GPU share the rollout engine may take.")
    sync_bucket_mb: int = Field(
        256, ge=0, description="Largest bucket (MiB) of one weight-sync message into the "
                               "engine; 0 = the whole model in one message (small models).")
    weight_transfer: Literal["auto", "rpc", "ipc"] = Field(
        "auto", description="Weight sync transport: `rpc` = collective_rpc (any platform), "
                            "`ipc` = vLLM's CUDA IPC weight-transfer engine, `auto` = ipc "
                            "when CUDA is available.")
    sleep_mode: bool = Field(
        False, description="Colocated GPU engine: sleep (level 1, weights to host, KV freed) "
                           "while the trainer scores and updates; wake before the sync.")
    lora: LoraSettings | None = Field(
        None, description="Train LoRA adapters instead of the full policy; the reference is "
                          "the base with adapters disabled when it is the parent; merged "
                          "into a full checkpoint at the end. None = full fine-tune.")
    algorithm: Literal["ppo", "rloo", "grpo", "dr_grpo"] = Field(
        "ppo", description="`ppo`: GAE advantages from a value model (InstructGPT). "
                           "Critic-free, no value model: `rloo` (leave-one-out baseline), "
                           "`grpo` (group mean and std), `dr_grpo` (group mean only); each "
                           "draws samples_per_prompt answers per prompt.")
    samples_per_prompt: int = Field(
        4, ge=2, description="Answers per prompt for rloo/grpo/dr_grpo (batch_size and "
                             "minibatch_size count answers; batch_size must divide by it).")
    kl_penalty: Literal["reward", "loss"] = Field(
        "reward", description="KL to the reference as a per-token reward penalty "
                              "(InstructGPT) or as a k3 loss term weighted by kl_coef (GRPO).")
    value_backbone: Literal["own", "shared"] = Field(
        "own", description="`own`: the value model is a trainable copy of the reward model; "
                           "`shared`: a trainable value head on the reward model's frozen "
                           "backbone (no second backbone, no optimiser state for it).")


    @model_validator(mode="after")
    def _runnable(self) -> PPOConfig:
        """Settings that could only fail after a rollout, refused when the file is read."""
        if self.minibatch_size > self.batch_size or self.batch_size % self.minibatch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must divide batch_size "
                             f"({self.batch_size}): each rollout is split into minibatches")
        if self.critic_free and self.batch_size % self.samples_per_prompt:
            raise ValueError(f"batch_size ({self.batch_size}) must divide by "
                             f"samples_per_prompt ({self.samples_per_prompt}) for "
                             f"{self.algorithm}: each prompt's answers are one group")
        return self

    @property
    def critic_free(self) -> bool:
        return self.algorithm != "ppo"

    def unrunnable(self) -> list[str]:
        """``field: why`` for what would stop this run after its first rollout: the
        pretraining text PPO-ptx needs (the class defaults are the paper's, which need the
        user's own). Checked at start by ``training.preflight``."""
        if self.ptx_coef == 0 or self.ptx_source != "file":
            return []
        if self.ptx_file is None:
            return ["ptx_file: ptx_coef > 0 with ptx_source: file needs pretraining text "
                    "(set ptx_file, or ptx_source: demonstrations, or ptx_coef: 0)"]
        if not Path(self.ptx_file).is_file():
            return [f"ptx_file: {self.ptx_file} does not exist"]
        return []


# -- data ------------------------------------------------------------------------------------

def select_prompts(rows: Sequence[tuple[str, str | None]], cfg: PPOConfig) -> list[str]:
    """PPO's pool from (prompt, user) rows, newest first: near-duplicates (same normalised
    text) merged, at most ``max_prompts_per_user`` per user, gate-slice prompts dropped,
    at most ``prompt_limit`` prompts."""
    seen: set[str] = set()
    per_user: dict[str | None, int] = {}
    out: list[str] = []
    for prompt, user in rows:
        key = normalise_prompt(prompt)
        if not key or key in seen or is_gate_prompt(prompt, cfg.gate_holdout_share):
            continue
        if user is not None and per_user.get(user, 0) >= cfg.max_prompts_per_user:
            continue
        seen.add(key)
        per_user[user] = per_user.get(user, 0) + 1
        out.append(prompt)
        if len(out) >= cfg.prompt_limit:
            break
    return out


def load_prompts(store, cfg: PPOConfig, prompt_mark: int | None = None
                 ) -> tuple[list[str], str]:
    """PPO's prompts of real traffic up to ``prompt_mark`` (see ``select_prompts``), else
    the fallback file; (prompts, source)."""
    prompts = select_prompts(store.prompt_pool(until=prompt_mark), cfg)
    if prompts:
        return prompts, "completions"
    path = Path(cfg.prompt_file)
    if not path.is_file():
        raise TrainingDataError(f"no completions in the feedback store and prompt_file {path} "
                                "does not exist; serve some traffic or set prompt_file")
    lines = list(dict.fromkeys(ln.strip() for ln in path.read_text().splitlines()))
    return [ln for ln in lines
            if ln and not is_gate_prompt(ln, cfg.gate_holdout_share)], "prompt_file"


def encode_prompt(tokenizer, prompt: str, max_prompt_len: int) -> list[int]:
    """The rendered prompt's ids, keeping the end when too long (as ``encode_pair``)."""
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_len:]


def lm_examples(tokenizer, texts: Sequence[str], max_len: int) -> list[dict]:
    """Each text cut into windows of at most ``max_len`` tokens (the last closed by EOS),
    the loss on every token."""
    examples = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for start in range(0, len(ids), max_len):
            window = ids[start:start + max_len]
            if len(window) > 1:
                examples.append({"input_ids": window, "labels": list(window)})
    return examples


def read_ptx_file(path: Path, tokenizer, max_len: int) -> list[dict]:
    """``ptx_file``: JSONL rows ``{"text"}`` or ``{"prompt", "response"}``, or plain text
    whose blank-line-separated documents are LM sequences."""
    if not path.is_file():
        raise TrainingDataError(f"ptx_file {path} does not exist")
    if path.suffix == ".jsonl":
        examples, texts = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if isinstance(row, dict) and "prompt" in row and "response" in row:
                examples.append(sft_example(tokenizer, row["prompt"], row["response"], max_len))
            elif isinstance(row, dict) and isinstance(row.get("text"), str):
                texts.append(row["text"])
            else:
                raise TrainingDataError(f"ptx_file {path} line {n}: expected an object with "
                                        "`text`, or `prompt` and `response`")
        return examples + lm_examples(tokenizer, texts, max_len)
    documents = [d.strip() for d in path.read_text().split("\n\n") if d.strip()]
    return lm_examples(tokenizer, documents, max_len)


def load_ptx(cfg: PPOConfig, store, data_mark: int, tokenizer) -> tuple[list[dict], str]:
    """PPO-ptx sequences from ``cfg.ptx_source``; no silent fallback to the toy corpus.

    Returns ([], "none") when ``ptx_coef`` is 0. Raises TrainingDataError naming the
    setting when the chosen source is missing or empty.
    """
    if cfg.ptx_coef == 0:
        return [], "none"
    if cfg.ptx_source == "demonstrations":
        demos = store.demonstrations(until=data_mark)
        if not demos:
            raise TrainingDataError(f"ptx_source is demonstrations but the store has none up "
                                    f"to mark {data_mark}; set ptx_file or ptx_coef: 0")
        return [sft_example(tokenizer, d.prompt, d.response, cfg.max_len) for d in demos], \
            "demonstrations"
    if cfg.ptx_source == "corpus":
        lines = split_corpus(CORPUS.read_text().splitlines())[0]  # capability slice held out
        return lm_examples(tokenizer, lines, cfg.max_len), "corpus"
    if cfg.ptx_file is None:
        raise TrainingDataError("ptx_coef > 0 needs pretraining data: set ptx_file (text or "
                                "JSONL), or ptx_source: demonstrations, or ptx_coef: 0")
    examples = read_ptx_file(Path(cfg.ptx_file), tokenizer, cfg.max_len)
    if not examples:
        raise TrainingDataError(f"ptx_file {cfg.ptx_file} holds no text")
    return examples, f"file:{cfg.ptx_file}"


def ptx_batches(examples: list[dict], batch_size: int, pad_id: int, seed: int
                ) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of (B, T) input_ids, attention_mask and labels (−100 pad)."""
    rng = random.Random(seed)
    while True:
        order = rng.sample(range(len(examples)), len(examples))
        for start in range(0, max(len(order) - batch_size, 0) + 1, batch_size):
            rows = [examples[i] for i in order[start:start + batch_size]]
            ids, mask = pad_batch([r["input_ids"] for r in rows], pad_id)
            labels, _ = pad_batch([r["labels"] for r in rows], -100)
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -- episodes as tensors -----------------------------------------------------------------------

@dataclass
class Episodes:
    """Prompt + response, right-padded, and where each response token sits.

    input_ids, attention_mask: (B, L). positions: (B, R) index into ``logits[:, :-1]`` of
    the logits that predict each response token. response_ids: (B, R). mask: (B, R).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device) -> Episodes:
        return Episodes(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                 self.positions, self.response_ids, self.mask)))

    def select(self, rows: torch.Tensor) -> Episodes:
        return Episodes(self.input_ids[rows], self.attention_mask[rows], self.positions[rows],
                        self.response_ids[rows], self.mask[rows])


def pack_episodes(samples: Sequence[Sample], pad_id: int) -> Episodes:
    """Samples → ``Episodes``; padded slots point at position 0 and are masked."""
    input_ids, attention_mask = pad_batch([s.prompt_ids + s.response_ids for s in samples],
                                          pad_id)
    width = max(len(s.response_ids) for s in samples)
    positions = torch.zeros((len(samples), width), dtype=torch.long)
    response_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.bool)
    for i, s in enumerate(samples):
        n, start = len(s.response_ids), len(s.prompt_ids) - 1
        positions[i, :n] = torch.arange(start, start + n)
        response_ids[i, :n] = torch.tensor(s.response_ids, dtype=torch.long)
        mask[i, :n] = True
    return Episodes(input_ids, attention_mask, positions, response_ids, mask)


def response_logprobs(model, ep: Episodes, temperature: float = 1.0,
                      with_entropy: bool = False, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """(B, R) log π of each response token (and (B, R) entropy when asked), 0 on padding;
    the vocabulary's logits exist only ``chunk_tokens`` positions at a time."""
    out = token_logprobs(model, ep.input_ids, ep.attention_mask, ep.positions,
                         ep.response_ids, ep.mask, temperature=temperature,
                         with_entropy=with_entropy, chunk_tokens=chunk_tokens)
    return (out.logprobs, out.entropy) if with_entropy else out.logprobs


def by_micro_batch(fn: Callable[[Episodes], torch.Tensor], ep: Episodes,
                   micro_batch_size: int | None) -> torch.Tensor:
    """``fn`` over row slices of ``ep``, concatenated: a forward of B rows in pieces."""
    n = ep.input_ids.size(0)
    return torch.cat([fn(ep.select(torch.arange(n)[part]))
                      for part in micro_slices(n, micro_batch_size)])


class ValueModel(nn.Module):
    """V(s_t) for every response position: the reward model's backbone and head, per token.

    Initialised from the reward model (InstructGPT), bias included, so at the final token
    it starts out predicting the reward.
    """

    def __init__(self, reward_model: RewardModel):
        super().__init__()
        self.rm = reward_model

    def forward(self, input_ids, attention_mask, positions) -> torch.Tensor:
        hidden = self.rm.backbone(input_ids=input_ids, attention_mask=attention_mask
                                  ).last_hidden_state  # (B, L, H)
        index = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, R, H)
        return self.rm.score_hidden(hidden.gather(1, index))  # (B, R)


def scored_sequence(sample: Sample, stop_ids: Sequence[int], truncation: str) -> list[int]:
    """Prompt + response as the reward model reads it.

    A finished answer (it sampled a stop id) is closed by EOS as the RM was trained, if the
    engine did not return the stop id. A truncated one is closed the same way under
    ``penalty`` (the RM judges its content; ``truncation_adjustment`` then subtracts the
    penalty) and ``append_eos`` (scored as if finished), and scored as it stands, without
    EOS, under ``no_eos``.
    """
    ids = sample.prompt_ids + sample.response_ids
    ended = bool(sample.response_ids) and sample.response_ids[-1] in stop_ids
    if not ended and (sample.finished or truncation != "no_eos"):
        ids = ids + [stop_ids[0]]
    return ids


def truncation_adjustment(samples: Sequence[Sample], truncation: str, penalty: float
                          ) -> torch.Tensor:
    """(B,) −penalty for answers cut at max_new_tokens under ``truncation="penalty"``."""
    cut = [0.0 if s.finished or truncation != "penalty" else -penalty for s in samples]
    return torch.tensor(cut)


@torch.no_grad()
def reward_scores(reward_model: RewardModel, samples: Sequence[Sample], stop_ids: Sequence[int],
                  pad_id: int, device, truncation: str = "penalty",
                  truncation_penalty: float = 0.0) -> torch.Tensor:
    """(B,) normalised reward of each prompt + response, truncated answers handled as
    ``truncation`` says (``scored_sequence``, ``truncation_adjustment``)."""
    seqs = [scored_sequence(s, stop_ids, truncation) for s in samples]
    ids, mask = pad_batch(seqs, pad_id)
    hidden = reward_model.backbone(input_ids=ids.to(device), attention_mask=mask.to(device)
                                   ).last_hidden_state
    score = reward_model.score_hidden(last_token_hidden(hidden, mask.to(device)))  # (B,)
    return score + truncation_adjustment(samples, truncation, truncation_penalty).to(score)


class EMA:
    """Exponential moving average of a model's parameters: θ̄ ← d·θ̄ + (1 − d)·θ."""

    def __init__(self, model: nn.Module, decay: float):
        """Shadows the trainable parameters only (frozen ones equal their average; with
        LoRA that is the adapters, not the base)."""
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters()
                       if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k].to(p.dtype))


# -- one PPO iteration -----------------------------------------------------------------------

@dataclass
class Scored:
    """A rollout batch with everything the update needs; all (B, R) except ``score``."""

    ep: Episodes
    score: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    engine_gap: torch.Tensor  # (B, R) |log π_vLLM − log π_HF|, ≈ 0 when weights are in sync


def rollout(engine: RolloutEngine | None, accelerator: Accelerator, prompt_ids, cfg: PPOConfig,
            step: int) -> tuple[list[Sample], float]:
    """Main process samples; every process gets its shard. Returns (shard, tokens/s)."""
    payload: list[Any] = [None]
    if accelerator.is_main_process:
        assert engine is not None
        t0 = time.perf_counter()
        samples = engine.generate(prompt_ids, max_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, seed=cfg.seed + step * 100003)
        tokens = sum(len(s.response_ids) for s in samples)
        payload = [(samples, tokens / (time.perf_counter() - t0))]
    if accelerator.num_processes > 1:
        broadcast_object_list(payload, from_process=0)
    samples, tokens_per_s = payload[0]
    samples = [s if s.response_ids else Sample(s.prompt_ids, [0], [0.0], False)
               for s in samples]  # an empty response cannot be scored; never seen in practice
    return samples[accelerator.process_index::accelerator.num_processes], tokens_per_s


@torch.no_grad()
def _score_and_logprobs(samples, policy, ref, reward_model, cfg: PPOConfig, tokenizer,
                        stop_ids: Sequence[int], device):
    """Episodes, RM scores (B,), old and reference log-probs (B, R), engine gap (B, R)."""
    ep = pack_episodes(samples, tokenizer.pad_token_id).to(device)
    micro, chunk = cfg.micro_batch_size, cfg.logits_chunk_tokens
    score = torch.cat([reward_scores(reward_model, samples[part], stop_ids,
                                     tokenizer.pad_token_id, device, cfg.truncation,
                                     cfg.truncation_penalty)
                       for part in micro_slices(len(samples), micro)])  # (B,)
    old_logprobs = by_micro_batch(
        lambda e: response_logprobs(policy, e, cfg.temperature, chunk_tokens=chunk), ep, micro)
    ref_logprobs = by_micro_batch(
        lambda e: response_logprobs(ref, e, cfg.temperature, chunk_tokens=chunk), ep, micro)
    engine_lp = torch.zeros_like(old_logprobs)
    for i, s in enumerate(samples):
        engine_lp[i, :len(s.engine_logprobs)] = torch.tensor(s.engine_logprobs)
    gap = (engine_lp - old_logprobs).abs() * ep.mask
    return ep, score, old_logprobs, ref_logprobs, gap


@torch.no_grad()
def score_episodes(samples, policy, ref, value_model, reward_model, kl_coef: float,
                   cfg: PPOConfig, tokenizer, stop_ids: Sequence[int], device) -> Scored:
    """Reward, reference and old log-probs, values, then KL-penalised GAE advantages."""
    ep, score, old_logprobs, ref_logprobs, gap = _score_and_logprobs(
        samples, policy, ref, reward_model, cfg, tokenizer, stop_ids, device)
    old_values = by_micro_batch(
        lambda e: value_model(e.input_ids, e.attention_mask, e.positions), ep,
        cfg.micro_batch_size)
    beta = kl_coef if cfg.kl_penalty == "reward" else 0.0
    rewards = kl_penalized_rewards(score, old_logprobs, ref_logprobs, ep.mask, beta)
    advantages, returns = gae(rewards, old_values, ep.mask, gamma=1.0, lam=cfg.gae_lambda)
    return Scored(ep, score, old_logprobs, ref_logprobs, old_values,
                  whiten(advantages, ep.mask), returns, gap)


def group_advantages(scores: torch.Tensor, algorithm: str) -> torch.Tensor:
    """(G, k) sequence scores → (G, k) advantages of the critic-free algorithms."""
    if algorithm == "rloo":
        return rloo_advantages(scores)
    return grpo_advantages(scores, scale=algorithm == "grpo")


@torch.no_grad()
def score_groups(samples, policy, ref, reward_model, kl_coef: float, cfg: PPOConfig,
                 tokenizer, stop_ids: Sequence[int], device, accelerator) -> Scored:
    """Critic-free scoring: each prompt's ``samples_per_prompt`` answers are consecutive
    in the rollout, so after gathering every process's shard (strided) the (G, k) score
    matrix gives each answer its group baseline; the sequence advantage covers its tokens.
    With ``kl_penalty: reward`` the score is r − β · Σ_t (log π − log π_ref)."""
    ep, score, old_logprobs, ref_logprobs, gap = _score_and_logprobs(
        samples, policy, ref, reward_model, cfg, tokenizer, stop_ids, device)
    kl = ((old_logprobs - ref_logprobs) * ep.mask).sum(1)  # (B,)
    local = score - kl_coef * kl if cfg.kl_penalty == "reward" else score
    n, p = accelerator.num_processes, accelerator.process_index
    everyone = accelerator.gather(local) if n > 1 else local
    shard = local.size(0)
    ordered = torch.empty_like(everyone)  # back to rollout order: sample i is on i % n
    for q in range(n):
        ordered[q::n] = everyone[q * shard:(q + 1) * shard]
    adv = group_advantages(ordered.view(-1, cfg.samples_per_prompt), cfg.algorithm)
    advantages = adv.flatten()[p::n].unsqueeze(1) * ep.mask  # (B, R)
    zeros = torch.zeros_like(old_logprobs)
    return Scored(ep, score, old_logprobs, ref_logprobs, zeros, advantages, zeros, gap)


def update(batch: Scored, policy, value_model, optimizer, scheduler, ptx_iter, accelerator,
           cfg: PPOConfig) -> dict[str, float]:
    """``ppo_epochs`` passes of minibatch updates; returns the mean of each loss statistic."""
    stats: dict[str, list[float]] = {}
    n = batch.score.size(0)
    per_process = max(cfg.minibatch_size // accelerator.num_processes, 1)
    for _ in range(cfg.ppo_epochs):
        for rows in torch.randperm(n).split(per_process):
            for k, v in minibatch_step(batch, rows, policy, value_model, optimizer, ptx_iter,
                                       accelerator, cfg).items():
                stats.setdefault(k, []).append(v)
            scheduler.step()
    return {k: sum(v) / len(v) for k, v in stats.items()}


def minibatch_step(batch: Scored, rows, policy, value_model, optimizer, ptx_iter, accelerator,
                   cfg: PPOConfig) -> dict[str, float]:
    """One optimiser step: clipped policy + clipped value loss, then the ptx LM loss.

    The minibatch runs in micro-batches of ``micro_batch_size`` episodes (and ptx
    sequences), each backward weighted by its share of the minibatch's tokens, so the
    gradient equals the whole minibatch's while memory follows the micro-batch. Gradients
    are all-reduced once, on the last backward; the others run under ``no_sync``.
    """
    mask = batch.ep.mask[rows]
    tokens = mask.sum().clamp(min=1)
    parts = [rows[part] for part in micro_slices(len(rows), cfg.micro_batch_size)]
    ptx = None
    if ptx_iter is not None:
        ptx = {k: v.to(accelerator.device) for k, v in next(ptx_iter).items()}
        ptx_parts = micro_slices(ptx["input_ids"].size(0), cfg.micro_batch_size)
        ptx_tokens = max(int((ptx["labels"][:, 1:] != -100).sum()), 1)
    backwards = len(parts) + (len(ptx_parts) if ptx is not None else 0)
    sums = dict.fromkeys(("policy_loss", "value_loss", "clip_fraction", "approx_kl",
                          "entropy", "ptx_loss") + (("kl_loss",) if cfg.kl_penalty == "loss"
                                                    else ()), 0.0)

    def syncing(index: int, value_too: bool) -> contextlib.ExitStack:
        """``no_sync`` for each module unless this (0-based) backward is its last of the
        step. It must cover the forward too: DDP decides at forward time whether the
        backward all-reduces."""
        stack = contextlib.ExitStack()
        if index != backwards - 1:
            stack.enter_context(accelerator.no_sync(policy))
        if value_too and value_model is not None and index != len(parts) - 1:
            stack.enter_context(accelerator.no_sync(value_model))
        return stack

    for i, part in enumerate(parts):
        ep, m = batch.ep.select(part), batch.ep.mask[part]
        share = m.sum() / tokens  # masked means over the part, weighted to the minibatch's
        with syncing(i, value_too=True):
            logprobs, entropy = response_logprobs(policy, ep, cfg.temperature,
                                                  with_entropy=True,
                                                  chunk_tokens=cfg.logits_chunk_tokens)
            pl = ppo_policy_loss(logprobs, batch.old_logprobs[part], batch.advantages[part], m,
                                 cfg.clip_eps)
            loss, vl = pl.loss, torch.zeros(())
            if value_model is not None:
                values = value_model(ep.input_ids, ep.attention_mask, ep.positions)
                vl = value_loss(values, batch.old_values[part], batch.returns[part], m,
                                cfg.value_clip_eps)
                loss = loss + cfg.vf_coef * vl
            if cfg.kl_penalty == "loss":  # β · E_t[k3(π, π_ref)] (GRPO's KL term)
                kl_term = masked_mean(kl_k3(logprobs, batch.ref_logprobs[part]), m)
                loss = loss + cfg.kl_coef * kl_term
                sums["kl_loss"] += (share * kl_term).item()
            accelerator.backward(share * loss)
        for k, v in (("policy_loss", pl.loss), ("value_loss", vl),
                     ("clip_fraction", pl.clip_fraction), ("approx_kl", pl.approx_kl),
                     ("entropy", masked_mean(entropy, m))):
            sums[k] += (share * v).item()
    if ptx is not None:  # γ · mean LM loss over the ptx batch's labelled tokens
        for j, piece in enumerate(ptx_parts):
            with syncing(len(parts) + j, value_too=False):
                nll, _ = lm_loss_sum(policy, {k: v[piece] for k, v in ptx.items()},
                                     cfg.logits_chunk_tokens)
                lm = cfg.ptx_coef * nll / ptx_tokens
                accelerator.backward(lm)
            sums["ptx_loss"] += lm.item()
    accelerator.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    if value_model is not None:
        accelerator.clip_grad_norm_(value_model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    return sums


def rollout_stats(batch: Scored, accelerator: Accelerator) -> dict[str, float]:
    """Reward, KL to the reference, response length and critic quality over all processes."""
    mask = batch.ep.mask
    kl = ((batch.old_logprobs - batch.ref_logprobs) * mask).sum(1)  # (B,) nats per response
    per_seq = torch.stack([batch.score, kl, mask.sum(1).float(),
                           batch.engine_gap.sum(1) / mask.sum(1)], dim=1)  # (B, 4)
    score, kl, length, gap = accelerator.gather(per_seq).T
    return {"reward_mean": score.mean().item(), "reward_std": score.std().item(),
            "kl_to_ref": kl.mean().item(), "response_length": length.mean().item(),
            "engine_logprob_gap": gap.mean().item(),
            "explained_variance": explained_variance(batch.old_values, batch.returns,
                                                     mask).item()}


# -- held-out evaluation ---------------------------------------------------------------------

@torch.no_grad()
def evaluate(engine: RolloutEngine, prompts: list[str], prompt_ids, policy, ref,
             reward_model, tokenizer, stop_ids: Sequence[int], cfg: PPOConfig, device
             ) -> tuple[dict[str, float],
                                                                       list[dict]]:
    """Reward and KL of fresh samples on held-out prompts (fixed seeds), and the samples."""
    samples = engine.generate(prompt_ids, max_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, seed=cfg.seed)
    samples = [s if s.response_ids else Sample(s.prompt_ids, [0], [0.0], False)
               for s in samples]
    ep = pack_episodes(samples, tokenizer.pad_token_id).to(device)
    micro, chunk = cfg.micro_batch_size, cfg.logits_chunk_tokens
    score = torch.cat([reward_scores(reward_model, samples[part], stop_ids,
                                     tokenizer.pad_token_id, device, cfg.truncation,
                                     cfg.truncation_penalty)
                       for part in micro_slices(len(samples), micro)])
    kl = by_micro_batch(lambda e: (response_logprobs(policy, e, cfg.temperature,
                                                     chunk_tokens=chunk)
                                   - response_logprobs(ref, e, cfg.temperature,
                                                       chunk_tokens=chunk)).sum(1),
                        ep, micro)
    rows = [{"prompt": p, "response": tokenizer.decode(s.response_ids, skip_special_tokens=True),
             "reward": r} for p, s, r in zip(prompts, samples, score.tolist(), strict=True)]
    return {"reward": score.mean().item(), "kl_to_ref": kl.mean().item(),
            "response_length": ep.mask.sum(1).float().mean().item()}, rows


# -- the recipe ------------------------------------------------------------------------------

def resolve_reward(registry: Registry, version: str | None) -> str:
    """The reward version to optimise against: ``version`` or the accepted one (the newest
    that is not a judge and passed the RM quality gate, ``training.lineage``)."""
    if version is None:
        latest = accepted_reward(registry)
        if latest is None:
            raise RegistryError(f"registry {registry.root} has no reward model; run "
                                "`rlhf train reward` first")
        return latest.version
    if registry.get(version).kind != "reward":
        raise RegistryError(f"{version} is not a reward model")
    return version


def resolve_reference(registry: Registry, cfg: PPOConfig, base_path: Path,
                      base: str | None) -> tuple[Path, str]:
    """(checkpoint dir, name recorded as ``reference``) of the frozen KL reference.

    ``cfg.reference`` if set (a version or a directory); else the SFT version of the
    base's lineage (``training.lineage.reference_of``); a base given as a directory is
    its own reference.
    """
    if cfg.reference is not None:
        path, version = resolve_base(registry, cfg.reference)
        return path, version or str(path)
    if base is None:
        return base_path, str(base_path)
    version = reference_of(registry, base)
    return registry.path(version), version


VALUE_DIR = "value"
"""Sub-directory of a PPO version holding its value model (a reward-model checkpoint)."""


def value_start(registry: Registry, base: str | None, rm_version: str, warm: bool
                ) -> tuple[Path, str]:
    """(checkpoint, label) the value model starts from: the base PPO version's value model
    when it was trained against ``rm_version`` (and ``warm``), else the reward model
    itself (InstructGPT)."""
    if warm and base is not None:
        manifest = registry.get(base)
        saved = registry.path(base) / VALUE_DIR
        if manifest.config.get("reward_model") == rm_version and saved.is_dir():
            return saved, f"{base}/{VALUE_DIR}"
    return registry.path(rm_version), rm_version


def make_engine(path: Path, cfg: PPOConfig, accelerator: Accelerator) -> RolloutEngine | None:
    """The rollout engine, on the main process only (it broadcasts the samples)."""
    if not accelerator.is_main_process:
        return None
    return RolloutEngine(path, max_model_len=cfg.max_len, seed=cfg.seed,
                         max_num_seqs=max(cfg.batch_size, cfg.eval_max_prompts),
                         kv_cache_bytes=cfg.kv_cache_mib << 20,
                         gpu_memory_utilization=cfg.gpu_memory_utilization,
                         sync_bucket_mb=cfg.sync_bucket_mb or None,
                         weight_transfer=cfg.weight_transfer, sleep_mode=cfg.sleep_mode,
                         dtype=cfg.engine_dtype, enforce_eager=cfg.engine_eager)


def sync_engine(engine: RolloutEngine | None, policy, accelerator: Accelerator,
                cfg: PPOConfig) -> float:
    """Push the policy's current weights into the engine; seconds (0 off the main process).

    Full fine-tune: every tensor (bucketed). LoRA: only the engine modules the adapters
    touch, merged (W + ΔW); the frozen rest is already in the engine.
    """
    if cfg.lora is not None:
        if engine is None:
            return 0.0
        model = accelerator.unwrap_model(policy)
        changed = expand_to_modules(lora.changed_names(model), lora.checkpoint_names(model))
        return engine.sync_weights(lora.export_merged(model), changed=changed)
    state = accelerator.get_state_dict(policy)  # a collective under FSDP: every rank calls it
    return engine.sync_weights(state.items()) if engine is not None else 0.0


def shared_value_model(reward_model: RewardModel) -> ValueModel:
    """A value model on the reward model's frozen backbone (the same module, no copy) with
    a trainable copy of its head and bias: ``value_backbone: shared``."""
    rm = RewardModel(reward_model.backbone, bias=reward_model.bias.item())
    rm.head.load_state_dict(reward_model.head.state_dict())
    rm.head.requires_grad_(True)
    return ValueModel(rm)


def train(cfg: PPOConfig, *, store, registry: Registry, kafka: KafkaSettings | None = None,
          on_step: Callable[[dict[str, float]], None] | None = None) -> Manifest:
    """PPO-ptx from the base policy against a reward model, KL-anchored to the lineage's
    SFT version; returns the candidate version (``PPORecipe``)."""
    return PPORecipe(cfg, store=store, registry=registry, kafka=kafka, on_step=on_step).run()


class PPORecipe:
    """One PPO run as steps that read top to bottom, as torchtune's recipes do.

    ``run`` = ``load_data`` → ``load_models`` → ``start_engine`` → ``restore`` (a resumed
    run) or ``evaluate`` the parent → for each iteration ``iteration``: ``rollout`` →
    ``score`` → ``update`` (PPO + value + ptx, micro-batched) → ``sync`` the engine →
    ``log`` → ``evaluate`` / ``save_checkpoint`` when due → ``finish`` (EMA, final eval) →
    ``publish``. The tensor work of each step is a module-level function (``rollout``,
    ``score_episodes``, ``update``, ``minibatch_step``, ``evaluate``) with its own tests.
    """

    def __init__(self, cfg: PPOConfig, *, store, registry: Registry,
                 kafka: KafkaSettings | None = None,
                 on_step: Callable[[dict[str, float]], None] | None = None):
        self.t0 = time.monotonic()
        self.cfg, self.store, self.registry, self.kafka, self.on_step = (
            cfg, store, registry, kafka, on_step)
        self.accelerator = make_accelerator(cfg)
        self.device = self.accelerator.device
        if cfg.batch_size % self.accelerator.num_processes:
            raise ValueError(f"batch_size {cfg.batch_size} must divide over "
                             f"{self.accelerator.num_processes} processes")
        if cfg.lora is not None and cfg.fsdp:
            raise ValueError("lora with fsdp is not supported; set one of them")
        self.ckpt = Checkpointer(registry, "ppo", cfg, self.accelerator)
        self.steps = math.ceil(cfg.episodes / cfg.batch_size)
        self.steps = min(self.steps, cfg.max_steps) if cfg.max_steps else self.steps
        self.staging = Path(tempfile.mkdtemp(prefix="rlhf-ppo-"))
        self.metrics = MetricsLog(self.staging / "metrics.jsonl", enabled=False)
        self.samples_log: dict[str, list[dict]] = {}
        self.sync_s: list[float] = []
        self.rng = random.Random(cfg.seed)  # draws each iteration's prompts
        self.ptx_drawn = 0  # ptx batches taken so far (a resumed run skips as many)

    def run(self) -> Manifest:
        self.load_data()
        self.load_models()
        self.start_engine()
        start = self.restore()
        if start == 0:
            self.evaluate(0, "parent")  # the parent's held-out score to beat
        bar = tqdm(total=self.steps, initial=start, desc="ppo",
                   disable=not (self.cfg.progress and self.accelerator.is_main_process))
        t_train = time.monotonic()
        for step in range(start + 1, self.steps + 1):
            stats = self.iteration(step)
            bar.update()
            bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl_to_ref']:.3f}")
        bar.close()
        train_s = time.monotonic() - t_train
        self.finish()
        return self.publish(train_s)

    # -- 1. data: a snapshot of the store, prompts of real traffic, ptx text -----------------

    def load_data(self) -> None:
        """Snapshot the store (a resumed run: the interrupted run's marks); the parent, its
        lineage's reference and the reward model; prompts up to the prompt mark; ptx data."""
        cfg, store, registry, acc = self.cfg, self.store, self.registry, self.accelerator
        saved = self.ckpt.progress
        self.snap = snapshot(store, self.ckpt.data_mark)
        self.prompt_mark = store.completion_mark() if saved is None else saved["prompt_mark"]
        self.parent_path, self.parent = resolve_base(registry, cfg.base)
        self.ref_path, self.reference = resolve_reference(registry, cfg, self.parent_path,
                                                          self.parent)
        self.rm_version = (resolve_reward(registry, cfg.reward_model) if saved is None
                           else saved["reward_model"])  # the interrupted run's
        self.tokenizer = AutoTokenizer.from_pretrained(self.parent_path)
        self.stop_ids = stop_token_ids(self.parent_path, self.tokenizer)
        prompts, self.prompt_source = load_prompts(store, cfg, self.prompt_mark)
        self.train_prompts, eval_prompts = split_by_prompt(prompts, lambda p: p,
                                                           cfg.eval_fraction, cfg.seed)
        self.eval_prompts = eval_prompts[:cfg.eval_max_prompts]
        self.max_prompt_len = cfg.max_len - cfg.max_new_tokens
        self.eval_ids = [encode_prompt(self.tokenizer, p, self.max_prompt_len)
                         for p in self.eval_prompts]
        ptx_examples, self.ptx_source = load_ptx(cfg, store, self.snap.data_mark,
                                                 self.tokenizer)
        self.per_process = max(cfg.minibatch_size // acc.num_processes, 1)
        self.ptx_iter = ptx_batches(
            ptx_examples, max(round(cfg.ptx_ratio * self.per_process), 1),
            self.tokenizer.pad_token_id, cfg.seed + acc.process_index) if ptx_examples else None

    # -- 2. models: policy, reference, reward, value; optimiser --------------------------------

    def load_models(self) -> None:
        """The policy (trained, fp32), the frozen reference (the lineage's SFT version) and
        reward model (``frozen_dtype``), the value model; one optimiser, constant LR. With
        LoRA the policy is the parent plus adapters and, when the reference is the parent
        itself, the reference is that same module with its adapters disabled."""
        cfg, acc, device = self.cfg, self.accelerator, self.device
        policy = AutoModelForCausalLM.from_pretrained(self.parent_path, dtype=torch.float32)
        enable_gradient_checkpointing(policy, cfg)
        shared_ref = (cfg.lora is not None
                      and Path(self.ref_path).resolve() == Path(self.parent_path).resolve())
        if cfg.lora is not None:
            policy = lora.wrap(policy, cfg.lora)
        ref = None
        if not shared_ref:
            ref = AutoModelForCausalLM.from_pretrained(self.ref_path, dtype=frozen_dtype(cfg)
                                                       ).to(device).eval().requires_grad_(False)
            if ref.config.vocab_size != policy.config.vocab_size:
                raise ValueError(f"reference {self.reference} and {self.parent} do not share "
                                 "a vocabulary")
        self.reward_model = RewardModel.from_pretrained(
            self.registry.path(self.rm_version), frozen_dtype(cfg)
        ).to(device).eval().requires_grad_(False)
        if self.reward_model.backbone.config.vocab_size != policy.config.vocab_size:
            raise ValueError(f"{self.rm_version} and {self.parent} do not share a vocabulary")
        value_model: nn.Module | None = None  # critic-free algorithms have none
        self.value_init: str | None = None
        if not cfg.critic_free:
            value_path, self.value_init = value_start(self.registry, self.parent,
                                                      self.rm_version, cfg.value_warm_start)
            if cfg.value_backbone == "shared":
                value_model = shared_value_model(self.reward_model)
                self.value_init = self.rm_version
            else:
                value_model = ValueModel(RewardModel.from_pretrained(value_path))
                enable_gradient_checkpointing(value_model.rm.backbone, cfg)
        counts = [lora.trainable_count(m) for m in (policy, value_model) if m is not None]
        self.trainable, self.total = (sum(c) for c in zip(*counts, strict=True))
        groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr}]
        if value_model is not None:
            groups.append({"params": [p for p in value_model.parameters() if p.requires_grad],
                           "lr": cfg.value_lr or cfg.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        # accelerate steps a prepared scheduler once per process per call
        # (split_batches=False), so its warm-up is counted in process-steps.
        scheduler = get_constant_schedule_with_warmup(
            optimizer, cfg.warmup_steps * acc.num_processes)
        self.value_model = None
        if value_model is None:
            self.policy, self.optimizer, self.scheduler = acc.prepare(
                policy, optimizer, scheduler)
        else:
            self.policy, self.value_model, self.optimizer, self.scheduler = acc.prepare(
                policy, value_model, optimizer, scheduler)
        self.ref = ref if ref is not None else lora.AdaptersDisabled(
            acc.unwrap_model(self.policy))
        if cfg.offload_frozen and device.type == "cuda":
            from accelerate import cpu_offload

            if ref is not None:
                cpu_offload(ref.cpu(), execution_device=device)
            cpu_offload(self.reward_model.backbone.cpu(), execution_device=device)
        self.ema = EMA(acc.unwrap_model(self.policy), cfg.ema_decay) if cfg.ema_decay else None
        self.kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                       if cfg.kl_target else FixedKLController(cfg.kl_coef))

    # -- 3. the rollout engine (vLLM, the server's engine class) on the parent's weights -----

    def start_engine(self) -> None:
        self.engine = make_engine(self.parent_path, self.cfg, self.accelerator)

    def evaluate(self, step: int, name: str) -> None:
        """Reward and KL of seeded samples on the held-out prompts, logged as ``eval``."""
        if self.engine is None or not self.eval_prompts:
            return
        result, rows = evaluate(self.engine, self.eval_prompts, self.eval_ids,
                                self.accelerator.unwrap_model(self.policy), self.ref,
                                self.reward_model, self.tokenizer, self.stop_ids, self.cfg,
                                self.device)
        self.metrics.log(step, "eval", **result)
        self.samples_log[name] = rows

    # -- checkpoint and resume -------------------------------------------------------------

    def restore(self) -> int:
        """Load an interrupted run's state (weights, optimiser, RNG, β, the prompt and ptx
        draws so far, EMA), put the restored weights into the engine; the step to start
        after (0 = a fresh run)."""
        resumed = self.ckpt.restore()
        if resumed is None:
            return 0
        self.kl_ctl.value = resumed["kl_coef"]
        self.rng.setstate(_as_state(resumed["prompt_rng"]))
        self.ptx_drawn = resumed["ptx_batches"]
        for _ in range(self.ptx_drawn):
            next(self.ptx_iter)  # type: ignore[arg-type]
        self.metrics.records[:] = resumed["records"]
        self.samples_log.update(resumed["samples"])
        self.sync_s = resumed["sync_s"]
        if self.ema is not None:
            self.ema.shadow = load_file(self.ckpt.state / "ema.safetensors")
        sync_engine(self.engine, self.policy, self.accelerator, self.cfg)
        return int(resumed["step"])

    def save_checkpoint(self, step: int) -> None:
        ckpt, main = self.ckpt, self.accelerator.is_main_process
        if self.ema is not None and main:
            ckpt.dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.ema.shadow.items()},
                      ckpt.dir / "ema.safetensors")
        ckpt.save(step, data_mark=self.snap.data_mark, prompt_mark=self.prompt_mark,
                  reward_model=self.rm_version,
                  kl_coef=self.kl_ctl.value, prompt_rng=self.rng.getstate(),
                  ptx_batches=self.ptx_drawn, records=self.metrics.records,
                  samples=self.samples_log, sync_s=self.sync_s)
        if self.ema is not None and main:
            os.replace(ckpt.dir / "ema.safetensors", ckpt.state / "ema.safetensors")

    # -- 4. one PPO iteration ------------------------------------------------------------------

    def iteration(self, step: int) -> dict[str, float]:
        """Sample, score, advantages, update, sync the engine, adapt β; returns the rollout
        statistics."""
        cfg, acc, engine = self.cfg, self.accelerator, self.engine
        # PPO: batch_size prompts; critic-free: batch_size answers, k per prompt, in a row
        k = cfg.samples_per_prompt if cfg.critic_free else 1
        batch_prompts = [p for _ in range(cfg.batch_size // k)
                         for p in [self.rng.choice(self.train_prompts)] * k]
        prompt_ids = [encode_prompt(self.tokenizer, p, self.max_prompt_len)
                      for p in batch_prompts]
        clock = [time.perf_counter()]
        # 4a. Generate the trajectories on vLLM.
        samples, tokens_per_s = rollout(engine, acc, prompt_ids, cfg, step)
        if engine is not None and cfg.sleep_mode:
            engine.sleep(1)  # free its GPU memory for scoring and the update
        clock.append(time.perf_counter())
        # 4b. Score them: reward at the last token − β per-token KL; GAE advantages (PPO)
        #     or each answer against its prompt's other answers (critic-free).
        self.policy.eval()
        if cfg.critic_free:
            batch = score_groups(samples, self.policy, self.ref, self.reward_model,
                                 self.kl_ctl.value, cfg, self.tokenizer, self.stop_ids,
                                 self.device, acc)
        else:
            batch = score_episodes(samples, self.policy, self.ref, self.value_model,
                                   self.reward_model, self.kl_ctl.value, cfg, self.tokenizer,
                                   self.stop_ids, self.device)
        self.policy.train()
        clock.append(time.perf_counter())
        # 4c. Clipped PPO + clipped value + ptx updates over (micro-batched) minibatches.
        losses = update(batch, self.policy, self.value_model, self.optimizer, self.scheduler,
                        self.ptx_iter, acc, cfg)
        if self.ptx_iter is not None:
            self.ptx_drawn += math.ceil(batch.score.size(0) / self.per_process) * cfg.ppo_epochs
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self.policy))
        clock.append(time.perf_counter())
        # 4d. Load the new weights into the running engine, in place.
        if engine is not None and cfg.sleep_mode:
            engine.wake_up()
        self.sync_s.append(sync_engine(engine, self.policy, acc, cfg))
        # 4e. Log, adapt β, evaluate and checkpoint when due.
        stats = rollout_stats(batch, acc)
        record = {**stats, **losses, "kl_coef": self.kl_ctl.value,
                  "rollout_tokens_per_s": tokens_per_s, "weight_sync_s": self.sync_s[-1],
                  "weight_sync_mb": (engine.last_sync.get("bytes", 0) / 2**20
                                     if engine is not None else 0.0),
                  "rollout_s": clock[1] - clock[0], "score_s": clock[2] - clock[1],
                  "update_s": clock[3] - clock[2]}
        self.kl_ctl.update(stats["kl_to_ref"], cfg.batch_size)
        self.metrics.log(step, "train", **record)
        if self.on_step is not None and acc.is_main_process:
            self.on_step(record)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < self.steps:
            self.evaluate(step, f"step_{step}")
        if self.ckpt.due(step) and step < self.steps:
            self.save_checkpoint(step)
        return stats

    # -- 5. the published weights: the EMA if configured, evaluated on held-out prompts ------

    def finish(self) -> None:
        if self.ema is not None:
            self.ema.copy_to(self.accelerator.unwrap_model(self.policy))
            sync_engine(self.engine, self.policy, self.accelerator, self.cfg)
        self.evaluate(self.steps, "candidate")
        if self.engine is not None:
            self.engine.shutdown()

    # -- 6. save, register and announce the candidate ------------------------------------------

    def publish(self, train_s: float) -> Manifest:
        """Save the policy with its tokenizer and value model, register it and announce the
        candidate. LoRA: the adapters are folded in, so the version is an ordinary full
        checkpoint."""
        cfg, acc, staging = self.cfg, self.accelerator, self.staging
        saved = (lora.merge(acc.unwrap_model(self.policy)) if cfg.lora is not None
                 else self.policy)
        if not save_model(acc, saved, staging):
            return shared_result(acc, self.registry, None, "policy", staging)
        self.tokenizer.save_pretrained(staging)
        if not cfg.fsdp and self.value_model is not None:
            acc.unwrap_model(self.value_model).rm.save_pretrained(staging / VALUE_DIR)
        (staging / "eval_samples.json").write_text(json.dumps(self.samples_log, indent=1))
        final = final_metrics(self.metrics, self.sync_s, steps=self.steps,
                              reward_model=self.rm_version, prompt_source=self.prompt_source,
                              ptx_source=self.ptx_source, prompt_mark=self.prompt_mark,
                              value_init=self.value_init,
                              train_prompts=len(self.train_prompts),
                              eval_prompts=len(self.eval_prompts),
                              trainable_params=self.trainable, total_params=self.total)
        manifest = publish(
            self.registry, "policy", staging, parent=self.parent, snap=self.snap,
            config={"recipe": "ppo", **cfg.model_dump(mode="json"),
                    "reward_model": self.rm_version, "reference": self.reference,
                    "prompt_mark": self.prompt_mark},
            metrics=final, timing={"train_s": train_s, "total_s": time.monotonic() - self.t0},
            records=self.metrics.records,
            plot_keys=["reward_mean", "kl_to_ref", "entropy", "value_loss", "clip_fraction",
                       "weight_sync_s"], kafka=self.kafka)
        self.ckpt.finish()
        return shared_result(acc, self.registry, manifest, "policy", staging)


def _as_state(saved: list) -> tuple:
    """``random.Random.getstate()`` back from its JSON form (lists for tuples)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def final_metrics(metrics: MetricsLog, sync_s: list[float], **extra: Any) -> dict[str, Any]:
    """The manifest's metrics: held-out reward and KL before and after, and run totals."""
    evals = [r for r in metrics.records if r["split"] == "eval"]
    last_train = metrics.last("train")
    out: dict[str, Any] = {
        "train_reward_mean": last_train.get("reward_mean"),
        "train_kl_to_ref": last_train.get("kl_to_ref"),
        "weight_sync_s_mean": sum(sync_s) / max(len(sync_s), 1),
        "rollout_tokens_per_s": last_train.get("rollout_tokens_per_s"), **extra}
    if evals:
        out.update(eval_reward_parent=evals[0]["reward"], eval_reward=evals[-1]["reward"],
                   kl_to_ref=evals[-1]["kl_to_ref"],
                   eval_response_length=evals[-1]["response_length"])
    return out
