"""PolicyState: the admission gate that makes a hot-swap atomic for new requests."""

from __future__ import annotations

import asyncio

import pytest

from serving.handlers.policy import PolicyState


async def test_admit_stamps_the_version_served_at_admission() -> None:
    state = PolicyState("policy-0001", "/p1")
    async with state.admit() as version:
        assert version == "policy-0001"


async def test_swap_waits_for_admitted_requests_and_blocks_new_ones() -> None:
    state = PolicyState("policy-0001", "/p1")
    state.loaded = True
    order: list[str] = []
    in_flight = asyncio.Event()
    finish = asyncio.Event()

    async def old_request() -> None:
        async with state.admit() as version:
            order.append(f"start {version}")
            in_flight.set()
            await finish.wait()
            order.append(f"end {version}")

    async def do_swap() -> None:
        order.append("reload")

    request = asyncio.create_task(old_request())
    await in_flight.wait()
    swap = asyncio.create_task(state.swap("policy-0002", "/p2", do_swap))
    await asyncio.sleep(0)
    assert state.swapping and not state.ready  # gate closed while draining

    async def new_request() -> str:
        async with state.admit() as version:
            order.append(f"new {version}")
            return version

    late = asyncio.create_task(new_request())
    await asyncio.sleep(0.01)
    assert "reload" not in order and not late.done()  # nothing passes an in-flight request
    finish.set()
    await asyncio.gather(request, swap)
    assert await late == "policy-0002"
    assert order == ["start policy-0001", "end policy-0001", "reload", "new policy-0002"]
    assert state.ready and (state.version, state.path) == ("policy-0002", "/p2")


async def test_failed_swap_keeps_the_version_and_reopens_the_gate() -> None:
    state = PolicyState("policy-0001", "/p1")
    state.loaded = True

    async def broken() -> None:
        raise RuntimeError("reload failed")

    with pytest.raises(RuntimeError, match="reload failed"):
        await state.swap("policy-0002", "/p2", broken)
    assert (state.version, state.path, state.ready) == ("policy-0001", "/p1", True)
    async with state.admit() as version:
        assert version == "policy-0001"


def test_not_ready_until_loaded() -> None:
    state = PolicyState("policy-0001", "/p1")
    assert not state.ready and not state.swapping
    state.loaded = True
    assert state.ready
