"""A token bucket with an injectable clock, one per Kalshi budget (reads, writes).

Kalshi limits reads and writes with separate token buckets. We keep our own, sized from the
config, so we stay under the venue's limit instead of discovering it through 429s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["TokenBucket"]


async def _real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class TokenBucket:
    """`rate` tokens per second, holding at most `capacity`; each request takes one token.

    With `capacity` 1 requests are spaced at least 1/rate apart, so any one-second window sees
    at most `rate` of them (the conservative default: we do not know the venue's burst size).
    A larger capacity allows bursts of that many on top of the steady rate.

    `clock` is a monotonic time in seconds and `sleep` waits; both are injectable so tests can
    check the schedule without real waiting. Waiters are served in arrival order.
    """

    def __init__(
        self,
        rate: float,
        capacity: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = _real_sleep,
    ) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("rate must be > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1 - 1e-9:  # float dust must not cost a second sleep
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self.rate)
