"""Hot-swapping the served policy in place, and following ``rlhf.policy`` to do it.

A swap: verify the version's files → close the admission gate and let admitted requests
finish → pause the engine (``mode="wait"``) → reload weights in place → reset the prefix
cache → resume → publish the new version. If any step fails, the previous weights are
reloaded, serving goes on, and the version stays not-live here. Every replica reads
every event (no consumer group): a ``promote``/``rollback`` reaches the whole fleet (each
replica then serves the registry's live version), while a ``swap`` names its ``targets``
and only those replicas act on it: that is how the deploy controller stages a rollout
(a few replicas at a time, a canary share first). Each swap is answered with a
``swapped`` or ``swap_failed`` report carrying the command's id, then a heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.events import InvalidEvent, decode_event
from core.registry import PolicyEvent, Registry, RegistryError
from core.settings import KafkaSettings
from serving.heartbeat import beat, replica_id, run_heartbeats

if TYPE_CHECKING:
    from serving.runtime import Runtime

log = logging.getLogger(__name__)
REPLICA = socket.gethostname()


class SwapFailed(Exception):
    pass


async def swap_policy(runtime: Runtime, version: str) -> None:
    """Serve ``version`` from the registry; raises SwapFailed (old version kept)."""
    engine, policy = runtime.engine, runtime.policy
    if engine is None:
        raise SwapFailed("the engine is still loading")
    if version == policy.version:
        return
    previous = policy.path
    # Hashing a multi-GB checkpoint takes a while: off the event loop, streams go on.
    path = await asyncio.to_thread(preflight, runtime.settings.registry.root, version,
                                   Path(previous))

    async def reload() -> None:
        await engine.pause()
        try:
            await engine.reload_weights(str(path))
        except Exception as exc:
            log.exception("Reloading %s failed; restoring %s", version, previous)
            try:
                await engine.reload_weights(previous)
            except Exception as again:
                # Weights in an unknown state: fail liveness so the pod restarts on the
                # registry's live version.
                runtime.load_error = again
                raise SwapFailed(f"reloading {version} failed and so did restoring "
                                 f"{policy.version}: {again}") from exc
            raise SwapFailed(f"reloading {version} failed: {exc}") from exc
        finally:
            await engine.resume()

    started = time.perf_counter()
    await policy.swap(version, str(path), reload)
    runtime.metrics.swaps.labels(outcome="ok").inc()
    runtime.metrics.swap_seconds.observe(time.perf_counter() - started)
    runtime.metrics.set_policy(version)
    log.info("Now serving %s (swap took %.2fs)", version, time.perf_counter() - started)


def preflight(registry_root: Path, version: str, current: Path) -> Path:
    """The version's directory, once its files match its manifest and its weights fit the
    served model in place; raises SwapFailed otherwise. Blocking (reads every file)."""
    registry = Registry(registry_root)
    try:
        path, problems = registry.path(version), registry.verify(version)
    except RegistryError as exc:
        raise SwapFailed(str(exc)) from exc
    if problems:
        raise SwapFailed(f"{version} failed verification: {', '.join(problems)}")
    mismatch = weight_mismatch(current, path)
    if mismatch:
        raise SwapFailed(f"{version} cannot be reloaded in place: {mismatch}")
    return path


def _tensor_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor, read from safetensors headers (no weights)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def weight_mismatch(current: Path, candidate: Path) -> str | None:
    """Why ``candidate``'s weights cannot replace ``current``'s in place, or None.

    In-place reload needs the same architecture; checking headers first keeps a wrong
    checkpoint from ever reaching the engine.
    """
    old = _tensor_shapes(current)
    try:
        new = _tensor_shapes(candidate)
    except Exception as exc:  # truncated or not safetensors at all
        return f"unreadable weights ({exc})"
    if not new:
        return "no safetensors weights"
    if old.keys() != new.keys():
        return f"different tensors ({len(old.keys() ^ new.keys())} names differ)"
    diff = [n for n in old if old[n] != new[n]]
    if diff:
        return f"{diff[0]} has shape {new[diff[0]]}, the served model {old[diff[0]]}"
    return None


async def report(runtime: Runtime, type_: str, version: str, reason: str = "",
                 command_id: str | None = None) -> None:
    """Tell the deploy controller what happened here (best effort)."""
    if runtime.publisher is None:
        return
    try:
        await runtime.publisher.publish(
            runtime.settings.kafka.topics.policy,
            PolicyEvent(type=type_, version=version, reason=reason,
                        replica=replica_id(runtime.settings), command_id=command_id))
    except Exception:
        log.warning("Could not report %s of %s to %s", type_, version,
                    runtime.settings.kafka.topics.policy, exc_info=True)


async def apply(runtime: Runtime, version: str, command_id: str | None = None) -> None:
    """Swap, then report ``swapped`` or ``swap_failed`` (naming the command) and beat."""
    try:
        await swap_policy(runtime, version)
    except SwapFailed as exc:
        runtime.metrics.swaps.labels(outcome="failed").inc()
        log.error("Swap to %s failed: %s", version, exc)
        await report(runtime, "swap_failed", version, str(exc), command_id)
        await beat(runtime)
        raise
    await report(runtime, "swapped", version, command_id=command_id)
    await beat(runtime)


class PolicyFollower:
    """Consumes ``rlhf.policy`` from its end and applies promote/rollback events."""

    def __init__(self, runtime: Runtime, kafka: KafkaSettings):
        self.runtime, self.kafka = runtime, kafka
        self._stop = False

    async def run(self) -> None:
        """Follow the topic and send heartbeats until stopped (or cancelled)."""
        stop = asyncio.Event()
        beats = asyncio.create_task(run_heartbeats(self.runtime, stop))
        try:
            await self._follow()
        finally:
            stop.set()
            beats.cancel()

    async def _follow(self) -> None:
        consumer: Any = None
        while not self._stop:
            try:
                if consumer is None:
                    consumer = await asyncio.to_thread(self._subscribe)
                batches = await asyncio.to_thread(consumer.poll, 500)
            except Exception:
                log.warning("Following %s failed; retrying", self.kafka.topics.policy,
                            exc_info=True)
                consumer = None
                await asyncio.sleep(2)
                continue
            for records in batches.values():
                for record in records:
                    await self._handle(record.value)
        if consumer is not None:
            consumer.close()

    def _subscribe(self):
        from core.consumer import assign_all_partitions

        consumer, parts = assign_all_partitions(self.kafka, self.kafka.topics.policy)
        consumer.seek_to_end(*parts)
        return consumer

    async def _handle(self, raw: bytes) -> None:
        try:
            event = decode_event(raw, as_type=PolicyEvent)
        except InvalidEvent as exc:
            log.warning("Ignoring an unreadable event on %s: %s", self.kafka.topics.policy, exc)
            return
        if event.kind != "policy" or event.type not in ("promote", "rollback", "swap"):
            return
        me = replica_id(self.runtime.settings)
        if event.type == "swap" and me not in (event.targets or ()):
            return  # a staged rollout step for other replicas
        if self.runtime.engine is None:
            await self.runtime.wait_loaded()
        if event.type == "swap":
            target, command = event.version, event.event_id
        else:
            # The registry's live pointer is the truth: events may be replayed or
            # reordered, so a promote/rollback only says "look again".
            target = Registry(self.runtime.settings.registry.root).live_policy() or event.version
            command = None
        try:
            await apply(self.runtime, target, command)
        except SwapFailed:
            pass  # reported; the previous version keeps serving

    def stop(self) -> None:
        self._stop = True
