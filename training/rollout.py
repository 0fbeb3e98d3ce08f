"""PPO rollouts on vLLM inside the training process, with in-place weight sync.

The trainer generates with the engine class the server uses (vLLM's ``AsyncLLM``), so
rollouts see the same sampling, tokenisation and kernels as production traffic. After
every optimisation step the trainer pushes its updated weights into the running engine
through vLLM's in-place reload (``collective_rpc`` → worker → ``reload_weights`` →
``model.load_weights``); the engine is never restarted and nothing is written to disk.

vLLM's RPC encoder does not round-trip tensors passed as plain arguments, so the weights
travel as ``(name, dtype, shape, bytes)`` records and ``WeightSyncExtension``, mixed into
vLLM's worker through ``worker_extension_cls``, turns them back into tensors on the
worker's device. On GPUs the same entry point can be swapped for vLLM's NCCL weight
transfer engine; the recipe only sees ``RolloutEngine.sync_weights``.

Run with the ``if __name__ == "__main__":`` guard: the engine spawns processes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

R = TypeVar("R")
EXTENSION = "training.rollout.WeightSyncExtension"


# -- worker side (runs inside vLLM's worker process) -----------------------------------------

def pack_weights(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, str, list[int],
                                                                          bytes]]:
    """(name, dtype, shape, raw bytes) records that vLLM's RPC carries unchanged."""
    records = []
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        records.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), raw))
    return records


def unpack_weights(records: Sequence[Sequence[Any]], device: torch.device | str = "cpu"
                   ) -> list[tuple[str, torch.Tensor]]:
    """Inverse of ``pack_weights``."""
    out = []
    for name, dtype, shape, raw in records:
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0)
        out.append((name, flat.view(getattr(torch, dtype)).reshape(shape).to(device)))
    return out


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); called by collective_rpc."""

    def load_packed_weights(self, records: list) -> int:
        """Reload the model in place from packed checkpoint-format weights; returns count."""
        device = self.model_runner.device  # type: ignore[attr-defined]
        weights = unpack_weights(records, device)
        self.model_runner.reload_weights(weights_iterator=weights)  # type: ignore[attr-defined]
        return len(weights)


# -- trainer side ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One sampled response: token ids and vLLM's log-prob of each sampled token."""

    prompt_ids: list[int]
    response_ids: list[int]
    engine_logprobs: list[float]
    finished: bool  # stopped on EOS (False: cut at max_tokens)


class RolloutEngine:
    """An in-process ``AsyncLLM`` driven from synchronous training code.

    The engine's asyncio loop runs on a private thread; ``generate`` submits all prompts
    at once so vLLM batches them, and ``sync_weights`` reloads weights in place.
    """

    def __init__(self, model: Path | str, *, max_model_len: int, seed: int = 0,
                 max_num_seqs: int = 64, kv_cache_bytes: int = 256 << 20,
                 dtype: str = "float32", gpu_memory_utilization: float = 0.3):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="rollout-engine")
        self._thread.start()
        args = AsyncEngineArgs(
            model=str(model), dtype=dtype, max_model_len=max_model_len, seed=seed,  # type: ignore[arg-type]
            max_num_seqs=max_num_seqs, enforce_eager=True,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=_kv_cache_bytes(kv_cache_bytes),
            worker_extension_cls=EXTENSION, disable_log_stats=True)

        async def start() -> AsyncLLM:
            return AsyncLLM.from_engine_args(args)

        self._llm = self._run(start())
        self.sync_count = 0

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, prompt_ids: Sequence[list[int]], *, max_tokens: int,
                 temperature: float = 1.0, seed: int | None = None) -> list[Sample]:
        """One sampled response per prompt (token ids in, token ids out), in input order."""
        from vllm import SamplingParams

        params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, logprobs=0,
                                 seed=None if seed is None else seed + i)
                  for i in range(len(prompt_ids))]
        return self._run(self._generate_all(prompt_ids, params))

    async def _generate_all(self, prompt_ids: Sequence[list[int]], params: list) -> list[Sample]:
        return list(await asyncio.gather(*(self._generate_one(ids, p)
                                           for ids, p in zip(prompt_ids, params, strict=True))))

    async def _generate_one(self, ids: list[int], params) -> Sample:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self._llm.generate(TokensPrompt(prompt_token_ids=list(ids)), params,
                                            f"rollout-{uuid.uuid4().hex}"):
            final = out
        assert final is not None
        choice = final.outputs[0]
        tokens = list(choice.token_ids)
        logprobs = [step[t].logprob for step, t in zip(choice.logprobs or [], tokens,
                                                       strict=True)]
        return Sample(list(ids), tokens, logprobs, choice.finish_reason == "stop")

    def sync_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Load the trainer's weights (checkpoint names) into the engine; returns seconds.

        Called between rollouts, so no request is in flight; the prefix cache is reset
        because its KV was computed with the old weights.
        """
        t0 = time.perf_counter()
        records = pack_weights(named)
        self._run(self._llm.collective_rpc("load_packed_weights", args=(records,)))
        self._run(self._llm.reset_prefix_cache())
        self.sync_count += 1
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        """Stop the engine's tasks on our loop first (so its exit is not logged as a crash),
        then the engine processes, then the loop."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        self._run(_cancel_other_tasks())
        llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _kv_cache_bytes(requested: int) -> int | None:
    """On CPUs vLLM reserves most of host RAM unless told a KV size; on GPUs it profiles."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return requested
    return None
