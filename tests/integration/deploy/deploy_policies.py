"""Policies built to pass or fail particular gates, from the tiny base model.

A random tiny Llama has no useful behaviour, so the test policies are steered by hand:
hidden dimension 0 of the residual stream is made a constant (every token embedding
carries ``LEVER`` there, and no layer writes to it), so after the final norm it is a
positive constant at every position. The LM head's column 0 then adds a fixed logit
boost to chosen tokens, and nothing else changes. The *live* policy has column 0 at zero;
a candidate boosts the marker word (the reward model's hidden rule: higher reward), or
EOS (much shorter answers: length drift), or ``HACK`` (a word only a flawed reward model
rewards: reward hacking), by ``strength``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.registry import Registry
from training.synthetic import MARKER

LEVER = 0.1
HACK = "farm"
"""A word absent from the corpus, one token with its leading space in the tiny vocabulary."""


def marker_token_ids(tokenizer, word: str = MARKER) -> list[int]:
    """Ids of ``word``'s single-token spellings (with and without a space)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (word, " " + word)]
    return sorted({i[0] for i in ids if len(i) == 1})


def steered_policy(base: Path, out: Path, boost: dict[int, float]) -> Path:
    """Write the base model with the constant dimension and ``boost`` (token → strength)."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = LEVER
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        for token, strength in boost.items():
            model.lm_head.weight[token, 0] = strength
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def add_policy(registry: Registry, base: Path, work: Path, name: str, parent: str,
               boost: dict[int, float], config: dict | None = None) -> str:
    """Register a steered policy as the next version; returns its id. ``config`` joins
    the manifest's config (e.g. ``recipe``/``reference``/``reward_model`` of a PPO result)."""
    src = steered_policy(base, work / name, boost)
    return registry.create_version("policy", src, {
        "parent": parent, "config": {"test_policy": name, **(config or {})}}).version
