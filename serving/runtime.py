"""Everything one serving process holds: engine, tokenizer, policy state, handlers.

HTTP and gRPC both read this one object, so they serve the same engine through the
same handlers. The engine loads in the background: the ports answer at once, and
``/ready`` (and gRPC health) say SERVING only when the model is loaded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from core.auth import KeyRing
from core.errors import EngineUnavailable
from serving.engine import Engine, VllmEngine
from serving.handlers.feedback import FeedbackHandler, RecentCompletions, RememberingSink
from serving.handlers.openai import OpenAIHandler
from serving.handlers.policy import PolicyState
from serving.metrics import ServingMetrics
from serving.settings import ServeSettings

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: ServeSettings, model_path: str, version: str):
        self.settings = settings
        self.metrics = ServingMetrics()
        self.policy = PolicyState(version=version, path=model_path)
        self.policy.observer = self.metrics.observe_request
        self.model_name = settings.served_model_name or Path(model_path).name
        self.keyring = KeyRing.from_settings(settings.auth)
        self.engine: Engine | None = None
        self.generation: OpenAIHandler | None = None
        self.recent = RecentCompletions()
        self.sink, self.publisher = self._event_publishers(settings)
        self.feedback = FeedbackHandler(self.publisher, settings.kafka.topics.feedback,
                                        self.recent, settings.limits.max_feedback_batch)
        self.load_error: BaseException | None = None
        self._load_task: asyncio.Task | None = None
        self.metrics.set_policy(version)

    def _event_publishers(self, settings: ServeSettings):
        """The completion log (fire-and-forget, buffered) and the feedback publisher (waits
        for the broker's ack). Both connect lazily: a down broker never blocks start-up."""
        if not settings.publish_events:
            log.warning("RLHF_PUBLISH_EVENTS=false: completions are not logged and the "
                        "feedback API answers 503.")
            return None, None
        from core.producer import CompletionLogPublisher, FeedbackPublisher

        log_publisher = CompletionLogPublisher(
            settings.kafka, buffer_size=settings.event_buffer_size,
            registry=self.metrics.registry, spill_dir=settings.spill_dir(),
            replay_interval_s=settings.event_replay_interval_s)
        return RememberingSink(log_publisher, self.recent), FeedbackPublisher(settings.kafka)

    def generation_handler(self) -> OpenAIHandler:
        """The generation handler; 503 while the model is still loading (or failed to)."""
        if self.generation is None:
            raise EngineUnavailable("The model is still loading; retry when /ready says so.")
        return self.generation

    def start_loading(self) -> None:
        self._load_task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            path = self.policy.path
            engine = await asyncio.to_thread(VllmEngine, path, self.settings.engine,
                                             self.model_name)
            self.engine = engine
            self.metrics.bind_engine(engine)
            stats = engine.stats
            self.generation = OpenAIHandler(
                engine.client, self.model_name, path, self.policy, self.metrics,
                sink=self.sink, default_max_tokens=self.settings.default_max_tokens,
                max_waiting=self.settings.engine.max_waiting_requests,
                limits=self.settings.limits, waiting=lambda: stats.waiting,
                options=self.settings.openai)
            # As vLLM's own server does after start-up: the heap built so far (torch,
            # transformers, vLLM) is never collected, so full collections stop rescanning it.
            from vllm.utils.gc_utils import freeze_gc_heap

            freeze_gc_heap()
            self.policy.loaded = True
            log.info("Serving %s (policy %s)", self.model_name, self.policy.version)
        except Exception as exc:  # surfaced by /health and the process exit code
            self.load_error = exc
            log.exception("Loading the model failed")

    async def wait_loaded(self, timeout: float | None = None) -> None:
        if self._load_task is not None:
            await asyncio.wait_for(asyncio.shield(self._load_task), timeout)

    async def healthy(self) -> bool:
        if self.load_error is not None:
            return False
        if self.engine is None:
            return True  # still loading is alive; /ready tells loaded apart
        try:
            await self.engine.health()
            return True
        except Exception:
            return False

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.engine is not None:
            self.engine.shutdown()
        if self.sink is not None:
            await asyncio.to_thread(self.sink.close)
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.close)
