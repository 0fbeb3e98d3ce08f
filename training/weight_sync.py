"""Moving the trainer's weights into the rollout engine in bounded buckets.

The first version of the rollout sync packed every tensor into one RPC message: for a
model of P bytes the trainer held P of packed bytes (plus the msgpack copy) on top of the
model, and vLLM's worker another P while unpacking. At 7B in bf16 that is 14 GB per copy.
Here the weights stream in *buckets* of at most ``bucket_bytes`` (``sync_bucket_mb``):
one bucket is packed, sent and loaded before the next is read, so the extra memory on
either side is one bucket, whatever the model size. A single tensor larger than the limit
travels alone (it is never split: vLLM's loaders take whole checkpoint tensors).

Skipping what did not change: a sync may name the tensors that changed since the last one
(``changed``): parameters that do not require grad are frozen, and with LoRA only the
target modules' merged weights move. vLLM loads checkpoint tensors into *fused* modules
(q/k/v → ``qkv_proj``, gate/up → ``gate_up_proj``) and re-processes a module as a whole,
so a module is either sent whole or not at all: ``expand_to_modules`` adds the siblings
of every changed tensor. Modules not sent keep their current kernel tensors.

Two transports, one contract (``RolloutEngine.sync_weights``):

* CPU / any platform: ``collective_rpc`` into ``training.rollout.WeightSyncExtension``,
  one RPC per bucket inside vLLM's layerwise in-place reload session.
* CUDA: vLLM's own weight-transfer API (``init_weight_transfer_engine`` /
  ``start_weight_update`` / ``update_weights`` / ``finish_weight_update``) with the CUDA
  IPC backend in packed mode: the worker maps the trainer's GPU buffer directly, in
  chunks of ``bucket_bytes``; no bytes cross a socket. (``IpcWeightTransfer``.)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")

FUSED_SIBLINGS: dict[str, str] = {
    "q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
}
"""Checkpoint module names vLLM fuses into one module (Llama, Mistral, Qwen families)."""


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver needs to rebuild one tensor from a bucket's buffer."""

    name: str
    dtype: str  # torch dtype name without the "torch." prefix
    shape: tuple[int, ...]
    offset: int  # byte offset in the bucket's buffer
    nbytes: int


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def bucketize(items: Iterable[T], size: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` whose sizes sum to at most ``limit``, in order.

    Streaming: an item is read only when the current bucket is being filled, so the
    caller materialises one bucket at a time. An item larger than ``limit`` forms a bucket
    of its own. ``limit`` must be positive.
    """
    if limit <= 0:
        raise ValueError(f"bucket limit must be positive, got {limit}")
    bucket: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if bucket and used + n > limit:
            yield bucket
            bucket, used = [], 0
        bucket.append(item)
        used += n
    if bucket:
        yield bucket


def pack_bucket(named: Sequence[tuple[str, torch.Tensor]]
                ) -> tuple[list[tuple[str, str, list[int], int, int]], bytes]:
    """One bucket → (header rows ``(name, dtype, shape, offset, nbytes)``, one buffer).

    Plain lists and bytes: what vLLM's RPC encoder carries unchanged.
    """
    header, parts, offset = [], [], 0
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), offset,
                       len(raw)))
        parts.append(raw)
        offset += len(raw)
    return header, b"".join(parts)


def unpack_bucket(header: Sequence[Sequence[Any]], raw: bytes | bytearray | memoryview,
                  device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
    """Inverse of ``pack_bucket``: (name, tensor) pairs in the packed order."""
    buf = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if len(raw) else None
    out = []
    for name, dtype, shape, offset, size in header:
        dt = getattr(torch, dtype)
        if size == 0 or buf is None:
            t = torch.empty(list(shape), dtype=dt)
        else:
            t = buf[offset:offset + size].view(dt).reshape(list(shape))
        out.append((name, t.to(device)))
    return out


def module_key(name: str) -> str:
    """The engine module a checkpoint tensor loads into: its parent module path, fused
    siblings (``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``) mapped to one."""
    parent, _, _leaf = name.rpartition(".")
    head, _, module = parent.rpartition(".")
    fused = FUSED_SIBLINGS.get(module)
    if fused is None:
        return parent
    return f"{head}.{fused}" if head else fused


def expand_to_modules(changed: Collection[str], names: Iterable[str]) -> set[str]:
    """``changed`` plus every tensor of ``names`` that loads into the same engine module."""
    keys = {module_key(n) for n in changed}
    return {n for n in names if module_key(n) in keys} | set(changed)


def select_changed(named: Iterable[tuple[str, torch.Tensor]], changed: Collection[str] | None
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """The pairs whose name is in ``changed`` (all when None), lazily, in order."""
    for name, t in named:
        if changed is None or name in changed:
            yield name, t


def trainable_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of parameters that require grad: the only ones an optimiser moves."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def bucket_stats(named: Iterable[tuple[str, torch.Tensor]], limit: int) -> list[int]:
    """Byte size of each bucket ``bucketize`` would send (benchmarks, tests)."""
    return [sum(nbytes(t) for _, t in b) for b in bucketize(named, lambda p: nbytes(p[1]),
                                                           limit)]


# -- CUDA: vLLM's weight-transfer API over CUDA IPC ------------------------------------------

class AsyncLLMSyncClient:
    """``VLLMWeightSyncClient`` over an in-process ``AsyncLLM`` driven from sync code.

    ``run`` submits a coroutine to the engine's loop and waits (``RolloutEngine._run``).
    IPC handles are not msgpack-native, so they are pickled (the path vLLM's own HTTP
    client takes); the engine was started with VLLM_ALLOW_INSECURE_SERIALIZATION=1 in its
    private processes, and nothing but this process talks to them.
    """

    def __init__(self, llm: Any, run: Callable[[Any], Any]):
        self._llm, self._run = llm, run

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        self._run(self._llm.init_weight_transfer_engine(
            WeightTransferInitRequest(init_info=init_info)))

    def start_weight_update(self) -> None:
        self._run(self._llm.start_weight_update())

    def update_weights(self, update_info: Any) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest
        from vllm.distributed.weight_transfer.clients import _json_safe_update_payload

        self._run(self._llm.update_weights(
            WeightTransferUpdateRequest(update_info=_json_safe_update_payload(update_info))))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._run(self._llm.finish_weight_update(weight_version))


class IpcWeightTransfer:
    """The GPU transport: vLLM's IPC trainer engine in packed mode, ``bucket_bytes`` chunks.

    The trainer engine is bound to a ``WeightSource`` once; each ``send`` points that
    source at the step's (name, tensor) stream (all weights, or only changed modules).
    Tensors must already be on the trainer's CUDA device.
    """

    def __init__(self, llm: Any, run: Callable[[Any], Any], bucket_bytes: int, rank: int = 0):
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        class _StepSource(WeightSource):
            """One pass over the step's stream, read lazily (IPC reads no metadata)."""

            def __init__(self) -> None:
                self.items: Iterable[tuple[str, torch.Tensor]] = ()
                self.sent = 0

            def metadata(self) -> list[ParamMeta]:
                raise NotImplementedError("the IPC backend streams without metadata")

            def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
                for name, t in self.items:
                    self.sent += 1
                    yield name, t.detach()

        self._source = _StepSource()
        self._engine = WeightTransferTrainerFactory.trainer_init(
            IPCTrainerInitInfo(packed=True, packed_buffer_size_bytes=bucket_bytes, rank=rank),
            client=AsyncLLMSyncClient(llm, run), source=self._source)

    def send(self, named: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Push ``named`` into the engine (start, packed chunks, finish); returns count."""
        self._source.items, self._source.sent = named, 0
        try:
            self._engine.send_weights()
            return self._source.sent
        finally:
            self._source.items = ()

    def shutdown(self) -> None:
        self._engine.shutdown()
