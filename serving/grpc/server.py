"""The gRPC server: the two servicers, standard health (NOT_SERVING while the model loads
or a policy swap runs) and server reflection, on the serving process's event loop."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.auth import KeyRing
from protos.rlhf.v1 import feedback_pb2, feedback_pb2_grpc, inference_pb2, inference_pb2_grpc
from serving.grpc.servicer import FeedbackServicer, InferenceServicer
from serving.runtime import Runtime

log = logging.getLogger(__name__)

SERVICES = (
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name,
)


class GrpcServer:
    def __init__(self, runtime: Runtime, keyring: KeyRing):
        self.runtime = runtime
        settings = runtime.settings.grpc
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=settings.max_workers * 64,
            options=[("grpc.max_receive_message_length", settings.max_receive_bytes)])
        inference_pb2_grpc.add_InferenceServicer_to_server(
            InferenceServicer(runtime, keyring), self.server)
        feedback_pb2_grpc.add_FeedbackServicer_to_server(
            FeedbackServicer(runtime, keyring), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.port}")
        self._watch: asyncio.Task | None = None

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
