"""The gRPC server: the two servicers, standard health (NOT_SERVING while the model loads
or a policy swap runs) and server reflection (v1 and v1alpha), on the serving process's
event loop.

The port is bound without SO_REUSEPORT (gRPC sets it by default on Linux), so a second
server on a taken port fails with :class:`GrpcBindError` instead of silently sharing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from core.auth import KeyRing
from protos.rlhf.v1 import feedback_pb2, feedback_pb2_grpc, inference_pb2, inference_pb2_grpc
from serving.grpc.servicer import FeedbackServicer, InferenceServicer
from serving.runtime import Runtime

log = logging.getLogger(__name__)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name,
)
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


class GrpcBindError(RuntimeError):
    """The gRPC port could not be bound (taken, or an address this machine lacks)."""


class GrpcServer:
    def __init__(self, runtime: Runtime, keyring: KeyRing):
        self.runtime = runtime
        settings = runtime.settings.grpc
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=settings.max_workers * 64,
            options=[("grpc.max_receive_message_length", settings.max_receive_bytes),
                     ("grpc.so_reuseport", 0)])
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(runtime, keyring), self.server)
        feedback_pb2_grpc.add_FeedbackServicer_to_server(
            FeedbackServicer(runtime, keyring), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, (*SERVICES, health.SERVICE_NAME))
        self.port = self._bind(settings.host, settings.port)
        self._watch: asyncio.Task | None = None

    def _bind(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 = any free port); the port bound."""
        try:  # grpc.aio raises RuntimeError when the bind fails (its core returns port 0)
            return self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise GrpcBindError(
                f"The gRPC server cannot listen on port {port} of {host}: the port is in use "
                f"(or {host} is not an address of this machine); stop what holds it or pick "
                f"another (--grpc-port, RLHF_GRPC__PORT).") from exc

    async def start(self) -> None:
        await self._set_health(False)
        await self.server.start()
        self._watch = asyncio.create_task(self._follow_readiness())
        log.info("gRPC listening on port %d", self.port)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def _follow_readiness(self) -> None:
        """Mirror ``/ready``: SERVING only while loaded and not mid-swap."""
        current = False
        while True:
            ready = self.runtime.policy.ready
            if ready != current:
                await self._set_health(ready)
                current = ready
            await asyncio.sleep(0.1)

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.server.stop(grace)


# -- server reflection ------------------------------------------------------------------

def enable_reflection(server: grpc.aio.Server, services: Iterable[str]) -> None:
    """Serve reflection as ``grpc.reflection.v1`` (what grpcurl and Postman ask first) and
    ``grpc.reflection.v1alpha`` (older clients), both listing ``services`` and themselves.

    grpcio-reflection (1.85) implements only v1alpha. The v1 proto is the same file under
    another package: the same messages with the same field numbers, so the bytes on the
    wire are the same and v1alpha's servicer and (de)serializers answer v1 as well; only
    the method path differs. v1's descriptor is added to the pool so that v1 can be
    described too (``grpcurl describe grpc.reflection.v1.ServerReflection``).
    """
    add_reflection_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer(
        (*services, reflection.SERVICE_NAME, REFLECTION_V1))
    methods = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(name, methods)
                                     for name in (REFLECTION_V1, reflection.SERVICE_NAME)])


def add_reflection_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to ``pool`` (once), made from v1alpha's
    file by renaming its package (and the type names that carry it) and its options."""
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = REFLECTION_V1_FILE, "grpc.reflection.v1"
    proto.options.Clear()  # v1alpha's are v1alpha's java/go packages and deprecated=true
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message fields only; setting "" would mark it
                field.type_name = field.type_name.replace(old, new, 1)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new, 1)
        method.output_type = method.output_type.replace(old, new, 1)
    pool.AddSerializedFile(proto.SerializeToString())
