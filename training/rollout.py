"""PPO rollouts on vLLM inside the training process, with in-place weight sync.

The trainer generates with the engine class the server uses (vLLM's ``AsyncLLM``), so
rollouts see the same sampling, tokenisation and kernels as production traffic. After
every optimisation step the trainer pushes its updated weights into the running engine
through vLLM's in-place reload (``collective_rpc`` → worker → ``reload_weights`` →
``model.load_weights``); the engine is never restarted and nothing is written to disk.

vLLM's RPC encoder does not round-trip tensors passed as plain arguments, so the weights
travel as packed buffers and ``WeightSyncExtension``, mixed into vLLM's worker through
``worker_extension_cls``, turns them back into tensors on the worker's device. They
travel in buckets of at most ``sync_bucket_mb`` (``training.weight_sync``), so neither
side holds a second copy of the model, and a sync can skip the modules that did not
change (frozen weights, LoRA). On CUDA the transport is vLLM's own weight-transfer API
(CUDA IPC, packed); the recipe only sees ``RolloutEngine.sync_weights``.

Run with the ``if __name__ == "__main__":`` guard: the engine spawns processes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from training.weight_sync import (
    IpcWeightTransfer,
    bucketize,
    nbytes,
    pack_bucket,
    select_changed,
)

DEFAULT_BUCKET_MB = 256
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


LAYERWISE_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); called by collective_rpc.

    Two ways in: ``load_packed_weights`` (the whole model in one message, vLLM's
    ``reload_weights``) and the bucketed session ``begin_bucketed_update`` →
    ``load_weight_bucket``… → ``end_bucketed_update``, the same layerwise in-place reload
    fed one bucket at a time: a module is re-processed as soon as all its tensors have
    arrived, and modules never sent keep their kernel tensors.
    """

    def load_packed_weights(self, records: list) -> int:
        """Reload the model in place from packed checkpoint-format weights; returns count."""
        device = self.model_runner.device  # type: ignore[attr-defined]
        weights = unpack_weights(records, device)
        self.model_runner.reload_weights(weights_iterator=weights)  # type: ignore[attr-defined]
        return len(weights)

    def begin_bucketed_update(self, partial: bool = False) -> None:
        """Open a layerwise reload session; ``partial``: some modules will not be sent
        (their "failed to load" warning is expected and silenced until the session ends)."""
        import logging

        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        log = logging.getLogger(LAYERWISE_LOGGER)
        self._rlhf_log_level = log.level  # type: ignore[attr-defined]
        if partial:
            log.setLevel(logging.ERROR)
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(self.model_runner.get_model())  # type: ignore[attr-defined]

    def load_weight_bucket(self, header: list, raw: bytes) -> int:
        """Load one bucket (``training.weight_sync.pack_bucket``); returns tensor count."""
        from vllm.config import set_current_vllm_config

        from training.weight_sync import unpack_bucket

        weights = unpack_bucket(header, raw, self.model_runner.device)  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            self.model_runner.get_model().load_weights(weights)  # type: ignore[attr-defined]
        return len(weights)

    def end_bucketed_update(self) -> None:
        """Process what is left (attention layers, modules not sent) and close the session."""
        import logging

        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        runner = self.model_runner  # type: ignore[attr-defined]
        try:
            with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
                finalize_layerwise_reload(runner.get_model(),
                                          self.vllm_config.model_config)  # type: ignore[attr-defined]
        finally:
            logging.getLogger(LAYERWISE_LOGGER).setLevel(
                getattr(self, "_rlhf_log_level", logging.NOTSET))
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            if hasattr(runner, reset):
                getattr(runner, reset)()


# -- trainer side ----------------------------------------------------------------------------

