"""LoRA through peft: adapters on the policy / reward backbone, merged for the engine.

Why: a full fine-tune holds the trained weights, their gradients and two AdamW moments
(4× the model) plus a frozen reference copy. With adapters, the base is frozen and
shared: the reference is the same module with its adapters disabled, gradients and
optimiser state exist only for the adapters (well under 1% of the weights at r = 16), and
each weight sync sends only the modules the adapters touch (merged: W + (α/r)·B·A).

Contract: ``wrap`` returns a peft model whose only trainable parameters are the adapters;
``export_merged`` yields checkpoint-named tensors (the base model's names) with LoRA
modules merged, lazily; ``changed_names`` names the tensors an adapter step can move;
``merge`` folds the adapters in and returns the plain model for saving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from training.config import LoraSettings

PEFT_PREFIX = "base_model.model."


def wrap(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """``model`` with LoRA adapters on ``settings.target_modules``; the base frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    return get_peft_model(model, config)


def _lora_modules(peft_model: nn.Module) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            yield name.removeprefix(PEFT_PREFIX), module


def changed_names(peft_model: nn.Module) -> set[str]:
    """Checkpoint names of the weights an adapter update moves (the LoRA-wrapped ones)."""
    return {f"{name}.weight" for name, _ in _lora_modules(peft_model)}


def checkpoint_names(peft_model: nn.Module) -> list[str]:
    """The base model's state-dict names, in ``export_merged`` order."""
    return [name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
            for name in peft_model.state_dict() if "lora_" not in name]


@torch.no_grad()
def export_merged(peft_model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) for every weight of the base model, LoRA modules merged.

    Merged tensors are computed when the pair is read, so a consumer that skips a name
    never pays for it; unmerged tensors are the live parameters (no copy).
    """
    lora = dict(_lora_modules(peft_model))
    for name, tensor in peft_model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
        module = lora.get(key.rpartition(".")[0])
        if module is not None and key.endswith(".weight"):
            delta = sum((module.get_delta_weight(a) for a in module.active_adapters
                         if a in module.lora_A), torch.zeros_like(tensor))
            yield key, tensor + delta.to(tensor.dtype)
        else:
            yield key, tensor


def merge(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; the plain transformers model."""
    return peft_model.merge_and_unload()  # type: ignore[operator]


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


class AdaptersDisabled(nn.Module):
    """The frozen base of a peft model as a module: the KL reference without a copy.

    ``forward`` runs the shared weights with every adapter switched off, so it equals the
    model the adapters were added to. Holds no parameters of its own (the peft model is
    kept out of ``parameters()`` so optimisers and ``.to`` never see it twice).
    """

    _peft: Any

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.__dict__["_peft"] = peft_model  # not a registered submodule

    @property
    def config(self):
        return self._peft.config

    def forward(self, *args, **kwargs):
        ctx: AbstractContextManager = self._peft.disable_adapter()
        with ctx:
            return self._peft(*args, **kwargs)
