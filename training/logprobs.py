"""Log-probabilities of chosen tokens without materialising (B, T, V) logits.

A causal LM's forward ends in ``lm_head``: (B, T, H) hidden states → (B, T, V) logits. With
a real vocabulary (Qwen: V = 151,936) that tensor dominates training memory: 8 × 128 tokens
of fp32 logits are 594 MiB, and the log-softmax and its gradient hold two more copies. The
losses only need the log-probability of one token per position (and, for PPO's statistics,
the entropy), at a few positions (a response, labelled tokens).

``token_logprobs`` runs the model's ordinary forward (so DDP, FSDP, peft and gradient
checkpointing wrap it as usual) with ``lm_head`` replaced, for that one call, by a head that
gathers the wanted positions' hidden states and computes log-softmax over the vocabulary in
chunks of ``chunk_tokens`` positions (256 by default). Under autograd each chunk is checkpointed
(``torch.utils.checkpoint``): only its (n, H) hidden states are kept, and its (n, V) logits
are recomputed in the backward pass. Peak memory from the head is then chunk × V floats,
whatever the batch and sequence length.

Written here because neither transformers nor accelerate exposes a per-position chunked
log-prob (Liger kernels and torchtune's chunked cross-entropy do the same for CE on GPUs).
Models whose logits are post-processed after ``lm_head`` (final-logit soft-capping, logit
scaling) fall back to the full logits, with the same results.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_TOKENS = 256
"""With Qwen's vocabulary a chunk's fp32 logits, log-softmax and gradient are ~3 × 256 ×
151,936 × 4 B ≈ 470 MB (1024: 1.9 GB, measured in benchmarks/memory.py)."""


class TokenLogprobs(NamedTuple):
    logprobs: torch.Tensor  # (B, R) fp32 log π(target | prefix); 0 where mask is false
    entropy: torch.Tensor | None  # (B, R) fp32 entropy of π at each position, when asked


def output_layer(model: nn.Module) -> nn.Module:
    """The ``lm_head`` of ``model`` through DDP/FSDP (``.module``), accelerate, peft and the
    LoRA reference wrapper (``AdaptersDisabled``)."""
    seen: Any = model
    for _ in range(8):
        peft = seen.__dict__.get("_peft")
        if peft is not None:
            seen = peft
        elif isinstance(getattr(seen, "module", None), nn.Module):
            seen = seen.module
        else:
            break
    head = seen.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(seen).__name__} has no output embeddings (lm_head)")
    return head


def _post_processed(model: nn.Module) -> bool:
    """Whether the model changes logits after ``lm_head`` (then chunking would differ)."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "final_logit_softcapping", None)
                or getattr(config, "logit_scale", None) not in (None, 1, 1.0))


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor, temperature: float, with_entropy: bool
                    ) -> torch.Tensor:
    """(n, H) hidden → (n,) log π(target) or (n, 2) with the entropy; fp32 softmax."""
    logits = F.linear(hidden, weight, bias).float() / temperature  # (n, V)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return torch.stack([logp, entropy], dim=-1)


def _selected(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              positions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              temperature: float, with_entropy: bool, chunk_tokens: int) -> torch.Tensor:
    """(B, L, H) hidden states → (B, R) or (B, R, 2), computed chunk by chunk."""
    rows, cols = mask.nonzero(as_tuple=True)
    picked = hidden[rows, positions[rows, cols]]  # (N, H): only the wanted positions
    wanted = targets[rows, cols]
    outs = []
    for start in range(0, picked.size(0), chunk_tokens):
        args = (picked[start:start + chunk_tokens], weight, bias,
                wanted[start:start + chunk_tokens], temperature, with_entropy)
        if torch.is_grad_enabled() and (picked.requires_grad or weight.requires_grad):
            outs.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            outs.append(_chunk_logprobs(*args))
    shape = (*mask.shape, 2) if with_entropy else tuple(mask.shape)
    out = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
    if outs:
        out = out.index_put((rows, cols), torch.cat(outs))
    return out


@contextmanager
def _head_replaced(head: nn.Module, fn) -> Iterator[None]:
    head.forward = fn  # an instance attribute: nn.Module.__call__ finds it first
    try:
        yield
    finally:
        del head.forward


def token_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   positions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
                   temperature: float = 1.0, with_entropy: bool = False,
                   chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> TokenLogprobs:
    """log π(targets[b, r] | input_ids[b, :positions[b, r] + 1]) for every true ``mask``.

    Args:
        model: a causal LM (possibly wrapped), called with ``input_ids``/``attention_mask``.
        input_ids, attention_mask: (B, L).
        positions: (B, R) index of the position whose logits predict each target.
        targets: (B, R) token ids. mask: (B, R) bool; masked slots come back as 0.
        chunk_tokens: positions per chunk of (chunk, V) logits; 0 = no chunking (the full
            logits, as a plain forward would make them).
    """
    mask = mask.bool()
    head = output_layer(model)
    if chunk_tokens <= 0 or _post_processed(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        index = positions.unsqueeze(-1).expand(-1, -1, logits.size(-1))  # (B, R, V)
        picked = logits.gather(1, index).float() / temperature
        logp_all = picked.log_softmax(-1)
        logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
        entropy = -(logp_all.exp() * logp_all).sum(-1) * mask if with_entropy else None
        return TokenLogprobs(logp, entropy)

    def head_forward(hidden: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = head.weight  # type: ignore[assignment]
        return _selected(hidden, weight, getattr(head, "bias", None), positions, targets,
                         mask, temperature, with_entropy, chunk_tokens)

    with _head_replaced(head, head_forward):
        # transformers calls lm_head(hidden_states[:, slice]) and returns it as `logits`;
        # logits_to_keep=0 keeps every position, so positions index the full sequence.
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=0
                    ).logits
    if with_entropy:
        return TokenLogprobs(out[..., 0], out[..., 1])
    return TokenLogprobs(out, None)


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal-LM labels (B, T; −100 = no loss) → (positions, targets, mask), each (B, R).

    Logits at t predict labels[t + 1], as transformers' shift does.
    """
    shifted = labels[:, 1:]
    valid = shifted != -100
    width = max(int(valid.sum(1).max().item()) if valid.numel() else 0, 1)
    b = labels.size(0)
    positions = torch.zeros((b, width), dtype=torch.long, device=labels.device)
    targets = torch.zeros((b, width), dtype=torch.long, device=labels.device)
    mask = torch.zeros((b, width), dtype=torch.bool, device=labels.device)
    for i in range(b):
        at = valid[i].nonzero(as_tuple=True)[0]
        positions[i, :at.numel()] = at
        targets[i, :at.numel()] = shifted[i, at]
        mask[i, :at.numel()] = True
    return positions, targets, mask


def lm_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor],
                chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[torch.Tensor, int]:
    """(Σ −log π over labelled tokens, number of them): the pieces of the mean LM loss, so
    micro-batches can be weighted by their share of the batch's tokens."""
    positions, targets, mask = label_positions(batch["labels"])
    lp = token_logprobs(model, batch["input_ids"], batch["attention_mask"], positions,
                        targets, mask, chunk_tokens=chunk_tokens).logprobs
    return -(lp * mask).sum(), int(mask.sum())


def micro_slices(n: int, micro_batch_size: int | None) -> list[slice]:
    """Row ranges of ``n`` rows in micro-batches of ``micro_batch_size`` (None = one)."""
    size = n if not micro_batch_size else micro_batch_size
    return [slice(i, min(i + size, n)) for i in range(0, n, max(size, 1))]
