"""The venue's positions poll never holds the tick: a positions endpoint that answers slowly (a
retrying Kalshi API can take tens of seconds) leaves staleness checks and the exit ladder's next
step on time, and its answer is applied when it comes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.venues.base import VenuePosition
from tests.engine_harness import CID, T0, config, standard


async def test_a_hanging_positions_poll_does_not_hold_the_ladder_or_staleness(
    tmp_path: Path,
) -> None:
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 5,
            "ladder_step_seconds": 2,
            "ladder_tick": 0.01,
            "ladder_floor": 0.05,
        },
        paper={"slippage": "fixed", "slippage_fixed": 0.20},  # nothing fills: the ladder steps
    )
    h = await standard(tmp_path, cfg)
    h.engine.positions_poll_budget = 0.0  # the tick does not wait for the venue at all
    gate = asyncio.Event()
    real_positions = h.venue.positions
    asked: list[float] = []

    async def slow_positions() -> list[VenuePosition]:
        asked.append(h.clock.now())
        await gate.wait()  # the endpoint hangs until the test lets it answer
        return await real_positions()

    h.venue.positions = slow_positions  # type: ignore[method-assign]
    h.venue.open_position(CID, "no", 7, 0.45)  # opened by hand at the broker meanwhile

    async def tick(dt: float) -> None:
        try:  # a guard, not a timing: before, the tick waited for the venue's answer forever
            async with asyncio.timeout(10):
                await h.tick(dt)
        except TimeoutError:
            raise AssertionError(f"the tick at +{dt:g}s waited for the positions poll") from None

    await tick(5)  # the positions poll is due: it starts and the tick goes on
    assert asked == [T0 + 5]
    # The bid collapses: max_loss fires and the ladder starts; its steps come from the tick.
    await h.quote(0.30, 0.32, ts=T0 + 6)
    first = len(h.venue.submitted)
    assert first == 1
    await tick(8)
    await tick(10)
    assert len(h.venue.submitted) == 3, "the ladder stepped while the poll hung"
    assert asked == [T0 + 5], "one poll at a time"
    # The quotes stop: the tick still sees them go stale.
    await tick(25)
    assert any("quote 19s old" in a.message for a in h.of_kind("data_quality"))

    gate.set()  # the venue answers: the hand-opened NO position is adopted then
    task = h.engine._positions_task
    assert task is not None
    await task
    adopted = [t for t in h.engine.trades.values() if t.side == "no"]
    assert [(t.qty, t.entry_price) for t in adopted] == [(7, 0.45)]
    await h.tick(31)  # the next poll starts again
    assert len(asked) == 2
    await h.engine.flush()
    await h.close()
