"""Frozen prices never look fresh, end to end (`build_runtime` against the loopback TWS gateway,
the REAL ib_async client): a quiet line ages from IB's last tick; 2103 (a market data farm
broken) holds every quote at once, so a rule that would fire sends nothing; 2104 asks every line
again and the rule acts only on the fresh snapshot."""

from __future__ import annotations

from engine.commands import Command
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import IN_PLACE_ORDER, IN_REQ_MKT_DATA, SPREAD, World
from tests.ibkr_world import world as world


async def test_a_quiet_line_goes_stale_from_its_last_tick(world: World) -> None:
    """IB sends nothing more (a halted contract, a silently dead line): the quote is not
    re-stamped by the feed, so the data guard stops the trade once the last tick is older than
    max_quote_age_seconds (3 s here; the feed used to re-stamp it every 2 s, forever)."""
    w = world
    s = await w.start(w.config(engine={"max_quote_age_seconds": 3.0}))
    await s.until(lambda: all(r.time_value is not None for r in s.engine.snapshot().trades), "q")
    spread = s.trades()[SPREAD]
    q0 = s.engine.quotes[SPREAD]
    await s.until(
        lambda: "old" in (s.engine.status[spread.trade_id].problem or ""),
        "the spread's quote stale",
        timeout=6.0,
    )
    assert s.engine.quotes[SPREAD].ts == q0.ts  # never re-stamped
    await s.close()


async def test_2103_holds_at_once_and_the_rule_acts_only_after_2104s_fresh_snapshot(
    world: World,
) -> None:
    w = world
    s = await w.start()
    async with w.market.ticking():
        await s.until(
            lambda: all(r.time_value is not None for r in s.engine.snapshot().trades), "quoted"
        )
        spread = s.trades()[SPREAD]
        w.gw.farm_notice(2103, "usopt")
        await s.until(
            lambda: "farm broken" in (s.engine.status[spread.trade_id].problem or ""),
            "the spread held",
        )
        # a rule that fires at the spread's time value: not on held data
        res = await s.engine.command(
            Command("set_overrides", spread.trade_id, {"min_time_value": 5.0})
        )
        assert res.ok
        t0 = s.engine.clock.now()
        await s.until(lambda: s.engine.clock.now() - t0 > 0.5, "ticks meanwhile")
        assert w.gw.state.requests(IN_PLACE_ORDER) == []
        farm_alerts = [a for a in s.alerts() if "2103" in a.message]
        assert len(farm_alerts) == 1 and farm_alerts[0].data["source"] == "source:ibkr-data"
        lines = len(w.gw.state.requests(IN_REQ_MKT_DATA))
        w.gw.state.queue_outcome(w.market.bag_fill())
        w.gw.farm_notice(2104, "usopt")
        await w.gw.wait_until(lambda: len(w.gw.state.requests(IN_REQ_MKT_DATA)) > lines)
        order = await w.gw.wait_for_order(timeout=5.0)  # on the fresh snapshot
        assert order.contract.sec_type == "BAG"
        await s.until(lambda: SPREAD not in s.trades(), "the spread closed")
    await s.close()
