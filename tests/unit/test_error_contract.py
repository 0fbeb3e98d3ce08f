"""One error model: every HTTP app renders the same JSON, gRPC maps the same types once.

The serving app is built without its lifespan, so no engine loads: the model is "still
loading" and generation answers 503, which is what this contract needs. The deploy
controller's and the reward server's apps run on an empty registry.
"""

from __future__ import annotations

import grpc
import pytest
from fastapi.testclient import TestClient

from core.auth import KeyRing
from core.errors import (
    ApiError,
    BrokerUnavailable,
    Conflict,
    EngineUnavailable,
    Forbidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableEntity,
    error_body,
)
from core.registry import Registry
from deploy.api import create_app as deploy_app
from deploy.controller import DeployController
from deploy.settings import DeploySettings
from protos.rlhf.v1 import inference_pb2 as pb
from protos.rlhf.v1 import inference_pb2_grpc
from serving.grpc.errors import grpc_errors
from serving.http.app import build_app
from serving.runtime import Runtime
from serving.settings import ServeSettings
from training.reward_server import create_app as reward_app

KEYS = {"sk-user": "user", "sk-admin": "admin"}
USER = {"Authorization": "Bearer sk-user"}
ADMIN = {"Authorization": "Bearer sk-admin"}

# The whole mapping, written out: HTTP status, OpenAI type, gRPC code.
MAPPING = {
    InvalidRequest: (400, "BadRequestError", "INVALID_ARGUMENT"),
    Unauthorized: (401, "AuthenticationError", "UNAUTHENTICATED"),
    Forbidden: (403, "PermissionDeniedError", "PERMISSION_DENIED"),
    NotFound: (404, "NotFoundError", "NOT_FOUND"),
    Conflict: (409, "ConflictError", "FAILED_PRECONDITION"),
    PayloadTooLarge: (413, "PayloadTooLargeError", "INVALID_ARGUMENT"),
    UnprocessableEntity: (422, "UnprocessableEntityError", "INVALID_ARGUMENT"),
    Overloaded: (429, "RateLimitError", "RESOURCE_EXHAUSTED"),
    ServiceUnavailable: (503, "ServiceUnavailableError", "UNAVAILABLE"),
    EngineUnavailable: (503, "ServiceUnavailableError", "UNAVAILABLE"),
    BrokerUnavailable: (503, "ServiceUnavailableError", "UNAVAILABLE"),
}


