"""Plumbing every recipe shares: where to start from, the data snapshot, the accelerator,
and publishing the result as a registry version (plot, manifest, candidate event)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin, set_seed

from core.registry import Kind, Manifest, Registry, RegistryError, parse_version
from core.settings import KafkaSettings
from training.config import RunConfig
from training.metrics import plot_curves

log = logging.getLogger(__name__)


def resolve_base(registry: Registry, base: str | None) -> tuple[Path, str | None]:
    """(checkpoint dir, registry version or None) to start from.

    ``base`` is a version id, a checkpoint directory, or None for the live policy (else
    the newest policy version).
    """
    if base is None:
        latest = registry.latest("policy")
        base = registry.live_policy() or (latest.version if latest else None)
        if base is None:
            raise RegistryError(f"registry {registry.root} has no policy; pass --base PATH "
                                "or register a base model first")
    try:
        parse_version(base)
    except RegistryError:
        if Path(base).is_dir():
            return Path(base), None
        raise RegistryError(f"--base {base!r} is neither a version id nor a directory") from None
    return registry.path(base), base


@dataclass(frozen=True)
class Snapshot:
    """The slice of the feedback store a run trains on."""

    data_mark: int
    row_counts: dict[str, int] = field(default_factory=dict)


def snapshot(store, mark: int | None = None) -> Snapshot:
    """Freeze the store's high-water mark so every read below sees the same data; ``mark``:
    an earlier one (a resumed run reads what the interrupted run read)."""
    mark = store.high_water_mark() if mark is None else mark
    return Snapshot(mark, store.counts(until=mark))


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """One process, DDP or FSDP, depending on how the script was launched and ``cfg``."""
    set_seed(cfg.seed)
    # FULL_SHARD; the full state dict is gathered for saving (save_model)
    plugin = FullyShardedDataParallelPlugin(
        reshard_after_forward="FULL_SHARD", state_dict_type="FULL_STATE_DICT") if cfg.fsdp else None
    cpu = cfg.cpu if cfg.cpu is not None else not torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, fsdp_plugin=plugin)


FROZEN_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}


def frozen_dtype(cfg: RunConfig) -> torch.dtype | str:
    """The ``dtype`` argument of ``from_pretrained`` for models that never train."""
    return FROZEN_DTYPES[cfg.frozen_dtype]


def enable_gradient_checkpointing(model: torch.nn.Module, cfg: RunConfig) -> bool:
    """transformers' activation checkpointing (non-reentrant, so frozen inputs and peft
    adapters work) on ``model`` when ``cfg.gradient_checkpointing``; True if enabled."""
    if not cfg.gradient_checkpointing:
        return False
    model.gradient_checkpointing_enable(  # type: ignore[operator]
        gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


def cosine_optimizer(model: torch.nn.Module, cfg: Any, examples: int, per_step: int,
                     num_processes: int = 1):
    """AdamW with cosine decay to ``cfg.min_lr_ratio`` and no warm-up (InstructGPT's SFT and
    RM schedule); returns (optimizer, scheduler, steps) for ``cfg.epochs`` over ``examples``
    taken ``per_step`` (global) at a time, capped by ``cfg.max_steps``.

    With accelerate's default ``split_batches=False`` a prepared scheduler advances
    ``num_processes`` times per ``step()`` call, so the schedule is laid out over
    ``steps × num_processes`` scheduler steps: every process then follows the one-process
    schedule, reaching the floor at the last update.
    """
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(examples / per_step)
    steps = min(steps, cfg.max_steps) if cfg.max_steps else steps
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=0, num_training_steps=steps * num_processes,
        min_lr_rate=cfg.min_lr_ratio)
    return optimizer, scheduler, steps


def save_model(accelerator: Accelerator, model: torch.nn.Module, staging: Path) -> bool:
    """Write the (unwrapped, gathered) weights as safetensors; True on the main process."""
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).save_pretrained(
        staging, safe_serialization=True, is_main_process=accelerator.is_main_process,
        save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
    return accelerator.is_main_process


def publish(registry: Registry, kind: Kind, staging: Path, *, parent: str | None,
            snap: Snapshot, config: dict[str, Any], metrics: dict[str, Any],
            timing: dict[str, float], records: list[dict[str, Any]], plot_keys: list[str],
            kafka: KafkaSettings | None) -> Manifest:
    """Plot the run into ``staging``, register it as a new version, announce it."""
    (staging / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_curves(records, plot_keys, staging / "curves.png", f"{kind} training")
    try:
        manifest = registry.create_version(kind, staging, {
            "parent": parent, "data_mark": snap.data_mark, "row_counts": snap.row_counts,
            "config": config, "metrics": metrics, "timing": timing})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("registered %s (parent %s, data mark %d)", manifest.version, parent,
             snap.data_mark)
    if kafka is not None:
        from training.announce import announce

        announce(kafka, manifest.version, kind)
    return manifest


def shared_result(accelerator: Accelerator, registry: Registry, manifest: Manifest | None,
                  kind: Kind, staging: Path) -> Manifest:
    """Every process returns the version the main process published."""
    accelerator.wait_for_everyone()
    shutil.rmtree(staging, ignore_errors=True)
    result = manifest or registry.latest(kind)
    assert result is not None
    return result
