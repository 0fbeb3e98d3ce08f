"""gRPC servicers: convert protobuf to the handlers' request types, call the same handlers
the HTTP routes call, convert back. Errors become status codes; no logic of its own."""

from __future__ import annotations

import uuid

import grpc
from pydantic import TypeAdapter, ValidationError

from feedback.auth import AuthError, Caller, KeyRing, bearer_token
from feedback.events import FeedbackEvent, describe_validation_error
from protos.rlhf.v1 import feedback_pb2 as fpb
from protos.rlhf.v1 import feedback_pb2_grpc, inference_pb2_grpc
from protos.rlhf.v1 import inference_pb2 as pb
from serving.errors import EngineUnavailable, ServingError
from serving.grpc import convert
from serving.handlers.generation import RequestContext
from serving.openai import protocol as p
from serving.runtime import Runtime

_feedback_list = TypeAdapter(list[FeedbackEvent])


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ValidationError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe_validation_error(exc))
    if isinstance(exc, AuthError):
        code = grpc.StatusCode.UNAUTHENTICATED if exc.status == 401 else \
            grpc.StatusCode.PERMISSION_DENIED
        await context.abort(code, exc.message)
    assert isinstance(exc, ServingError)
    message = f"{exc.param}: {exc.message}" if exc.param and exc.param not in exc.message \
        else exc.message
    await context.abort(getattr(grpc.StatusCode, exc.grpc_code), message)


def _caller(keyring: KeyRing, context: grpc.aio.ServicerContext) -> Caller:
    md = dict(context.invocation_metadata() or ())
    return keyring.identify(bearer_token(md.get("authorization"), md.get("x-api-key")))


def _request_id(msg: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> str:
    md = dict(context.invocation_metadata() or ())
    return msg.request_id or md.get("x-request-id") or f"req-{uuid.uuid4().hex}"


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, runtime: Runtime, keyring: KeyRing):
        self.runtime, self.keyring = runtime, keyring

    def _handler(self):
        if self.runtime.generation is None:
            raise EngineUnavailable("The model is still loading.")
        return self.runtime.generation

    async def Generate(self, request, context):
        try:
            caller = _caller(self.keyring, context)
            req = convert.to_request(request, stream=False)
            ctx = RequestContext(request_id=_request_id(request, context), user=caller.name)
            handler = self._handler()
            if isinstance(req, p.ChatCompletionRequest):
                result: p.CompletionResponse | p.ChatCompletionResponse = \
                    await handler.chat(req, ctx)
            else:
                result = await handler.complete(req, ctx)
        except (ServingError, ValidationError, AuthError) as exc:
            await _abort(context, exc)
        await context.send_initial_metadata((("x-policy-version", result.policy_version),))
        return convert.to_response(result)

    async def GenerateStream(self, request, context) -> None:
        # context.write() rather than an async generator: a cancelled or timed-out RPC then
        # raises here at once and the finally closes the handler's stream (aborting the
        # engine request) instead of leaving it to garbage collection.
        chunks = None
        try:
            caller = _caller(self.keyring, context)
            req = convert.to_request(request, stream=True)
            ctx = RequestContext(request_id=_request_id(request, context), user=caller.name)
            handler = self._handler()
            chunks = handler.chat_stream(req, ctx) if isinstance(req, p.ChatCompletionRequest) \
                else handler.complete_stream(req, ctx)
            async for chunk in chunks:
                await context.write(convert.to_stream_response(chunk))
        except (ServingError, ValidationError, AuthError) as exc:
            await _abort(context, exc)
        finally:
            if chunks is not None:
                await chunks.aclose()

    async def ListModels(self, request, context):
        try:
            _caller(self.keyring, context)
            return convert.to_models(self._handler().models())
        except (ServingError, AuthError) as exc:
            await _abort(context, exc)


class FeedbackServicer(feedback_pb2_grpc.FeedbackServicer):
    def __init__(self, runtime: Runtime, keyring: KeyRing):
        self.runtime, self.keyring = runtime, keyring

    async def SubmitFeedback(self, request, context):
        try:
            caller = _caller(self.keyring, context)
            item = _feedback_list.validate_python([convert.feedback_body(request)])[0]
            ack = await self.runtime.feedback.submit(item, caller)
        except (ServingError, ValidationError, AuthError) as exc:
            await _abort(context, exc)
        return fpb.FeedbackAck(event_id=ack.event_id, status=ack.status)

    async def SubmitFeedbackBatch(self, request, context):
        try:
            caller = _caller(self.keyring, context)
            items = _feedback_list.validate_python(
                [convert.feedback_body(i) for i in request.items])
            acks = await self.runtime.feedback.submit_batch(items, caller)
        except (ServingError, ValidationError, AuthError) as exc:
            await _abort(context, exc)
        return fpb.FeedbackBatchAck(
            acks=[fpb.FeedbackAck(event_id=a.event_id, status=a.status) for a in acks.acks])
