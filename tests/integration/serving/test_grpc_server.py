"""The gRPC server itself, over real channels, without a model: server reflection in both
protocol versions, and a taken port refused instead of shared.

No engine starts: a Runtime that never loads is enough for reflection and binding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

from serving.grpc.server import GrpcBindError, GrpcServer
from serving.runtime import Runtime
from serving.settings import ServeSettings

pytestmark = pytest.mark.timeout(60)

# The canonical grpc/reflection/v1/reflection.proto (grpc-proto), which grpcio-reflection
# does not ship: the client below is compiled from it, independently of the server's code.
REFLECTION_V1_PROTO = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest { string containing_type = 1; int32 extension_number = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse { string base_type_name = 1; repeated int32 extension_number = 2; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""

EXPECTED_SERVICES = {"rlhf.v1.Inference", "rlhf.v1.Feedback", "grpc.health.v1.Health",
                     "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection"}


def grpc_server(tmp_path: Path, port: int = 0) -> GrpcServer:
    settings = ServeSettings(publish_events=False, grpc={"host": "127.0.0.1", "port": port})
    runtime = Runtime(settings, model_path=str(tmp_path / "never-loaded"), version="base")
    return GrpcServer(runtime, runtime.keyring)


@pytest.fixture
async def server(tmp_path) -> AsyncIterator[GrpcServer]:
    srv = grpc_server(tmp_path)
    await srv.start()
    yield srv
    await srv.stop(0)


@pytest.fixture
async def channel(server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def compile_v1(tmp_path: Path) -> tuple[type, type]:
    """v1's request and response classes, compiled from REFLECTION_V1_PROTO with protoc
    into a pool of their own."""
    (tmp_path / "reflection_v1.proto").write_text(REFLECTION_V1_PROTO)
    out = tmp_path / "reflection_v1.pb"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}",
                        str(tmp_path / "reflection_v1.proto")]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(files.file[0])
    request, response = (message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"grpc.reflection.v1.{name}")) for name in ("ServerReflectionRequest",
                                                    "ServerReflectionResponse"))
    return request, response


def v1_reflection(channel: grpc.aio.Channel, tmp_path: Path) -> tuple[type, Callable]:
    request, response = compile_v1(tmp_path)
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                 request_serializer=request.SerializeToString,
                                 response_deserializer=response.FromString)
    return request, call


async def ask(call: Callable, request) -> list:
    return [answer async for answer in call(iter([request]))]


async def test_reflection_lists_the_services_over_v1_and_v1alpha(channel, tmp_path):
    v1alpha = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    [old] = await ask(v1alpha, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert {s.name for s in old.list_services_response.service} == EXPECTED_SERVICES

    request, v1 = v1_reflection(channel, tmp_path)
    [new] = await ask(v1, request(list_services=""))
    assert new.WhichOneof("message_response") == "list_services_response"
    assert {s.name for s in new.list_services_response.service} == EXPECTED_SERVICES


async def test_v1_reflection_describes_the_api_and_itself(channel, tmp_path):
    request, v1 = v1_reflection(channel, tmp_path)

    async def file_of(symbol: str) -> descriptor_pb2.FileDescriptorProto:
        [answer] = await ask(v1, request(file_containing_symbol=symbol))
        assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in answer.file_descriptor_response.file_descriptor_proto]
        return next(f for f in files if any(
            f"{f.package}.{s.name}" == symbol for s in f.service))

    inference = await file_of("rlhf.v1.Inference")
    assert "Generate" in {m.name for m in inference.service[0].method}

    itself = await file_of("grpc.reflection.v1.ServerReflection")
    assert itself.name == "grpc/reflection/v1/reflection.proto"
    [method] = itself.service[0].method
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse")
    assert method.client_streaming and method.server_streaming

    [missing] = await ask(v1, request(file_containing_symbol="no.such.Service"))
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_a_second_server_on_a_taken_port_fails_naming_it(server, channel, tmp_path):
    with pytest.raises(GrpcBindError, match=f"cannot listen on port {server.port} of "
                                            f"127.0.0.1: the port is in use") as refused:
        grpc_server(tmp_path, port=server.port)
    assert "--grpc-port" in str(refused.value)
    # The first server still holds the port and answers on it.
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING  # never loads
