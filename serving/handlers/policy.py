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


class PolicyState:
    def __init__(self, version: str, path: str):
        self.version = version
        self.path = path
        self.loaded = False
        self._open = asyncio.Event()
        self._open.set()
        self._active = 0
        self._idle = asyncio.Condition()
        self.observer: Callable[[str, float, str], None] | None = None
        """Called once per admitted request: (version, seconds, ok | error | aborted)."""

    @property
    def swapping(self) -> bool:
        return not self._open.is_set()

    @property
    def ready(self) -> bool:
        return self.loaded and not self.swapping

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[str]:
        """Hold the served version for the lifetime of one request."""
        await self._open.wait()
        self._active += 1
        version, started, outcome = self.version, time.perf_counter(), "error"
        try:
            yield version
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "aborted"
            raise
        finally:
            if self.observer is not None:
                self.observer(version, time.perf_counter() - started, outcome)
            self._active -= 1
            async with self._idle:
                self._idle.notify_all()

    async def swap(self, version: str, path: str,
                   do_swap: Callable[[], Awaitable[None]]) -> None:
        """Drain admitted requests, run ``do_swap``, then publish ``version``.

        If ``do_swap`` raises, the version stays as it was and the error propagates.
        """
        self._open.clear()
        try:
            async with self._idle:
                await self._idle.wait_for(lambda: self._active == 0)
            await do_swap()
            self.version, self.path = version, path
        finally:
            self._open.set()
