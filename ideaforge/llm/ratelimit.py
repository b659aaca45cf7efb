"""Async token bucket: at most ``per_minute`` acquisitions per minute, with a small burst."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``acquire()`` waits until a token is free. Tokens refill continuously at ``per_minute / 60`` per second."""

    def __init__(
        self, per_minute: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"requests_per_minute must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, burst)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in arrival order
            self._refill()
            while self.tokens < 1.0:
                await asyncio.sleep((1.0 - self.tokens) / self.rate)
                self._refill()
            self.tokens -= 1.0
