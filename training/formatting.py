"""How a (prompt, response) pair becomes token ids, the same way for SFT, RM and PPO.

A prompt in the feedback store is either a user message (feedback that carries its own
texts, demonstrations) or the already rendered prompt a completion was generated from.
A prompt that already ends with the chat template's generation prompt is used as is;
any other prompt is rendered as one user turn. The response follows, closed by EOS.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    prompt_len: int  # the first prompt_len ids are the prompt


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the policy sees before its response (see the module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    turn = [{"role": "user", "content": prompt}]
    rendered = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=False)
    generation_prompt = rendered[len(without):]
    if generation_prompt and prompt.endswith(generation_prompt):
        return prompt
    return rendered


def encode_pair(tokenizer, prompt: str, response: str, max_len: int) -> Encoded:
    """Token ids of prompt + response + EOS, at most ``max_len``.

    Over-long pairs keep the end of the prompt (nearest the response) and the start of the
    response, giving the prompt at most half the budget when both are long.
    """
    p = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(p) + len(r) > max_len:
        keep_p = min(len(p), max(max_len // 2, max_len - len(r)))
        p = p[len(p) - keep_p:]
        r = r[: max_len - keep_p]
    return Encoded(p + r, len(p))


def stop_token_ids(model_dir, tokenizer) -> list[int]:
    """Every id that ends an answer: the generation config's ``eos_token_id`` (an int or a
    list, e.g. Llama 3's end-of-turn ids) and the tokenizer's EOS, first = the tokenizer's."""
    from transformers import GenerationConfig

    ids: list[int] = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    for i in [eos] if isinstance(eos, int) else (eos or []):
        if i not in ids:
            ids.append(int(i))
    return ids
