"""IBKR contracts as IB really lists them, end to end (`build_runtime` against the loopback TWS
gateway, the REAL ib_async client): SPX options of the SPX (monthly) and SPXW (weekly) trading
classes share symbol, expiry, strike and right, and differ only by trading class and conId.
Each is its own trade, quoted by its conId, and supervised: a rule on the SPXW option closes
the SPXW option, never its SPX twin."""

from __future__ import annotations

import pytest

from engine.models import TradeState
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import IN_PLACE_ORDER, World, expiry, oid
from tests.ibkr_world import world as world
from tests.tws_gateway import option_contract

SPX_CON_ID, SPXW_CON_ID = 950_001, 950_002


def _spx(world: World) -> tuple[str, str]:
    st = world.gw.state
    spx = option_contract(SPX_CON_ID, "SPX", expiry(), 5000.0, "C", trading_class="SPX")
    spxw = option_contract(SPXW_CON_ID, "SPX", expiry(), 5000.0, "C", trading_class="SPXW")
    for c in (spx, spxw):
        st.add_contract_details(c)
    st.add_position(spx, 1, 1000.0, market_price=12.2)  # bought at 10.00
    st.add_position(spxw, 1, 800.0, market_price=0.7)  # bought at 8.00
    world.gw.quote(SPX_CON_ID, bid=12.0, ask=12.4)  # time value 12.20: safe
    world.gw.quote(SPXW_CON_ID, bid=0.60, ask=0.80)  # time value 0.70 < min_time_value 1.00
    for con_id in (SPX_CON_ID, SPXW_CON_ID):
        world.gw.option_computation(con_id, implied_vol=0.15, delta=0.2, und_price=4900.0)
    return f"SPX {expiry()} 5000C", f"SPX {expiry()} 5000C SPXW"


async def test_spx_and_spxw_are_two_trades_each_quoted_and_the_spxw_one_supervised(
    world: World,
) -> None:
    w = world
    spx_id, spxw_id = _spx(w)
    s = await w.start()
    trades = await s.until(
        lambda: (t := s.trades()) and {spx_id, spxw_id} <= t.keys() and t,
        "both SPX options adopted",
    )
    assert trades.keys() == {spx_id, spxw_id, "SPY v-1", oid(150, "C")}
    assert trades[spx_id].entry_price == pytest.approx(10.0)
    assert trades[spxw_id].entry_price == pytest.approx(8.0)
    # each quoted by its own line
    await s.until(lambda: s.engine.quotes.get(spx_id), "the SPX option quoted")
    q = await s.until(lambda: s.engine.quotes.get(spxw_id), "the SPXW option quoted")
    assert (q.bid, q.ask) == (0.60, 0.80)
    assert s.engine.quotes[spx_id].bid == 12.0
    subscribed = {r.contract.con_id for r in w.gw.state.mkt_data}
    assert {SPX_CON_ID, SPXW_CON_ID} <= subscribed
    # the SPXW option's time value is under the floor: it alone is closed, on its own conId
    order = await w.gw.wait_for_order(timeout=5.0)
    assert order.contract.con_id == SPXW_CON_ID
    assert (order.action, order.total_quantity) == ("SELL", 1)
    await s.until(lambda: spxw_id not in s.trades(), "the SPXW trade closed")
    assert s.trades()[spx_id].state == TradeState.OPEN
    assert all(o.contract.con_id != SPX_CON_ID for o in w.gw.state.orders)
    assert len(w.gw.state.requests(IN_PLACE_ORDER)) == 1
    await s.close()