def assert_error_shape(response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["type"] == type_ and error["code"] == status and error["message"]
    return error


@pytest.fixture
def serving(tmp_path) -> TestClient:
    settings = ServeSettings(auth={"keys": KEYS}, publish_events=False,
                             follow_policy_events=False, grpc={"enabled": False})
    runtime = Runtime(settings, model_path=str(tmp_path / "no-model"), version="policy-0000")
    return TestClient(build_app(runtime))  # no `with`: the lifespan (engine load) never runs


@pytest.fixture
def deploy(tmp_path) -> TestClient:
    settings = DeploySettings(registry={"root": tmp_path / "registry"},
                              kafka={"bootstrap_servers": "127.0.0.1:1"})
    controller = DeployController(settings, registry=Registry(tmp_path / "registry"))
    return TestClient(deploy_app(controller, KeyRing(KEYS)))


@pytest.fixture
def rewards(tmp_path) -> TestClient:
    return TestClient(reward_app(tmp_path / "registry", keyring=KeyRing(KEYS)))


def test_every_error_type_has_one_mapping() -> None:
    for cls, (status, type_, code) in MAPPING.items():
        err = cls("boom", param="field")
        assert (err.status, err.type, err.grpc_code) == (status, type_, code), cls
        assert error_body(err) == {"error": {"message": "boom", "type": type_,
                                             "param": "field", "code": status}}
        assert hasattr(grpc.StatusCode, code)


def test_serving_http_errors(serving: TestClient) -> None:
    ok_body = {"prompt": "hi", "max_tokens": 2}
    assert_error_shape(serving.post("/v1/completions", json=ok_body), 401,
                       "AuthenticationError")
    assert_error_shape(serving.post("/v1/completions", json=ok_body,
                                    headers={"Authorization": "Bearer sk-nope"}), 401,
                       "AuthenticationError")
    assert_error_shape(serving.get("/v1/admin/policy", headers=USER), 403,
                       "PermissionDeniedError")
    assert_error_shape(serving.get("/v1/no-such-route", headers=USER), 404, "NotFoundError")
    err = assert_error_shape(
        serving.post("/v1/completions", json={**ok_body, "temperature": "hot"}, headers=USER),
        400, "BadRequestError")
    assert err["param"] == "temperature"
    err = assert_error_shape(
        serving.post("/v1/feedback", json={"type": "rating", "score": "high"}, headers=USER),
        422, "UnprocessableEntityError")
    assert err["param"]
    assert_error_shape(serving.post("/v1/completions", json=ok_body, headers=USER), 503,
                       "ServiceUnavailableError")


def test_serving_errors_carry_the_request_id(serving: TestClient) -> None:
    r = serving.post("/v1/completions", json={"prompt": "hi"}, headers=USER)
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


def test_deploy_api_errors(deploy: TestClient) -> None:
    assert_error_shape(deploy.get("/v1/deploy/status"), 401, "AuthenticationError")
    assert_error_shape(deploy.get("/v1/deploy/status", headers=USER), 403,
                       "PermissionDeniedError")
    assert_error_shape(deploy.post("/v1/deploy/promote", json={"version": "policy-0042"},
                                   headers=ADMIN), 404, "NotFoundError")
    err = assert_error_shape(deploy.post("/v1/deploy/promote", json={"version": ""},
                                         headers=ADMIN), 422, "UnprocessableEntityError")
    assert err["param"] == "version"
    assert_error_shape(deploy.get("/v1/deploy/nothing", headers=ADMIN), 404, "NotFoundError")


def test_reward_server_errors(rewards: TestClient) -> None:
    body = {"model": "reward-0001", "items": [{"prompt": "p", "response": "r"}]}
    assert_error_shape(rewards.post("/v1/rewards", json=body), 401, "AuthenticationError")
    err = assert_error_shape(rewards.post("/v1/rewards", json=body, headers=USER), 404,
                             "NotFoundError")
    assert err["param"] == "model"
    err = assert_error_shape(rewards.post("/v1/rewards", json={"model": "x", "items": []},
                                          headers=USER), 422, "UnprocessableEntityError")
    assert err["param"] == "items"


class _Recorder:
    """A stand-in for grpc's ServicerContext that records the abort (the collaborator)."""

    def __init__(self):
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str):
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize("cls", list(MAPPING))
async def test_grpc_decorator_maps_every_type(cls: type[ApiError]) -> None:
    class Servicer:
        @grpc_errors
        async def Method(self, request, context):
            raise cls("went wrong", param="field")

    context = _Recorder()
    with pytest.raises(grpc.aio.AbortError):
        await Servicer().Method(None, context)
    assert context.aborted == (getattr(grpc.StatusCode, MAPPING[cls][2]), "field: went wrong")


async def test_grpc_channel_statuses(tmp_path) -> None:
    from serving.grpc.server import GrpcServer

    settings = ServeSettings(auth={"keys": KEYS}, publish_events=False,
                             grpc={"port": 0, "host": "127.0.0.1"})
    runtime = Runtime(settings, model_path=str(tmp_path / "no-model"), version="policy-0000")
    server = GrpcServer(runtime, runtime.keyring)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            request = pb.GenerateRequest(prompt="hi")

            async def status_of(req, metadata=()) -> grpc.StatusCode:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Generate(req, metadata=metadata)
                return info.value.code()

            assert await status_of(request) == grpc.StatusCode.UNAUTHENTICATED
            user = (("authorization", "Bearer sk-user"),)
            assert await status_of(request, user) == grpc.StatusCode.UNAVAILABLE  # loading
            bad = pb.GenerateRequest(prompt="")  # refused by the request model, before loading
            assert await status_of(bad, user) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)
