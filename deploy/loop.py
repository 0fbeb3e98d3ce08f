"""The controller's event loop: consume ``rlhf.policy``, handle each event, commit.

The consumer belongs to a group (``RLHF_DEPLOY__GROUP_ID``), so a restarted controller resumes
after the last event it handled; offsets are committed only after handling. A replayed
candidate is harmless: a version with a gate report is not evaluated again. Messages that
do not decode are logged and skipped; they never stop the loop.
"""

from __future__ import annotations

import asyncio
import logging

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from core.events import InvalidEvent
from deploy.controller import DeployController
from deploy.notices import decode_policy_event
from deploy.settings import DeploySettings

log = logging.getLogger(__name__)


def make_policy_consumer(settings: DeploySettings) -> KafkaConsumer:
    """A group consumer of the policy topic, from the start, committing by hand."""
    return KafkaConsumer(
        settings.kafka.topics.policy,
        **settings.kafka.client_kwargs(),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
        max_poll_interval_ms=settings.max_poll_interval_ms,
    )


async def handle_records(controller: DeployController, values: list[bytes]) -> int:
    """Decode and handle each message in order; returns how many decoded."""
    handled = 0
    for raw in values:
        try:
            notice = decode_policy_event(raw)
        except InvalidEvent as e:
            log.warning("skipping a message on the policy topic: %s", e.reason)
            continue
        try:
            await controller.handle(notice)
        except Exception:  # noqa: BLE001 - one bad version must not stop the controller
            log.exception("handling %s of %s failed", notice.event.type, notice.event.version)
        handled += 1
    return handled


async def consume(controller: DeployController, stop: asyncio.Event) -> None:
    """Poll, handle, commit until ``stop`` is set; reconnects after broker errors.

    Gates take longer than a poll interval, so a batch is handled in a task while the
    partitions are paused and polling goes on: the consumer stays in its group however
    long the gates run, and offsets are committed once the batch is handled.
    """
    settings = controller.settings
    consumer: KafkaConsumer | None = None
    batch: asyncio.Task | None = None
    try:
        while not stop.is_set():
            try:
                if consumer is None:
                    consumer = await asyncio.to_thread(make_policy_consumer, settings)
                live: KafkaConsumer = consumer
                polled = await asyncio.to_thread(live.poll, timeout_ms=settings.poll_timeout_ms)
                records = sorted((r for recs in polled.values() for r in recs),
                                 key=lambda r: r.timestamp)
                if records:
                    live.pause(*live.assignment())
                    batch = asyncio.create_task(
                        handle_records(controller, [r.value for r in records]))
                if batch is not None and batch.done():
                    batch = None
                    await asyncio.to_thread(live.commit)
                    live.resume(*live.paused())
            except KafkaError as e:
                log.warning("policy topic: %s; reconnecting", e)
                if batch is not None:  # its records come again from the last commit
                    await batch
                    batch = None
                if consumer is not None:
                    await asyncio.to_thread(consumer.close)
                consumer = None
                await _pause(stop, 1.0)
    finally:
        if batch is not None:
            await batch  # finish what was started; its offsets are not committed
        if consumer is not None:
            await asyncio.to_thread(consumer.close)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds`` or until stopped, whichever is first."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
