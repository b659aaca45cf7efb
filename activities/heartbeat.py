"""Heartbeats for activities with no natural progress point (LLM calls), so that a short heartbeat timeout
applies: a worker that died, or a completion lost while the Temporal server was down, is retried within that
timeout instead of after the activity's whole start-to-close time. Heartbeats also carry cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

HEARTBEAT_EVERY_S = 10.0


@contextlib.asynccontextmanager
async def heartbeating(every_s: float | None = None) -> AsyncIterator[None]:
    """Heartbeat every ``every_s`` seconds (default HEARTBEAT_EVERY_S; at most a third of the activity's heartbeat
    timeout) while the body runs."""
    every = every_s or HEARTBEAT_EVERY_S
    timeout = activity.info().heartbeat_timeout
    every = min(every, timeout.total_seconds() / 3) if timeout else every

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
