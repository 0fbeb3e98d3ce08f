"""Hypothesis-generated GenerateRequest and FeedbackItem messages over a real channel to
the real server: whatever the field values, the status is never INTERNAL or UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.rlhf.v1 import feedback_pb2 as fpb
from protos.rlhf.v1 import feedback_pb2_grpc, inference_pb2_grpc
from protos.rlhf.v1 import inference_pb2 as pb
from tests.fixtures.server import RemoteServer

pytestmark = pytest.mark.engine

BUGS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # valid UTF-8
int32 = st.integers(-(2**31), 2**31 - 1)
small = st.one_of(st.integers(-3, 40), int32)
floats = st.floats(width=32)  # NaN and infinities included
roles = st.one_of(st.sampled_from(["system", "user", "assistant"]), text)


@pytest.fixture(scope="module")
def channel(tiny_model, tmp_path_factory):
    server = RemoteServer(tiny_model, log_path=tmp_path_factory.mktemp("fuzz-grpc") / "s.log",
                          env={"RLHF_LIMITS__MAX_N": "2"})  # keeps generations quick
    with grpc.insecure_channel(server.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch
    server.stop()


def _optional(strategy):
    return st.one_of(st.none(), strategy)


@st.composite
def sampling(draw) -> pb.SamplingParameters:
    fields = {
        "n": draw(_optional(st.one_of(st.integers(-1, 3), int32))),
        "max_tokens": draw(_optional(st.one_of(st.integers(-1, 8), int32))),
        "temperature": draw(_optional(floats)), "top_p": draw(_optional(floats)),
        "top_k": draw(_optional(small)), "seed": draw(_optional(st.integers(-(2**63),
                                                                            2**63 - 1))),
        "logprobs": draw(_optional(small)), "presence_penalty": draw(_optional(floats)),
        "frequency_penalty": draw(_optional(floats)), "min_tokens": draw(_optional(small)),
    }
    return pb.SamplingParameters(
        **{k: v for k, v in fields.items() if v is not None},
        stop=draw(st.lists(text, max_size=10)), ignore_eos=draw(st.booleans()))


@st.composite
def generate_requests(draw) -> pb.GenerateRequest:
    kind = draw(st.sampled_from(["prompt", "token_ids", "messages", "none"]))
    body = {"model": draw(st.sampled_from(["", "tiny"]) | text), "request_id": draw(text),
            "user": draw(text), "sampling": draw(sampling())}
    if kind == "prompt":
        body["prompt"] = draw(text)
    elif kind == "token_ids":
        body["token_ids"] = pb.TokenIds(ids=draw(st.lists(small, max_size=20)))
    elif kind == "messages":
        body["messages"] = pb.ChatMessages(messages=draw(st.lists(st.builds(
            pb.ChatMessage, role=roles, content=text), max_size=4)))
    return pb.GenerateRequest(**body)


indices = st.lists(small, max_size=5)
feedback_kinds = {
    "ranking": st.builds(fpb.Ranking, request_id=text, choices=indices, prompt=text,
                         responses=st.lists(text, max_size=5), ranks=indices),
    "comparison": st.builds(fpb.Comparison, request_id=text, choice_a=small, choice_b=small,
                            prompt=text, text_a=text, text_b=text,
                            preferred=st.sampled_from(["a", "b", "tie"]) | text),
    "rating": st.builds(fpb.Rating, request_id=text, choice=small, prompt=text,
                        response=text, score=st.floats(), comment=text),
    "demonstration": st.builds(fpb.Demonstration, prompt=text, response=text,
                               request_id=text, messages=st.lists(st.builds(
                                   pb.ChatMessage, role=roles, content=text), max_size=3)),
}


@st.composite
def feedback_items(draw) -> fpb.FeedbackItem:
    kind = draw(st.sampled_from([*feedback_kinds, "none"]))
    extra = {} if kind == "none" else {kind: draw(feedback_kinds[kind])}
    return fpb.FeedbackItem(event_id=draw(text), submitted_by=draw(text), **extra)


def _status(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def test_generate_never_fails_internally(channel):
    stub = inference_pb2_grpc.InferenceStub(channel)

    @FUZZ
    @given(request=generate_requests())
    def run(request):
        code = _status(lambda: stub.Generate(request, timeout=60))
        assert code not in BUGS, request
        code = _status(lambda: list(stub.GenerateStream(request, timeout=60)))
        assert code not in BUGS, request

    run()


def test_feedback_never_fails_internally(channel):
    stub = feedback_pb2_grpc.FeedbackStub(channel)

    @FUZZ
    @given(item=feedback_items(), batch=st.lists(feedback_items(), max_size=4))
    def run(item, batch):
        assert _status(lambda: stub.SubmitFeedback(item, timeout=30)) not in BUGS, item
        code = _status(lambda: stub.SubmitFeedbackBatch(fpb.FeedbackBatch(items=batch),
                                                        timeout=30))
        assert code not in BUGS, batch

    run()
