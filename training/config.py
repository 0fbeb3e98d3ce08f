"""Recipe configs: YAML files validated into pydantic models, with dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

CONFIG_DIR = Path(__file__).parent / "configs"
"""The paper's values (a real model); ``DEMO_CONFIG_DIR`` holds the tiny model's."""
DEMO_CONFIG_DIR = CONFIG_DIR / "demo"
C = TypeVar("C", bound=BaseModel)


class RunConfig(BaseModel):
    """Fields every recipe shares."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = Field(
        None, description="Start from this registry version or checkpoint path; "
                          "default: the live policy, else the newest policy.")
    seed: int = Field(0, description="Seed of data splits, shuffling and initialisation.")
    max_len: int = Field(512, ge=8, description="Most tokens of prompt + response.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: int = Field(1, ge=1, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many updates.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Prompts held out for eval.")
    eval_every: int = Field(0, ge=0, description="Eval every N updates; 0 = each epoch.")
    gate_holdout_share: float = Field(
        0.1, ge=0, lt=1, description="Share of prompts (hash of the normalised text) kept for "
                                     "the deploy gates: no recipe (SFT, reward, PPO) trains "
                                     "on them; must equal RLHF_GATES__HOLDOUT_SHARE.")
    grad_clip: float = Field(1.0, gt=0, description="Max gradient norm.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Rows per forward/backward (episodes, sequences, ranked "
                                "groups); gradients accumulate over a batch's micro-batches, "
                                "weighted so the update equals the whole batch's. Memory "
                                "follows this, not the batch. None = the whole batch at once.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute the trained models' activations in the backward pass "
                           "(transformers' gradient checkpointing): less memory, ~30 % slower.")
    logits_chunk_tokens: int = Field(
        256, ge=0, description="Positions whose vocabulary logits exist at once when "
                                "computing log-probs and LM losses (training.logprobs); "
                                "0 = the full (B, T, V) logits.")
    frozen_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="dtype of the frozen models (PPO's reference and reward model; "
                            "the reward model scoring SFT epochs): `auto` = the "
                            "checkpoint's own dtype. The trained models stay fp32.")
    mixed_precision: str = Field("no", description="accelerate mixed precision: no|bf16|fp16.")
    cpu: bool | None = Field(
        None, description="Train on CPU processes (gloo); None = when no GPU is visible.")
    fsdp: bool = Field(False, description="Shard with FSDP instead of DDP (large models).")
    progress: bool = Field(True, description="Show tqdm progress bars.")
    checkpoint_every: int = Field(
        0, ge=0, description="Save a resumable state (weights, optimiser, scheduler, RNG, data "
                             "position) every N updates under <registry>/checkpoints/; "
                             "0 = never (training.checkpoint).")
    resume: bool = Field(
        False, description="Continue from the saved state of the same recipe and config, if "
                           "one exists (`rlhf train <recipe> --resume`).")


class LoraSettings(BaseModel):
    """LoRA adapters (peft) instead of a full fine-tune: ``lora: {r, alpha, target_modules}``.

    Only the adapters train; the frozen base doubles as the KL reference (adapters
    disabled), and after training the adapters are merged into a full checkpoint, so the
    registry, the serving swap and the gates see an ordinary model.
    """

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (the update is scaled by alpha/r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1, description="Module names (suffixes) that get adapters.")


def deep_update(base: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` overrides ``base["a"]["b"]``."""
    out = dict(base)
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(cls: type[C], path: Path | None, default_name: str,
                overrides: dict[str, Any] | None = None) -> C:
    """Read ``path`` (or the packaged ``configs/<default_name>``) into ``cls``."""
    path = Path(path) if path else CONFIG_DIR / default_name
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    return cls.model_validate(deep_update(data, overrides or {}))
