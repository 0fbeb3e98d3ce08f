"""Fleet membership: each replica announces itself on ``rlhf.policy`` every few seconds.

A ``heartbeat`` PolicyEvent carries the replica's id, HTTP URL, served version and
readiness. The deploy controller folds them into its fleet table (a replica not heard
from for ``RLHF_ROLLOUT__STALE_AFTER_S`` drops out), addresses staged swaps to the ids
it sees, and scrapes each URL's /metrics for the per-version online evaluation. A
heartbeat also goes out right after every swap, so the table follows swaps at once.
Publishing is best effort: a broker outage only makes the replica look stale.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from core.registry import PolicyEvent

if TYPE_CHECKING:
    from serving.runtime import Runtime
    from serving.settings import ServeSettings

log = logging.getLogger(__name__)


def replica_id(settings: ServeSettings) -> str:
    """This replica's id: RLHF_REPLICA__ID, else the host name (the pod name)."""
    return settings.replica.id or socket.gethostname()


def replica_url(settings: ServeSettings) -> str:
    """Where the controller reaches this replica: RLHF_REPLICA__URL, else the bind address
    (the host name when bound to all interfaces) and RLHF_HTTP__PORT."""
    if settings.replica.url:
        return settings.replica.url.rstrip("/")
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{settings.http.port}"


def heartbeat_event(runtime: Runtime) -> PolicyEvent:
    """What this replica is now: id, URL, served version, ready (loaded and not swapping)."""
    policy = runtime.policy
    return PolicyEvent(type="heartbeat", version=policy.version,
                       replica=replica_id(runtime.settings), url=replica_url(runtime.settings),
                       ready=policy.ready, reason="swapping" if policy.swapping else "")


async def beat(runtime: Runtime) -> None:
    """Publish one heartbeat; logs and returns on a broker error."""
    if runtime.publisher is None:
        return
    try:
        await runtime.publisher.publish(runtime.settings.kafka.topics.policy,
                                        heartbeat_event(runtime))
    except Exception as exc:  # noqa: BLE001 - membership is best effort
        log.debug("Heartbeat not published: %s", exc)


async def run_heartbeats(runtime: Runtime, stop: asyncio.Event) -> None:
    """Beat every ``heartbeat_interval_s`` until ``stop`` is set."""
    interval = runtime.settings.replica.heartbeat_interval_s
    while not stop.is_set():
        await beat(runtime)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
