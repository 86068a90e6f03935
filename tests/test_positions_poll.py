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


async def test_a_vanished_position_never_closes_as_external_a_trade_whose_exit_just_began(
    tmp_path: Path,
) -> None:
    """Two trades on one contract vanish at the venue. While the first one's external close is
    being journaled, the bid collapses and max_loss starts an exit on the second: the poll must
    leave that one to its exit, not close it in the journal as well."""
    h = await standard(tmp_path)  # t1: YES 10 @ 0.50
    await h.open_trade("t2", qty=5, price=0.50)
    await h.tick(1)
    h.venue.close_position(CID, "yes", 15)  # sold at the broker by hand
    real_save = h.store.save_trade
    collapsed = False

    async def save_then_quote(t):  # type: ignore[no-untyped-def]
        nonlocal collapsed
        await real_save(t)
        if t.trade_id == "t1" and t.exit_reason == "external" and not collapsed:
            collapsed = True  # the bid collapses while t1's close is being written
            await h.quote(0.20, 0.22, ts=h.clock.now())

    h.store.save_trade = save_then_quote  # type: ignore[method-assign]
    for dt in range(2, 12):  # a positions poll comes within 5 s: both trades are gone
        await h.tick(dt)
        task = h.engine._positions_task
        if task is not None:
            await task
    assert collapsed
    trades = {t.trade_id: t for t in await h.store.all_trades()}
    assert trades["t1"].exit_reason == "external"
    assert trades["t2"].exit_reason != "external", "t2 was closed twice: by its exit and the poll"
    await h.close()
