"""Injected clocks: the engine never reads the wall clock directly.

`RealClock` is wall time. `ScaledClock` runs `speed` times faster than wall time from a start
instant (the simulated market's fast mode). `ManualClock` only moves when told to (replay and
tests), so scenarios run as fast as the CPU allows and are exactly repeatable.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Current time, Unix seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class RealClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Clock time = start + (wall elapsed) × speed."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._start = time.time() if start is None else start
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._mono0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """A clock that moves only through `set` / `advance`; `sleep` yields control once."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def set(self, ts: float) -> None:
        if ts > self._now:
            self._now = ts

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        # Time only moves when the driver moves it; yield so other tasks run.
        await asyncio.sleep(0)
