"""Issue 19's exhausted ladder at IBKR: on_exhausted = "cross" sends one more order, a marketable
limit at min_price, through the loopback TWS gateway (tests/tws_gateway.py) with the real
ib_async client, and the trade is booked at the fill."""

from __future__ import annotations

import pytest

from engine.models import AlertKind, Severity, TradeState
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import C160, C165, SPREAD, World
from tests.ibkr_world import world as world
from tests.test_ibkr_session import NOT_AVAILABLE, _quoted, _time_values_in
from tests.tws_gateway import Fill, Reject


async def test_at_ibkr_the_cross_is_a_marketable_limit_at_min_price_booked_at_the_fill(
    world: World,
) -> None:
    """TWS refuses the ladder's three BAG orders (0.80, 0.75, 0.70); with on_exhausted = "cross"
    a fourth SELL goes at min_price 0.05, a marketable limit, and fills at the market, as TWS
    does, better than its limit (legs 1.35 − 0.60 = 0.75): booked at 0.75, not at the limit."""
    w = world
    s = await w.start(w.config(ladder={"on_exhausted": "cross"}))
    await _time_values_in(s)
    spread = s.trades()[SPREAD]
    w.gw.state.queue_outcome(
        Reject(201, NOT_AVAILABLE),
        Reject(201, NOT_AVAILABLE),
        Reject(201, NOT_AVAILABLE),
        Fill(price=0.75, commission=1.0, leg_prices={C160.con_id: 1.35, C165.con_id: 0.60}),
    )
    await _quoted(s, w, (C165, 0.50, 0.60), (C160, 1.40, 1.60))
    await s.until(lambda: spread.trade_id not in s.engine.trades, "the spread closed")
    [intent] = await s.rt.store.intents_for_trade(spread.trade_id)
    coid = intent["intent_id"]
    bags = w.bag_orders()
    assert [(o.order_ref, o.lmt_price) for o in bags] == [
        (coid, 0.80),
        (f"{coid}-2", pytest.approx(0.75)),
        (f"{coid}-3", pytest.approx(0.70)),
        (f"{coid}-4", pytest.approx(0.05)),
    ]
    t = await s.rt.store.get_trade(spread.trade_id)
    assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "min_time_value"
    assert t.exit_price == pytest.approx(0.75)
    crit = [
        a
        for a in s.alerts(AlertKind.EXECUTION_FAILURE)
        if a.severity == Severity.CRITICAL and "CROSSING" in a.message
    ]
    assert len(crit) == 1 and "at 0.05" in crit[0].message
    await s.close()
