"""gRPC servicers: convert protobuf to the handlers' request types, call the same handlers
the HTTP routes call, convert back. Errors become status codes; no logic of its own.

Ids and markers mirror HTTP: the response's ``request_id`` (the completion id feedback
refers to) is always generated here; a ``request_id`` field or ``x-request-id`` metadata
from the client is its correlation id, recorded on the completion event and echoed in
the ``x-request-id`` response metadata. Metadata ``x-rlhf-eval: 1`` logs the completion
with ``purpose="eval"``; ``x-rlhf-store: false`` does not log it at all.
"""

from __future__ import annotations

import grpc
from pydantic import TypeAdapter

from core.auth import Caller, KeyRing, bearer_token
from core.events import FeedbackEvent
from protos.rlhf.v1 import feedback_pb2 as fpb
from protos.rlhf.v1 import feedback_pb2_grpc, inference_pb2_grpc
from protos.rlhf.v1 import inference_pb2 as pb
from serving import protocol as p
from serving.grpc import convert
from serving.grpc.errors import grpc_errors
from serving.handlers.openai import RequestContext
from serving.http.middleware import client_request_id, is_eval, new_request_id
from serving.runtime import Runtime

_feedback_list = TypeAdapter(list[FeedbackEvent])


def _caller(keyring: KeyRing, context: grpc.aio.ServicerContext,
            minimum_role: str = "user") -> Caller:
    md = dict(context.invocation_metadata() or ())
    return keyring.authorize(bearer_token(md.get("authorization"), md.get("x-api-key")),
                             minimum_role)


def _context(msg: pb.GenerateRequest, context: grpc.aio.ServicerContext,
             caller: Caller) -> RequestContext:
    md = dict(context.invocation_metadata() or ())
    return RequestContext(
        request_id=new_request_id(), user=caller.name,
        client_request_id=client_request_id(msg.request_id or md.get("x-request-id")),
        purpose="eval" if is_eval(md.get("x-rlhf-eval")) else "train")


def _request(msg: pb.GenerateRequest, context: grpc.aio.ServicerContext,
             stream: bool) -> p.CompletionRequest | p.ChatCompletionRequest:
    req = convert.to_request(msg, stream=stream)
    md = dict(context.invocation_metadata() or ())
    if str(md.get("x-rlhf-store", "")).strip().lower() in ("0", "false", "no"):
        req.store = False
    return req


def _echo(ctx: RequestContext) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", ctx.client_request_id),) if ctx.client_request_id else ()


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, runtime: Runtime, keyring: KeyRing):
        self.runtime, self.keyring = runtime, keyring

    @grpc_errors
    async def Generate(self, request, context):
        caller = _caller(self.keyring, context)
        req = _request(request, context, stream=False)
        ctx = _context(request, context, caller)
        handler = self.runtime.generation_handler()
        result = await (handler.chat(req, ctx) if isinstance(req, p.ChatCompletionRequest)
                        else handler.complete(req, ctx))
        await context.send_initial_metadata(
            (("x-policy-version", result.policy_version), *_echo(ctx)))
        return convert.to_response(result.body)

    @grpc_errors
    async def GenerateStream(self, request, context) -> None:
        # context.write() rather than an async generator: a cancelled or timed-out RPC then
        # raises here at once and the finally closes the handler's stream (aborting the
        # engine request) instead of leaving it to garbage collection.
        chunks = None
        try:
            caller = _caller(self.keyring, context)
            req = _request(request, context, stream=True)
            ctx = _context(request, context, caller)
            context.set_trailing_metadata(_echo(ctx))
            handler = self.runtime.generation_handler()
            result = await (handler.chat(req, ctx) if isinstance(req, p.ChatCompletionRequest)
                            else handler.complete(req, ctx))
            chunks = result.stream
            assert chunks is not None
            flush_s = self.runtime.settings.grpc.stream_flush_ms / 1000
            messages = convert.coalesce(chunks, flush_s)
            try:
                async for batch in messages:
                    await context.write(batch)
            finally:  # first: it may hold the stream's step that the aclose below needs
                await messages.aclose()
        finally:
            if chunks is not None:
                await chunks.aclose()

    @grpc_errors
    async def ListModels(self, request, context):
        _caller(self.keyring, context)
        return convert.to_models(await self.runtime.generation_handler().models())


class FeedbackServicer(feedback_pb2_grpc.FeedbackServicer):
    def __init__(self, runtime: Runtime, keyring: KeyRing):
        self.runtime, self.keyring = runtime, keyring

    @grpc_errors
    async def SubmitFeedback(self, request, context):
        caller = _caller(self.keyring, context)
        item = _feedback_list.validate_python([convert.feedback_body(request)])[0]
        ack = await self.runtime.feedback.submit(item, caller)
        return fpb.FeedbackAck(event_id=ack.event_id, status=ack.status)

    @grpc_errors
    async def SubmitFeedbackBatch(self, request, context):
        caller = _caller(self.keyring, context)
        items = _feedback_list.validate_python(
            [convert.feedback_body(i) for i in request.items])
        acks = await self.runtime.feedback.submit_batch(items, caller)
        return fpb.FeedbackBatchAck(
            acks=[fpb.FeedbackAck(event_id=a.event_id, status=a.status) for a in acks.acks])
