"""The request models are vLLM's; these tests cover only what this platform adds to them
(``store``, finite numbers, the ``policy_version`` stamp) and the bounds it relies on."""

import pytest
from pydantic import ValidationError
from vllm.exceptions import VLLMValidationError

from serving import protocol as p
from serving.protocol import ChatCompletionRequest, CompletionRequest


def test_store_defaults_to_logged_and_can_be_turned_off():
    assert CompletionRequest(prompt="hi").store is True
    assert CompletionRequest(prompt="hi", store=False).store is False
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], store=False)
    assert chat.store is False
    with pytest.raises(ValidationError, match="store"):
        CompletionRequest(prompt="hi", store="sometimes")


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty",
                                   "frequency_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ValidationError) as err:
        CompletionRequest(prompt="hi", **{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("seed", [2**63, -2**63 - 1])
def test_seed_outside_int64_is_refused_naming_the_field(seed):
    with pytest.raises(ValidationError) as err:
        CompletionRequest(prompt="hi", seed=seed)
    assert err.value.errors()[0]["loc"] == ("seed",)


def test_seed_bounds_are_int64_inclusive():
    for seed in (-2**63, 2**63 - 1, 0):
        assert CompletionRequest(prompt="hi", seed=seed).seed == seed


def test_unknown_fields_are_accepted_as_openai_and_vllm_do():
    req = CompletionRequest(prompt="hi", frobnicate=1)
    assert req.model_extra == {"frobnicate": 1}


def test_a_completion_needs_a_prompt():
    with pytest.raises(VLLMValidationError) as err:
        CompletionRequest()
    assert err.value.parameter == "prompt"


def test_every_answer_schema_carries_the_policy_version():
    for model in (p.CompletionResponse, p.CompletionStreamResponse, p.ChatCompletionResponse,
                  p.ChatCompletionStreamResponse):
        assert "policy_version" in model.model_json_schema()["required"]
