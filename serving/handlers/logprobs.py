"""vLLM per-token log-probabilities → OpenAI's two logprobs shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving import protocol as p

# vLLM gives, per generated token, {token_id: Logprob(logprob, rank, decoded_token)}
# holding the sampled token plus the top-k alternatives.
TokenLogprobs = Any  # list[dict[int, Logprob]] or vLLM's FlatLogprobs; both index per token


def _sampled(entry: dict[int, Any], token_id: int | None) -> Any:
    if token_id is not None and token_id in entry:
        return entry[token_id]
    return next(iter(entry.values()))


def completion_logprobs(logprobs: TokenLogprobs, token_ids: Sequence[int] | None = None,
                        offset: int = 0) -> p.CompletionLogProbs:
    """The legacy completions shape: parallel lists of tokens, logprobs and top-k dicts."""
    result = p.CompletionLogProbs()
    for i, entry in enumerate(logprobs or []):
        chosen = _sampled(entry, token_ids[i] if token_ids else None)
        token = chosen.decoded_token or ""
        result.text_offset.append(offset)
        offset += len(token)
        result.tokens.append(token)
        result.token_logprobs.append(chosen.logprob)
        result.top_logprobs.append({(lp.decoded_token or ""): lp.logprob
                                    for lp in entry.values()})
    return result


def chat_logprobs(logprobs: TokenLogprobs, token_ids: Sequence[int] | None = None,
                  top_n: int = 0) -> p.ChatLogProbs:
    """The chat shape: one object per token with its alternatives."""
    content = []
    for i, entry in enumerate(logprobs or []):
        chosen = _sampled(entry, token_ids[i] if token_ids else None)
        token = chosen.decoded_token or ""
        # The sampled token is in ``entry`` even when it is not among the top ``top_n``.
        alternatives = sorted(entry.values(), key=lambda lp: lp.rank or 0)[:top_n]
        content.append(p.ChatTokenLogprob(
            token=token, logprob=chosen.logprob, bytes=list(token.encode()),
            top_logprobs=[p.TopLogprob(token=a.decoded_token or "", logprob=a.logprob,
                                       bytes=list((a.decoded_token or "").encode()))
                          for a in alternatives]))
    return p.ChatLogProbs(content=content)
