"""Request → SamplingParams conversion and request validation (no engine needed)."""

import pytest
from pydantic import ValidationError
from vllm.sampling_params import RequestOutputKind

from serving.protocol import ChatCompletionRequest, CompletionRequest


def test_user_value_beats_server_default_beats_openai_default():
    req = CompletionRequest(prompt="hi", temperature=0.3)
    params = req.to_sampling_params(16, defaults={"temperature": 0.7, "top_p": 0.5})
    assert params.temperature == 0.3  # the user's value
    assert params.top_p == 0.5  # the server's default
    assert params.presence_penalty == 0.0  # OpenAI's default
    assert params.max_tokens == 16


def test_all_openai_fields_reach_vllm():
    req = CompletionRequest(prompt="hi", n=3, max_tokens=7, top_k=5, stop="\n", seed=11,
                            logprobs=2, presence_penalty=0.5, frequency_penalty=-0.5,
                            ignore_eos=True)
    params = req.to_sampling_params(16)
    assert (params.n, params.max_tokens, params.top_k, params.seed, params.logprobs) == \
        (3, 7, 5, 11, 2)
    assert params.stop == ["\n"]
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert params.ignore_eos is True
    assert params.output_kind == RequestOutputKind.FINAL_ONLY


def test_stream_requests_get_deltas():
    params = CompletionRequest(prompt="hi", stream=True).to_sampling_params(16)
    assert params.output_kind == RequestOutputKind.DELTA


def test_chat_max_completion_tokens_wins_and_logprobs_map_to_top_k():
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                max_completion_tokens=9, logprobs=True, top_logprobs=3)
    params = req.to_sampling_params(16)
    assert params.max_tokens == 9
    assert params.logprobs == 3
    no_lp = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}])
    assert no_lp.to_sampling_params(16).logprobs is None


@pytest.mark.parametrize("field,value", [
    ("temperature", 2.5), ("top_p", 0), ("n", 0), ("max_tokens", 0), ("logprobs", 21),
    ("presence_penalty", 3), ("stop", ["a"] * 9), ("prompt", ""), ("bogus", 1),
])
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValidationError) as err:
        CompletionRequest(**{"prompt": "hi", field: value})
    assert field in str(err.value)


def test_chat_needs_messages_with_known_roles():
    with pytest.raises(ValidationError, match="messages"):
        ChatCompletionRequest(messages=[])
    with pytest.raises(ValidationError, match="role"):
        ChatCompletionRequest(messages=[{"role": "robot", "content": "x"}])


@pytest.mark.parametrize("extra,param", [
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"min_tokens": 20}, "min_tokens"),  # beyond the server's default max_tokens (16)
    ({"seed": 2**63}, "seed"),
    ({"seed": -2**63 - 1}, "seed"),
    ({"max_tokens": 2**40}, "max_tokens"),
    ({"top_k": 2**40}, "top_k"),
])
def test_out_of_range_values_are_refused_naming_the_field_not_raised_by_vllm(extra, param):
    """vLLM's own checks raise ValueError (a 500); the protocol must name the field."""
    from core.errors import InvalidRequest

    with pytest.raises((ValidationError, InvalidRequest)) as err:
        CompletionRequest(prompt="hi", **extra).to_sampling_params(16)
    if isinstance(err.value, InvalidRequest):
        assert err.value.param == param
    else:
        assert err.value.errors()[0]["loc"] == (param,)


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty",
                                   "frequency_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ValidationError) as err:
        CompletionRequest(prompt="hi", **{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_seed_bounds_are_int64():
    for seed in (-2**63, 2**63 - 1, 0):
        assert CompletionRequest(prompt="hi", seed=seed).to_sampling_params(16).seed == seed


def test_openai_store_and_metadata_are_accepted_other_unknown_fields_are_not():
    req = CompletionRequest(prompt="hi", store=False, metadata={"run": "eval-7"})
    assert req.store is False and req.metadata == {"run": "eval-7"}
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], store=True)
    assert chat.store is True
    assert CompletionRequest(prompt="hi").store is True  # logged unless told otherwise
    with pytest.raises(ValidationError, match="frobnicate"):
        CompletionRequest(prompt="hi", frobnicate=1)
