"""The small real-vocabulary model on the real vLLM CPU engine through ``rlhf serve`` and
the official ``openai`` client: ChatML prompts, text out, and both of Qwen's EOS ids
(``<|im_end|>`` from the tokenizer, ``<|endoftext|>`` from the generation config) end an
answer. Random weights, so no assertion is about what the text says; ``logit_bias``
forces the stop token where one is needed."""

from __future__ import annotations

import pytest

from tests.fixtures.server import RemoteServer

pytestmark = pytest.mark.engine

MODEL = "small"
ENDOFTEXT, IM_END = 151643, 151645
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(small_model, tmp_path_factory):
    with RemoteServer(small_model, served_model_name=MODEL,
                      log_path=tmp_path_factory.mktemp("small") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def test_chat_completion_returns_text_of_the_requested_length(client):
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8,
                                         temperature=0, seed=0)
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 8
    assert isinstance(choice.message.content, str) and choice.message.content


def test_prompt_is_rendered_with_the_chatml_template(client, small_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_model)
    expected = tokenizer.apply_chat_template(HI, add_generation_prompt=True)["input_ids"]
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert out.usage.prompt_tokens == len(expected)


@pytest.mark.parametrize("stop_id", [IM_END, ENDOFTEXT], ids=["im_end", "endoftext"])
def test_a_forced_eos_id_ends_the_answer_without_showing_it(client, stop_id):
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=16,
                                         temperature=0, logit_bias={str(stop_id): 100})
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert out.usage.completion_tokens == 1
    assert choice.message.content == ""


def test_streamed_chat_stops_on_im_end(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=16, temperature=0, stream=True,
        logit_bias={str(IM_END): 100}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert "<|im_end|>" not in text
