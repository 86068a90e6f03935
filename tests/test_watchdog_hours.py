"""The watchdog and a market that is closed (IBKR's nights and weekends, found by the IB exits work).

After the close an option line sends no ticks, so every option trade's quote goes stale: were the
watchdog to count them, every close of the day would raise a critical UNPROTECTED alert for the
whole book, true but not actionable, and a trader would learn to ignore the badge. While the
venue says the contract's market is closed (`exit_hold` answers MARKET_CLOSED), a trade is
"market closed" instead: shown so, counted apart, and its watchdog clock restarts at the open.
"""

from __future__ import annotations

from typing import Any

from tests.engine_harness import Harness, RecordingVenue, config

LIMIT = 13.0


class HoursVenue(RecordingVenue):
    """The paper broker with exchange hours: closed while `closed` is True."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.closed = False

    def exit_hold(self, contract_id: str) -> str | None:
        if self.closed:
            return "MARKET_CLOSED: XNYS is closed; exit due at the open (Tue 09:30 ET)"
        return None


async def engine(tmp_path) -> Harness:
    h = await Harness(tmp_path, config(auto_stop={"criteria": {"max_loss_percent": 30}})).open()
    venue = HoursVenue(h.cfg.paper, h.quotes.get, state_path=tmp_path / "p.json", name="sim")
    h.venue = venue
    h.engine.venue = venue
    await h.contract()
    await h.spot(97100.0)
    await h.quote(0.50, 0.52)
    await h.start()
    await h.open_trade()
    return h


async def test_a_closed_market_is_not_unprotected_and_the_clock_restarts_at_the_open(tmp_path):
    h = await engine(tmp_path)
    venue: HoursVenue = h.venue  # type: ignore[assignment]
    venue.closed = True  # 16:00: the line goes quiet
    for s in range(1, 120):
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    snap = h.engine.snapshot()
    assert snap.unprotected == ()
    assert not [a for a in h.alerts if "UNPROTECTED" in a.message]
    assert snap.trades[0].state == "mkt closed"
    assert h.engine._heartbeat(h.clock.now())["market_closed"] == ["t1"]

    venue.closed = False  # 09:30: the open; no fresh quote yet
    for s in range(120, 120 + int(LIMIT)):
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    assert h.engine.snapshot().unprotected == ()  # the grace restarted at the open
    for s in range(120 + int(LIMIT), 120 + int(LIMIT) + 3):
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    # Still no quote well after the open: that is a real outage, and it is said.
    assert [u.trade_id for u in h.engine.snapshot().unprotected] == ["t1"]
    assert len([a for a in h.alerts if "UNPROTECTED" in a.message]) == 1
    await h.close()


async def test_a_trade_unprotected_before_the_close_is_ended_as_market_closed(tmp_path):
    h = await engine(tmp_path)
    venue: HoursVenue = h.venue  # type: ignore[assignment]
    for s in range(1, int(LIMIT) + 3):  # quotes stop while the market is open: unprotected
        h.at(s)
        await h.spot(97100.0)
        await h.tick()
    assert [u.trade_id for u in h.engine.snapshot().unprotected] == ["t1"]
    venue.closed = True
    h.at(LIMIT + 4)
    await h.tick()
    assert h.engine.snapshot().unprotected == ()
    [end] = [a for a in h.alerts if "market closed" in a.message]
    assert "t1" in end.message
    await h.close()
