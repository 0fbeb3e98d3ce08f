"""The reward model: the policy's transformer with a scalar head on the last token.

InstructGPT starts the RM from the SFT model, drops the unembedding layer and adds a
scalar head. After training, a bias is added so labeler demonstrations score 0 on average
(or the policy's own samples, when no demonstrations exist); the bias is stored with the
model, so every consumer (PPO, gates, ``rlhf reward score``, the HTTP endpoint) gets
normalised rewards.

Saved layout (a registry version directory): the backbone as ``model.safetensors`` +
``config.json`` (``save_pretrained``), the tokenizer files, ``reward_head.safetensors``
and ``reward_bias.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from training.formatting import encode_pair

HEAD_FILE, BIAS_FILE = "reward_head.safetensors", "reward_bias.json"


def last_token_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) hidden state of the last non-pad token of each row of (B, T, H)."""
    positions = torch.arange(attention_mask.size(1), device=hidden.device)  # (T,)
    last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values  # (B,)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def scalar_head(hidden_size: int, seed: int | None = None) -> nn.Linear:
    """A fresh (H → 1) reward head: weight ~ N(0, 1/(H+1)), bias 0.

    On a normalised final hidden state (RMS about 1) initial rewards then have about unit
    scale; benchmarks/README.md compares it with TRL's N(0, 0.02²). With ``seed`` the
    weight is a function of the seed alone (its own generator, whatever else drew from
    the global RNG), so a benchmark can give a peer trainer the very same initial head.
    """
    head = nn.Linear(hidden_size, 1)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    nn.init.normal_(head.weight, std=1.0 / (hidden_size + 1) ** 0.5, generator=generator)
    nn.init.zeros_(head.bias)
    return head


def disable_dropout(module: nn.Module) -> int:
    """Zero every dropout of ``module``; returns how many were non-zero.

    Covers ``nn.Dropout`` layers (GPT-2's residual, attention and embedding dropout) and
    the attention-dropout rate that transformers' attention modules keep as a float and
    apply only in training mode (Llama, Mistral, Qwen: ``attention_dropout``).
    """
    changed = 0
    for m in module.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            m.p, changed = 0.0, changed + 1
        rate = getattr(m, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            m.attention_dropout, changed = 0.0, changed + 1
    return changed


class RewardModel(nn.Module):
    """r(x, y) = head(h_last) + bias, where h_last is the backbone's last-token state."""

    def __init__(self, backbone: nn.Module, bias: float = 0.0, bias_info: dict | None = None,
                 head_seed: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = scalar_head(backbone.config.hidden_size, head_seed)
        self.register_buffer("bias", torch.tensor(float(bias)))
        self.bias_info = bias_info or {}

    @classmethod
    def from_causal_lm(cls, path: Path | str, head_seed: int | None = None) -> RewardModel:
        """Backbone from a causal-LM (or reward) checkpoint; the LM head is dropped and a
        fresh scalar head added (``scalar_head(H, head_seed)``)."""
        return cls(AutoModel.from_pretrained(path, dtype=torch.float32), head_seed=head_seed)

    @classmethod
    def from_pretrained(cls, path: Path | str, dtype: torch.dtype | str = torch.float32
                        ) -> RewardModel:
        """The saved reward model; ``dtype`` is the backbone's (``"auto"``: the
        checkpoint's); the scalar head and bias stay fp32."""
        path = Path(path)
        info = json.loads((path / BIAS_FILE).read_text())
        model = cls(AutoModel.from_pretrained(path, dtype=dtype),
                    bias=info["bias"], bias_info=info)
        model.head.load_state_dict(load_file(path / HEAD_FILE))
        return model

    def save_pretrained(self, path: Path | str) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path, safe_serialization=True)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head, path / HEAD_FILE)
        (path / BIAS_FILE).write_text(json.dumps({**self.bias_info, "bias": self.bias.item()}))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids → (B,) rewards, bias included."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask
                               ).last_hidden_state  # (B, T, H)
        return self.score_hidden(last_token_hidden(hidden, attention_mask))

    def score_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) backbone states → (...) rewards; the head runs in its own dtype (fp32)."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1) + self.bias

    def set_bias_from(self, raw_scores: torch.Tensor, source: str) -> float:
        """Set the bias so ``raw_scores`` (scored with bias 0) average 0; returns it."""
        self.bias.fill_(-raw_scores.float().mean().item())
        self.bias_info = {"normalised_on": source, "num_samples": int(raw_scores.numel())}
        return self.bias.item()


def pad_batch(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (B, T) ids and attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def score_pairs(model: RewardModel, tokenizer, pairs: Sequence[tuple[str, str]],
                max_len: int = 512, batch_size: int = 32) -> list[float]:
    """Rewards of (prompt, response) pairs, batched by length to limit padding."""
    model.eval()
    device = next(model.parameters()).device
    seqs = [encode_pair(tokenizer, p, r, max_len).input_ids for p, r in pairs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], tokenizer.pad_token_id)
        for i, s in zip(idx, model(ids.to(device), mask.to(device)).tolist(), strict=True):
            scores[i] = s
    return scores


class RewardScorer:
    """A reward-model version loaded from the registry, scoring pairs in batches."""

    def __init__(self, path: Path | str, *, version: str | None = None,
                 device: str = "cpu", max_len: int = 512, batch_size: int = 32):
        self.version = version or Path(path).name
        self.model = RewardModel.from_pretrained(path).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_len, self.batch_size = max_len, batch_size

    @classmethod
    def from_registry(cls, registry, version: str, **kw) -> RewardScorer:
        """Load ``version`` (a reward-XXXX id) from a ``core.registry.Registry``."""
        if registry.get(version).kind != "reward":
            raise ValueError(f"{version} is not a reward model")
        return cls(registry.path(version), version=version, **kw)

    @property
    def bias(self) -> float:
        return self.model.bias.item()

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Normalised rewards of (prompt, response) pairs, in input order."""
        return score_pairs(self.model, self.tokenizer, pairs, self.max_len, self.batch_size)