def checkpoint_dtype(model: Path | str) -> str:
    """The dtype a checkpoint's config.json declares (``float32`` when it declares none).

    Not vLLM's ``auto``, which serves an fp32 checkpoint in half precision: the trainer's
    fp32 log-probs would then differ from the engine's by ~1e-2.
    """
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(model), "dtype", None) or torch.float32
    return str(dtype).removeprefix("torch.")


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
                 dtype: str = "auto", gpu_memory_utilization: float = 0.3,
                 sync_bucket_mb: int | None = DEFAULT_BUCKET_MB,
                 weight_transfer: str = "auto", sleep_mode: bool = False,
                 enforce_eager: bool | None = None):
        """``sync_bucket_mb``: largest bucket a sync sends (None/0 = the whole model in one
        message, the old path, kept for comparison). ``weight_transfer``: ``rpc``
        (collective_rpc, any platform), ``ipc`` (vLLM's CUDA IPC weight-transfer engine),
        ``auto`` = ipc when CUDA is available. ``sleep_mode``: let ``sleep``/``wake_up``
        free the engine's GPU memory while the trainer updates (colocated engine).
        ``dtype``: the engine's (``auto`` = the checkpoint's own, ``checkpoint_dtype``); synced
        weights are cast to it on the trainer side. ``enforce_eager``: None = eager on CPU,
        CUDA graphs on a GPU."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.transport = resolve_transport(weight_transfer)
        self.bucket_bytes = (sync_bucket_mb << 20) if sync_bucket_mb else None
        extra: dict[str, Any] = {}
        if self.transport == "ipc":
            from vllm.config.weight_transfer import WeightTransferConfig

            # IPC handles ride collective_rpc pickled; these are our own engine processes.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
            extra["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
        if sleep_mode:
            extra["enable_sleep_mode"] = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="rollout-engine")
        self._thread.start()
        args = AsyncEngineArgs(
            model=str(model), max_model_len=max_model_len, seed=seed,
            dtype=checkpoint_dtype(model) if dtype == "auto" else dtype,  # type: ignore[arg-type]
            max_num_seqs=max_num_seqs,
            enforce_eager=(not torch.cuda.is_available() if enforce_eager is None
                           else enforce_eager),
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=_kv_cache_bytes(kv_cache_bytes),
            worker_extension_cls=EXTENSION, disable_log_stats=True, **extra)

        async def start() -> AsyncLLM:
            return AsyncLLM.from_engine_args(args)

        self._llm = self._run(start())
        self.weight_dtype: torch.dtype = self._llm.model_config.dtype
        self.sync_count = 0
        self.last_sync: dict[str, float] = {}
        self._ipc: IpcWeightTransfer | None = None

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

    def sync_weights(self, named: Iterable[tuple[str, torch.Tensor]], *,
                     changed: Collection[str] | None = None) -> float:
        """Load the trainer's weights (checkpoint names) into the engine; returns seconds.

        ``changed``: names of the tensors that moved since the last sync (None = all);
        the others are not sent (``training.weight_sync.expand_to_modules`` first, so a
        fused module is sent whole). Streams in buckets of ``sync_bucket_mb`` (one message
        when that is unset). Called between rollouts, so no request is in flight; the
        prefix cache is reset because its KV was computed with the old weights.
        ``last_sync`` records buckets, tensors and bytes sent.
        """
        t0 = time.perf_counter()
        selected = ((n, t.to(self.weight_dtype) if t.is_floating_point() else t)
                    for n, t in select_changed(named, changed))
        if self.transport == "ipc":
            stats = self._sync_ipc(selected)
        elif self.bucket_bytes is None:
            stats = self._sync_one_message(selected)
        else:
            stats = self._sync_buckets(selected, partial=changed is not None)
        self._run(self._llm.reset_prefix_cache())
        self.sync_count += 1
        self.last_sync = {**stats, "seconds": time.perf_counter() - t0}
        return self.last_sync["seconds"]

    def _sync_one_message(self, named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        records = pack_weights(named)
        size = sum(len(r[3]) for r in records)
        self._run(self._llm.collective_rpc("load_packed_weights", args=(records,)))
        return {"buckets": 1, "tensors": len(records), "bytes": size, "max_bucket_bytes": size}

    def _sync_buckets(self, named: Iterable[tuple[str, torch.Tensor]], partial: bool
                      ) -> dict[str, float]:
        assert self.bucket_bytes is not None
        buckets = tensors = total = biggest = 0
        self._run(self._llm.collective_rpc("begin_bucketed_update", args=(partial,)))
        try:
            for bucket in bucketize(named, lambda p: nbytes(p[1]), self.bucket_bytes):
                header, raw = pack_bucket(bucket)
                self._run(self._llm.collective_rpc("load_weight_bucket", args=(header, raw)))
                buckets, tensors = buckets + 1, tensors + len(header)
                total, biggest = total + len(raw), max(biggest, len(raw))
                del header, raw
        finally:
            self._run(self._llm.collective_rpc("end_bucketed_update"))
        return {"buckets": buckets, "tensors": tensors, "bytes": total,
                "max_bucket_bytes": biggest}

    def _sync_ipc(self, named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        if self._ipc is None:
            self._ipc = IpcWeightTransfer(self._llm, self._run,
                                          self.bucket_bytes or DEFAULT_BUCKET_MB << 20)
        count = self._ipc.send((n, t.cuda()) for n, t in named)
        return {"buckets": -1, "tensors": count, "bytes": -1, "max_bucket_bytes": -1}

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory (level 1: weights to CPU, KV cache dropped) while
        the trainer works; needs ``sleep_mode=True``. ``wake_up`` before generating."""
        self._run(self._llm.sleep(level))

    def wake_up(self) -> None:
        self._run(self._llm.wake_up())

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


def resolve_transport(requested: str) -> str:
    """``auto`` → ``ipc`` on CUDA, else ``rpc``; ``ipc`` without CUDA is an error."""
    if requested not in ("auto", "rpc", "ipc"):
        raise ValueError(f"weight_transfer must be auto, rpc or ipc, got {requested!r}")
    cuda = torch.cuda.is_available()
    if requested == "ipc" and not cuda:
        raise ValueError("weight_transfer=ipc needs CUDA; use rpc")
    return ("ipc" if cuda else "rpc") if requested == "auto" else requested


def _kv_cache_bytes(requested: int) -> int | None:
    """On CPUs vLLM reserves most of host RAM unless told a KV size; on GPUs it profiles."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return requested
    return None
