"""Build a deterministic tiny Llama-architecture checkpoint from text the repo ships.

No weights can be downloaded in CI or on an air-gapped laptop, so tests and the local
loop run on a model made here: a byte-level BPE tokenizer trained with ``tokenizers`` on
``training/data/corpus.txt``, a chat template, and randomly initialised
``LlamaForCausalLM`` weights. The same seed gives byte-identical files. Real deployments
pass a real checkpoint directory instead.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "corpus.txt"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# A minimal chat format: one role marker per message, each message closed by EOS, and the
# generation prompt opens an assistant turn. vLLM and transformers both render it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(vocab_size: int, corpus: Path = CORPUS):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=CHAT_TOKENS, chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    out: Path,
    *,
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 1024,
    intermediate_size: int | None = None,
) -> Path:
    """Write tokenizer, config and safetensors weights of a tiny Llama to ``out``.

    ``intermediate_size`` defaults to ``2 × hidden_size``.
    ``hidden_size / num_heads`` is 64, a head size every vLLM attention backend
    (CPU included) supports.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out)
    (out / "rlhf_tiny.json").write_text(json.dumps({"seed": seed, "vocab_size": len(tokenizer)}))
    return out


SIZES: dict[str, dict[str, int]] = {
    "tiny": {},  # 0.85M parameters: tests and the local loop
    "10m": {"hidden_size": 384, "num_layers": 5, "num_heads": 6, "intermediate_size": 1024},
    "50m": {"hidden_size": 640, "num_layers": 9, "num_heads": 10, "intermediate_size": 1792},
    "120m": {"hidden_size": 768, "num_layers": 16, "num_heads": 12, "intermediate_size": 2048},
}
"""Random-init Llama shapes for scaling measurements (head size 64, the same tokenizer);
the name is the rounded parameter count. Random weights: for timing and memory only."""


def build_sized_model(out: Path, size: str = "tiny", *, seed: int = 0) -> Path:
    """``build_tiny_model`` with the shape ``SIZES[size]``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return build_tiny_model(out, seed=seed, **SIZES[size])
