"""Which policy version is being served, and the gate that makes a swap atomic.

A request passes ``admit()`` and reads the version once; a swap closes the gate, waits
until every admitted request has finished, swaps, and only then publishes the new
version. So a response's ``policy_version`` is always the weights that produced it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


class Lease:
    """One admitted request's hold on the served version, released exactly once."""

    def __init__(self, state: PolicyState):
        self._state = state
        self.version = state.version
        self.started = time.perf_counter()
        self._held = True

    def release(self, outcome: str | None) -> None:
        """Let a swap proceed; ``outcome`` (ok, error, aborted) is observed per version,
        None observes nothing (a request refused as invalid was never answered)."""
        if not self._held:
            return
        self._held = False
        state = self._state
        if outcome is not None and state.observer is not None:
            state.observer(self.version, time.perf_counter() - self.started, outcome)
        state._active -= 1
        if state._active == 0:
            state._drained.set()


class PolicyState:
    def __init__(self, version: str, path: str):
        self.version = version
        self.path = path
        self.loaded = False
        self._open = asyncio.Event()
        self._open.set()
        self._active = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self.observer: Callable[[str, float, str], None] | None = None
        """Called once per admitted request: (version, seconds, ok | error | aborted)."""

    @property
    def swapping(self) -> bool:
        return not self._open.is_set()

    @property
    def ready(self) -> bool:
        return self.loaded and not self.swapping

    async def lease(self) -> Lease:
        """Wait while a swap runs, then hold the served version until ``release``."""
        await self._open.wait()
        self._active += 1
        self._drained.clear()
        return Lease(self)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[str]:
        """Hold the served version for the lifetime of one request."""
        lease = await self.lease()
        outcome = "error"
        try:
            yield lease.version
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "aborted"
            raise
        finally:
            lease.release(outcome)

    async def swap(self, version: str, path: str,
                   do_swap: Callable[[], Awaitable[None]]) -> None:
        """Drain admitted requests, run ``do_swap``, then publish ``version``.

        If ``do_swap`` raises, the version stays as it was and the error propagates.
        """
        self._open.clear()
        try:
            await self._drained.wait()
            await do_swap()
            self.version, self.path = version, path
        finally:
            self._open.set()
