"""A venue whose closing orders rest for a while (IB: a DAY limit order working for
attempt_timeout_seconds): the engine goes on with quotes, other trades and commands while one
exit waits, and never sends a second order for the same exit meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.models import TradeState
from engine.venues.base import OrderRequest, OrderResult
from engine.venues.paper import PaperVenue
from tests.engine_harness import CID, T0, Harness, RecordingVenue, config

CID2 = "KXBTCD-25NOV2415-T98000"


class RestingVenue(RecordingVenue):
    """Each order waits for the test to release it (its `gates[client_order_id]`)."""

    resting_orders = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gates: dict[str, asyncio.Event] = {}
        self.arrived = asyncio.Event()

    async def submit(self, req: OrderRequest) -> OrderResult:
        gate = self.gates.setdefault(req.client_order_id, asyncio.Event())
        self.submitted.append(req)
        self.arrived.set()
        await gate.wait()
        return await PaperVenue.submit(self, req)  # the paper broker's answer

    def release(self, req: OrderRequest) -> None:
        self.gates.setdefault(req.client_order_id, asyncio.Event()).set()


async def _sent(venue: RestingVenue, n: int) -> None:
    """Until `n` orders reached the venue (the exits' tasks run on the loop's next turns)."""
    while len(venue.submitted) < n:
        venue.arrived.clear()
        await asyncio.wait_for(venue.arrived.wait(), 5)


async def _engine(tmp_path: Any) -> Harness:
    h = Harness(tmp_path, config(auto_stop={"criteria": {"max_loss_percent": 30}}))
    await h.open()
    venue = RestingVenue(h.cfg.paper, h.quotes.get, state_path=tmp_path / "p.json", name="sim")
    h.venue = venue
    h.engine.venue = venue
    await h.contract()
    await h.contract(CID2, strike=98000.0)
    await h.spot(97100.0)
    await h.quote(0.50, 0.52)
    await h.quote(0.50, 0.52, cid=CID2)
    await h.start()
    await h.open_trade("t1")
    await h.open_trade("t2", cid=CID2)
    return h


async def test_other_trades_are_protected_while_one_exit_order_rests(tmp_path):
    h = await _engine(tmp_path)
    venue: RestingVenue = h.venue  # type: ignore[assignment]
    await h.quote(0.30, 0.32)  # t1: -40 % -> its order rests at the venue
    await _sent(venue, 1)
    assert [r.contract_id for r in venue.submitted] == [CID]
    assert h.engine.trades["t1"].state == TradeState.CLOSING
    # The engine is not stuck behind it: t2's quote is handled and its own exit goes out.
    await h.quote(0.30, 0.32, cid=CID2)
    await _sent(venue, 2)
    assert [r.contract_id for r in venue.submitted] == [CID, CID2]
    # A tick after the ladder's step sends nothing more for t1: its order is still working.
    await h.tick(10)
    assert len(h.engine._exit_tasks) == 2 and len(venue.submitted) == 2
    for req in list(venue.submitted):
        venue.release(req)
    await h.engine.drain_exits(timeout=5)
    for tid in ("t1", "t2"):
        t = await h.store.get_trade(tid)
        assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "max_loss"
    assert len(venue.submitted) == 2
    await h.close()


async def test_the_ladder_steps_only_after_the_resting_order_is_answered(tmp_path):
    h = await _engine(tmp_path)
    venue: RestingVenue = h.venue  # type: ignore[assignment]
    venue._cfg = venue._cfg.model_copy(update={"reject_probability": 1.0})  # nothing fills
    await h.quote(0.30, 0.32)
    await _sent(venue, 1)
    [first] = venue.submitted
    for dt in (3, 6):  # steps are due, but the first order is still working
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    assert len(h.engine._exit_tasks) == 1 and len(venue.submitted) == 1
    venue.release(first)
    await h.engine.drain_exits(timeout=5)
    await h.quote(0.30, 0.32, ts=T0 + 9)
    await h.tick(9)
    await _sent(venue, 2)
    assert [r.client_order_id for r in venue.submitted] == [
        first.client_order_id,
        f"{first.client_order_id}-2",
    ]
    venue.release(venue.submitted[1])
    await h.engine.drain_exits(timeout=5)
    await h.close()


async def test_a_tick_and_a_positions_poll_while_a_fill_is_being_journaled_close_it_once(
    tmp_path,
):
    """Found by the chaos test: an exit answered in its task marks the trade CLOSED, then waits
    for the journal to book it. A tick meanwhile dropped the exit from the in-flight set (a
    'closed' trade needs no retry), so a positions poll in that window saw the position gone,
    no exit in flight, and closed the trade a second time as external (closed_qty doubled)."""
    h = await _engine(tmp_path)
    venue: RestingVenue = h.venue  # type: ignore[assignment]
    booking = asyncio.Event()
    booked = asyncio.Event()
    real_book = h.store.book_result

    async def slow_book(**kw: Any) -> None:
        if kw.get("intent") and kw["intent"][1] == "filled":
            booking.set()
            await booked.wait()  # the journal's commit takes its time
        await real_book(**kw)

    h.store.book_result = slow_book  # type: ignore[method-assign]
    await h.quote(0.30, 0.32)  # t1: max_loss, its order rests
    await _sent(venue, 1)
    venue.release(venue.submitted[0])
    await booking.wait()  # filled at the venue; the booking is on its way to the journal
    h.at(10)
    await h.spot(97100.0)
    await h.quote(0.30, 0.32, cid=CID2, ts=T0 + 10)
    await h.tick()  # the tick (its exit retries) and the positions poll run in the window
    await h.engine._positions_task
    booked.set()
    await h.engine.drain_exits(timeout=5)
    t = await h.store.get_trade("t1")
    assert t is not None and t.exit_reason == "max_loss"
    assert t.closed_qty == 10 and t.qty == 10
    assert not [a for a in h.alerts if "closed as external" in a.message]
    await h.close()
