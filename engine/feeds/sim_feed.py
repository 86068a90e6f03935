"""Feeds the simulated market into the engine, one second of market time per step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine.clock import Clock
from engine.sim import SimMarket

if TYPE_CHECKING:
    from engine.supervisor import Engine

STATE_KEY = "sim_state"
SAVE_EVERY_SECONDS = 10.0


class SimFeed:
    """Advances the simulated market to the clock's time every second and hands over its events."""

    name = "sim"

    def __init__(self, market: SimMarket, clock: Clock) -> None:
        self.market = market
        self.clock = clock
        self._last_save = -math.inf

    async def run(self, engine: Engine) -> None:
        while True:
            now = self.clock.now()
            for ev in self.market.advance_to(now):
                await engine.handle_safely(ev)
            if now - self._last_save >= SAVE_EVERY_SECONDS:
                self._last_save = now
                await engine.store.set_state(STATE_KEY, self.market.state(), now)
            await self.clock.sleep(math.floor(now) + 1.0 - now)
